//! The tunnel protocol between sidecars and the edge: the `.proto`, its
//! generated Rust code, and the constants both ends must agree on (version,
//! capabilities, metadata keys, per-stream credit, message size). This
//! crate is the wire only: how both ends run it over HTTP/2 is in the
//! `tunnel-transport` crate.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("tunnel.v1");
}

pub use v1::*;

pub mod codec;

/// The protocol version this build speaks. Version 2 added per-stream
/// credit (`StreamFrame.credit`): a version 1 peer sends data without it.
pub const PROTOCOL_VERSION: u32 = 2;

/// Capabilities this build announces in Hello/Welcome.
pub const CAPABILITIES: &[&str] = &[
    "data-preopen",
    "half-close",
    "want-streams",
    "stream-credit",
    "replicas",
    "route-updates",
];

/// Payload bytes each side of a data stream may send before the other side
/// grants more (`StreamFrame.credit`).
pub const INITIAL_STREAM_CREDIT: u64 = 64 * 1024;
/// Most credit a side grants beyond what it has received.
pub const MAX_STREAM_CREDIT: u64 = 16 * 1024 * 1024;
/// Largest gRPC message accepted (a data chunk plus framing, with headroom).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Request metadata key carrying the negotiated version on data streams.
pub const VERSION_METADATA: &str = "x-tunnel-version";
/// Request metadata key naming the session a data stream belongs to.
pub const SESSION_METADATA: &str = "x-tunnel-session";

impl StreamFrame {
    pub fn data(bytes: bytes::Bytes) -> Self {
        Self {
            kind: Some(stream_frame::Kind::Data(bytes)),
        }
    }
    pub fn fin() -> Self {
        Self {
            kind: Some(stream_frame::Kind::Fin(Fin {})),
        }
    }
    pub fn opened() -> Self {
        Self {
            kind: Some(stream_frame::Kind::Opened(Opened {})),
        }
    }
    /// `websocket`: a visitor's WebSocket to a TCP service, which the
    /// sidecar answers.
    pub fn open(service: String, port: u32, request_id: String, websocket: bool) -> Self {
        Self {
            kind: Some(stream_frame::Kind::Open(Open {
                service,
                port,
                request_id,
                websocket,
            })),
        }
    }
    pub fn credit(bytes: u64) -> Self {
        Self {
            kind: Some(stream_frame::Kind::Credit(Credit { bytes })),
        }
    }
    pub fn blocked() -> Self {
        Self {
            kind: Some(stream_frame::Kind::Blocked(Blocked {})),
        }
    }
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: Some(stream_frame::Kind::Error(StreamError {
                code: code as i32,
                message: message.into(),
            })),
        }
    }
}
