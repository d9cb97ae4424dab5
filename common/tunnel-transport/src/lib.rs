//! How both ends run the tunnel over HTTP/2: data streams with the
//! tunnel's per-stream credit, their gRPC framing, the control RPC on
//! streams we drive ourselves, keep-alive, and the socket wrapper that
//! batches small frames. The wire itself (messages, version, constants
//! both ends agree on) is `tunnel-proto`; this crate knows no edge or
//! sidecar logic.
//!
//! # Layout
//! - [`settings`]: HTTP/2 settings and sizes both ends use.
//! - [`flow`]: per-stream credit and how a receiver sizes it (pure logic).
//! - [`data`]: one data stream: opening it, then payload with credit.
//! - [`io`]: a data stream as `AsyncRead + AsyncWrite`.
//! - [`grpc`]: gRPC message framing of `StreamFrame`s, statuses.
//! - [`rpc`]: the `Control` RPC on h2 streams (tonic on our streams).
//! - [`keepalive`]: PINGs that detect dead peers.
//! - [`coalesce`]: the socket wrapper that batches small writes.
//! - [`websocket`]: the same HTTP/2 connection carried by a WebSocket.

pub mod coalesce;
pub mod data;
pub mod flow;
pub mod grpc;
pub mod io;
pub mod keepalive;
pub mod rpc;
pub mod settings;
pub mod websocket;

pub use data::{DataStream, Role};
pub use flow::ConnectionFlow;
pub use grpc::StreamBroken;
pub use io::StreamIo;
