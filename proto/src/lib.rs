//! The tunnel protocol between sidecars and the edge: the `.proto`, its
//! generated Rust code, and the transport settings both ends must agree on.
//!
//! Nothing outside this crate knows wire details. Its one piece of I/O is
//! [`coalesce::CoalescingIo`], the socket wrapper both ends put under HTTP/2.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("tunnel.v1");
}

pub use v1::*;

pub mod coalesce;
pub mod codec;
pub mod h2grpc;
pub mod transport;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Capabilities this build announces in Hello/Welcome.
pub const CAPABILITIES: &[&str] = &["data-preopen", "half-close", "want-streams"];

/// Request metadata key carrying the negotiated version on data streams.
pub const VERSION_METADATA: &str = "x-tunnel-version";
/// Request metadata key naming the session a data stream belongs to.
pub const SESSION_METADATA: &str = "x-tunnel-session";

impl UpstreamProtocol {
    /// The name used in configuration files: `http1`, `h2c` or `tls`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "http1" => Some(Self::Http1),
            "h2c" => Some(Self::H2c),
            "tls" => Some(Self::Tls),
            _ => None,
        }
    }
}

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
    pub fn open(service: String, port: u32, request_id: String) -> Self {
        Self {
            kind: Some(stream_frame::Kind::Open(Open {
                service,
                port,
                request_id,
            })),
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
