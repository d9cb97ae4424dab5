//! Pingora's upstream connection, made of a tunnel data stream.
//!
//! `TunnelConnector` is the peer's custom L4 connector: it takes a pre-opened
//! data stream from the session, tells the sidecar where to connect, and
//! waits for the sidecar's verdict (the equivalent of a TCP handshake with
//! the service). `TunnelSocket` then moves bytes as `StreamFrame`s, as
//! the stream's credit allows.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::futures::OwnedNotified;
use tracing::warn;
use tunnel_proto::{stream_frame::Kind, ErrorCode, StreamFrame};
use tunnel_transport::{DataStream, StreamIo};

use crate::tunnel::registry::{Session, TakeError};

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
    /// A visitor's WebSocket to a TCP service: the sidecar answers it.
    pub websocket: bool,
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
                self.websocket,
            );
            if stream.send_frame(&open).await.is_err() {
                continue; // the sidecar dropped this idle stream
            }
            let verdict = tokio::time::timeout(self.connect_timeout, stream.next_frame()).await;
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

    /// A stream to the service, as a socket (a TCP port's connection).
    pub async fn socket(&self) -> Result<TunnelSocket, TunnelError> {
        Ok(TunnelSocket {
            io: StreamIo::new(self.open().await?),
            ending: Box::pin(self.session.streams_ending()),
            session: self.session.clone(),
        })
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, _addr: &SocketAddr) -> pingora_error::Result<Stream> {
        match self.socket().await {
            Ok(socket) => Ok(Stream::from(VirtualSocketStream::new(Box::new(socket)))),
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

/// A tunnel data stream as Pingora's upstream socket. Once its session
/// retires it reads as ended: it can only be idle in Pingora's pool then,
/// and Pingora closes it there. So it does once the edge ends the streams
/// in use at the end of its grace period.
pub struct TunnelSocket {
    io: StreamIo,
    session: Arc<Session>,
    /// Wakes a read waiting for data when the edge ends the stream.
    ending: Pin<Box<OwnedNotified>>,
}

impl std::fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSocket")
            .field("io", &self.io)
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.session.is_retired() || this.session.streams_ended() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            // Nothing to read yet: the end of the grace period wakes us too.
            Poll::Pending if this.ending.as_mut().poll(cx).is_ready() => Poll::Ready(Ok(())),
            read => read,
        }
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl VirtualSocket for TunnelSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(()) // nodelay and keepalive are properties of the tunnel's TCP connection
    }
}
