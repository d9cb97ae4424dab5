//! The tunnel over a WebSocket, for networks where only HTTPS (HTTP/1.1,
//! perhaps through a `CONNECT` proxy) gets out.
//!
//! The WebSocket carries the same HTTP/2 connection the gRPC transport
//! runs on TCP: its binary messages are a byte stream ([`WsIo`]), and
//! HTTP/2 runs on that stream unchanged. So both transports have the same
//! messages, the same per-stream credit (one stalled stream cannot starve
//! the others), heartbeats, drain and flow-control windows; only the bytes'
//! carrier differs. The edge reserves [`TUNNEL_PATH`] on its visitor ports
//! for the upgrade.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// The path on the edge's visitor ports where sidecars open the tunnel as
/// a WebSocket.
pub const TUNNEL_PATH: &str = "/.preview/tunnel";

/// The path a raw TCP service is reached at on its host (`sidecar access
/// tcp`): a WebSocket whose binary messages are the connection's bytes.
pub const TCP_PATH: &str = "/.preview/tcp";

/// Most bytes one message carries. HTTP/2 writes frames of up to a MiB;
/// they go out as several messages.
pub const MAX_SEND: usize = 256 * 1024;

/// Largest message (and frame) either end accepts: a peer sending more is
/// misbehaving, and the connection ends.
pub const MAX_RECEIVE: usize = 1024 * 1024;

/// Bytes tungstenite reads from its socket at a time, for the tunnel (many
/// streams' frames, bulk among them). It zeroes that much before every
/// read, so small reads of a large buffer cost: its default, 128 KiB,
/// was 40% of the sidecar's CPU on a TCP service's small requests (perf,
/// 64 connections); 64 KiB here costs a bulk transfer 18% against the
/// gRPC transport, where 16 KiB cost 40% (scripts/bench, transport rows).
pub const READ_BUFFER: usize = 64 * 1024;

/// The read buffer of a raw TCP service's WebSocket (one connection's
/// bytes, often small messages): 16 KiB doubled a TCP route's requests/s
/// against the default.
pub const TCP_READ_BUFFER: usize = 16 * 1024;

/// The WebSocket settings both ends of the tunnel use: [`MAX_RECEIVE`]
/// for messages and frames, [`READ_BUFFER`]. Raw TCP services' use the
/// same with [`TCP_READ_BUFFER`].
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_RECEIVE))
        .max_frame_size(Some(MAX_RECEIVE))
        .read_buffer_size(READ_BUFFER)
}

/// A WebSocket's binary messages as a byte stream. Reading ends at the
/// peer's Close (or the connection's end); a text message is an error,
/// pings are answered by the WebSocket itself. Shutting down sends Close.
#[derive(Debug)]
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last message read.
    unread: Bytes,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            unread: Bytes::new(),
        }
    }
}

/// A WebSocket's error as an I/O error: its own I/O errors as they are,
/// the end of the connection as a broken pipe, anything else (a protocol
/// violation, a message over the limit) as invalid data, with its reason.
pub fn io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => this.unread = bytes,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message on the tunnel's WebSocket (only binary ones carry it)",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.get_mut().ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(io_error)?;
        let n = buf.len().min(MAX_SEND);
        let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
        Pin::new(ws).start_send(message).map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_flush(cx)) {
            // Both Close frames are through: nothing is left to write.
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    async fn pair() -> (WsIo<tokio::io::DuplexStream>, WsIo<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, Some(config())).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        (WsIo::new(client), WsIo::new(server))
    }

    /// Bytes cross both ways intact, however they are cut into messages
    /// (writes larger than a message are split), and a shutdown (Close)
    /// reads as the end on the other side.
    #[tokio::test]
    async fn bytes_cross_both_ways_and_shutdown_is_the_end() {
        let (mut client, mut server) = pair().await;
        let data: Vec<u8> = (0..3 * MAX_SEND + 17).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            client
        });
        let mut got = vec![0u8; data.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == data);
        server.write_all(b"back").await.unwrap();
        server.flush().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
        server.flush().await.unwrap(); // the Close answered
        assert_eq!(client.read(&mut [0u8; 16]).await.unwrap(), 0);
    }

    /// A text message is not part of the stream: reading fails with a
    /// reason rather than passing its bytes on.
    #[tokio::test]
    async fn a_text_message_is_an_error() {
        use futures::SinkExt;
        let (a, b) = tokio::io::duplex(1024);
        let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        client.send(Message::text("hello")).await.unwrap();
        let mut server = WsIo::new(server);
        let e = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("text message"), "{e}");
    }

    /// A message over [`MAX_RECEIVE`] ends the stream with an error.
    #[tokio::test]
    async fn an_oversized_message_is_an_error() {
        use futures::SinkExt;
        let (a, b) = tokio::io::duplex(4 * MAX_RECEIVE);
        let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        let big = Message::Binary(vec![0u8; MAX_RECEIVE + 1].into());
        client.send(big).await.unwrap();
        let mut server = WsIo::new(server);
        let e = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("too long"), "{e}");
    }
}
