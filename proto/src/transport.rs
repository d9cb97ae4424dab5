//! HTTP/2 and framing settings for the tunnel, from measurements (PERF.md).
//!
//! - Large stream and connection windows: a stream moves at most
//!   window ÷ RTT, and h2 resets a whole connection when too many unread small
//!   frames pile up against a small connection window.
//! - Large frames: 16 KiB frames cost 30–60% of bulk throughput.
//! - Chunks of tens of KiB: big enough for throughput, small enough that the
//!   codec buffers (which never shrink) stay small on idle connections.

use std::time::Duration;

/// Per-stream flow-control window: 16 MiB carries ~1.6 GB/s at 10 ms RTT
/// (8 MiB measured 417 MB/s, 16 MiB 637 MB/s through a 10 ms delay). It
/// is credit, not allocation: memory is used only while a visitor reads
/// slower than the service sends, bounded per tunnel connection by the
/// connection window.
pub const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// Per-connection flow-control window.
pub const CONNECTION_WINDOW: u32 = 128 * 1024 * 1024;
/// Largest HTTP/2 frame either side sends.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024 - 1;
/// Largest payload read from a socket into one data frame.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Largest gRPC message accepted (a chunk plus framing, with headroom).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Frames buffered per direction of a data stream before backpressure.
pub const STREAM_QUEUE: usize = 8;
/// HTTP/2 PING interval, so dead peers are noticed without traffic.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a PING may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Control-channel heartbeat interval the edge asks for.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Idle data streams a sidecar keeps open per session by default: few, so
/// idle tunnels are cheap; the edge asks for more when requests wait.
pub const DEFAULT_IDLE_STREAMS: u32 = 4;
