//! HTTP/2 settings both ends of the tunnel run with, from measurements
//! (see docs/design.md, "Isolation" and "Transport settings").
//!
//! - HTTP/2's windows are a backstop, not the flow control: the tunnel's
//!   own per-stream credit ([`crate::flow`]) bounds what each stream has in
//!   flight, and the windows are set so that credit always fits in them. A
//!   stream's window holds its largest credit plus room for the small
//!   control frames (`credit`, `fin`, ...) that share it; the connection
//!   window holds every stream's initial credit and the connection's
//!   growth budget, so streams whose readers stopped can never take the
//!   window that other streams and the control stream need.
//! - Large frames: 16 KiB frames cost 30–60% of bulk throughput.
//! - Chunks of tens of KiB: big enough for throughput, small enough that a
//!   stalled stream holds little beyond its credit.

use std::time::Duration;

use crate::flow::GROWTH_BUDGET;
use tunnel_proto::{INITIAL_STREAM_CREDIT, MAX_STREAM_CREDIT};

/// Per-stream HTTP/2 window: the largest credit plus room for control frames.
pub const STREAM_WINDOW: u32 = (2 * MAX_STREAM_CREDIT + 1024 * 1024) as u32;
/// Per-connection HTTP/2 window: the largest HTTP/2 allows.
pub const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// Most concurrent streams on one tunnel connection (data streams are
/// proxied connections); the edge advertises it.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 8192;
const _: () = assert!(
    MAX_STREAMS_PER_CONNECTION as u64 * (INITIAL_STREAM_CREDIT + 64 * 1024) + GROWTH_BUDGET
        < CONNECTION_WINDOW as u64,
    "every stream's credit must fit in the connection window"
);
/// Largest HTTP/2 frame either side sends.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024 - 1;
/// Largest payload read from a socket into one data frame.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// HTTP/2 PING interval, so dead peers are noticed without traffic.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a PING may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Control-channel heartbeat interval the edge asks for by default: three
/// missed (either way) end the session, so a dead peer that TCP does not
/// notice (a black hole) is found within 15 s.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Idle data streams a sidecar keeps open per session by default: few, so
/// idle tunnels are cheap; the edge asks for more when requests wait.
pub const DEFAULT_IDLE_STREAMS: u32 = 4;
