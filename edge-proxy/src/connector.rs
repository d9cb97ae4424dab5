//! Pingora's upstream connection, made of a tunnel data stream.
//!
//! `TunnelConnector` is the peer's custom L4 connector: it takes a pre-opened
//! data stream from the session, tells the sidecar where to connect, and
//! waits for the sidecar's verdict (the equivalent of a TCP handshake with
//! the service). `TunnelSocket` then moves bytes as `StreamFrame`s.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;
use tunnel_proto::h2grpc::{self, FrameSink, FrameSource, StreamBroken};
use tunnel_proto::{stream_frame::Kind, ErrorCode, StreamFrame};

use crate::registry::{DataStream, Session, TakeError};

/// Times a connect tries another pooled stream when one turns out dead.
const STALE_STREAM_RETRIES: usize = 3;

/// Why a tunnel connection could not be made. Carried as the root cause of
/// the pingora error so the response can say what really happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error("no tunnel stream available: {0}")]
    NoStream(TakeError),
    #[error("the sidecar could not connect to the target ({code:?}): {message}")]
    Target { code: ErrorCode, message: String },
    #[error("the sidecar did not connect to the target within {0:?}")]
    ConnectTimeout(Duration),
    #[error("the tunnel stream broke while connecting")]
    Broken,
}

#[derive(Debug)]
pub struct TunnelConnector {
    pub session: Arc<Session>,
    pub service: String,
    pub port: u16,
    pub request_id: String,
    pub open_stream_timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("environment", &self.environment)
            .finish()
    }
}

impl TunnelConnector {
    async fn open(&self) -> Result<DataStream, TunnelError> {
        for _ in 0..STALE_STREAM_RETRIES {
            let mut stream = self
                .session
                .take_stream(self.open_stream_timeout)
                .await
                .map_err(TunnelError::NoStream)?;
            let open = StreamFrame::open(
                self.service.clone(),
                self.port.into(),
                self.request_id.clone(),
            );
            if stream.to_sidecar.send_frame(&open).await.is_err() {
                continue; // the sidecar dropped this idle stream
            }
            let verdict =
                tokio::time::timeout(self.connect_timeout, stream.from_sidecar.next()).await;
            match verdict {
                Err(_) => return Err(TunnelError::ConnectTimeout(self.connect_timeout)),
                Ok(Some(Ok(StreamFrame {
                    kind: Some(Kind::Opened(_)),
                }))) => return Ok(stream),
                Ok(Some(Ok(StreamFrame {
                    kind: Some(Kind::Error(e)),
                }))) => {
                    let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
                    warn!(
                        request_id = %self.request_id, session = %self.session.id,
                        service = %self.service, port = self.port, code = ?code, message = %e.message,
                        "sidecar could not open stream"
                    );
                    return Err(TunnelError::Target {
                        code,
                        message: e.message,
                    });
                }
                // Ended or broke before answering: a stale stream, try another.
                Ok(_) => continue,
            }
        }
        Err(TunnelError::Broken)
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, _addr: &SocketAddr) -> pingora_error::Result<Stream> {
        match self.open().await {
            Ok(stream) => {
                let socket = TunnelSocket::new(stream);
                Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
            }
            Err(e) => {
                let etype = match e {
                    TunnelError::ConnectTimeout(_) => ErrorType::ConnectTimedout,
                    TunnelError::Target {
                        code: ErrorCode::Refused,
                        ..
                    } => ErrorType::ConnectRefused,
                    _ => ErrorType::ConnectError,
                };
                Err(Error::because(etype, "opening tunnel stream", e))
            }
        }
    }
}

/// A tunnel data stream as an async byte stream. Writes go into the
/// HTTP/2 stream from the caller's task, reads come straight out of it.
#[derive(Debug)]
pub struct TunnelSocket {
    from_sidecar: FrameSource,
    to_sidecar: FrameSink,
    pending: Bytes,
    read_closed: bool,
    fin_sent: bool,
}

impl TunnelSocket {
    pub fn new(stream: DataStream) -> Self {
        Self {
            from_sidecar: stream.from_sidecar,
            to_sidecar: stream.to_sidecar,
            pending: Bytes::new(),
            read_closed: false,
            fin_sent: false,
        }
    }
}

/// Both sides said `Fin`: the call ends cleanly. Otherwise dropping the
/// stream resets it, and the sidecar closes the service's connection.
impl Drop for TunnelSocket {
    fn drop(&mut self) {
        if self.fin_sent && self.read_closed {
            self.to_sidecar.finish();
        }
    }
}

fn broken(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("tunnel stream {what}"),
    )
}

fn broke(e: StreamBroken) -> io::Error {
    broken(&e.0)
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.from_sidecar.poll_next(cx)) {
                Some(Ok(frame)) => match frame.kind {
                    Some(Kind::Data(bytes)) => this.pending = bytes,
                    Some(Kind::Fin(_)) => this.read_closed = true,
                    Some(Kind::Error(e)) => {
                        return Poll::Ready(Err(io::Error::other(format!(
                            "sidecar: {}",
                            e.message
                        ))))
                    }
                    _ => {} // nothing else is valid mid-stream; newer kinds are ignored
                },
                Some(Err(e)) => return Poll::Ready(Err(broke(e))),
                None => return Poll::Ready(Err(broken("ended without fin"))),
            }
        }
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.to_sidecar.poll_ready(cx)).map_err(broke)?;
        let n = buf.len().min(tunnel_proto::transport::CHUNK_SIZE);
        this.to_sidecar
            .send(h2grpc::encode_data(&buf[..n]))
            .map_err(broke)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.fin_sent {
            ready!(this.to_sidecar.poll_ready(cx)).map_err(broke)?;
            this.to_sidecar
                .send(h2grpc::encode(&StreamFrame::fin()))
                .map_err(broke)?;
            this.fin_sent = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl VirtualSocket for TunnelSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(()) // nodelay and keepalive are properties of the tunnel's TCP connection
    }
}
