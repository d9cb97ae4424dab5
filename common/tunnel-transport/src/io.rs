//! A data stream as an async byte stream ([`StreamIo`]): what the edge
//! hands Pingora as an upstream socket. Writes go into the HTTP/2 stream
//! from the caller's task as credit allows; reads come straight out of it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::data::DataStream;
use crate::grpc::{encode_data, StreamBroken};
use crate::settings::CHUNK_SIZE;

/// A data stream carrying a connection, as `AsyncRead + AsyncWrite`.
/// Shutting down the write side says `fin`. Dropped after both sides
/// said `fin`, the RPC ends cleanly; dropped before, it is reset, which
/// the peer takes as an abort.
#[derive(Debug)]
pub struct StreamIo {
    stream: DataStream,
    /// The rest of a chunk the reader's buffer had no room for.
    pending: Bytes,
    read_closed: bool,
    fin_sent: bool,
}

impl StreamIo {
    pub fn new(stream: DataStream) -> Self {
        Self {
            stream,
            pending: Bytes::new(),
            read_closed: false,
            fin_sent: false,
        }
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        if self.fin_sent && self.read_closed {
            self.stream.finish();
        }
    }
}

fn broke(e: StreamBroken) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("tunnel stream {}", e.0),
    )
}

impl AsyncRead for StreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() && !this.read_closed {
            match ready!(this.stream.poll_read(cx)).map_err(broke)? {
                Some(chunk) => this.pending = chunk,
                None => this.read_closed = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let credit = ready!(this.stream.poll_send_credit(cx)).map_err(broke)?;
        let n = buf.len().min(CHUNK_SIZE).min(credit);
        this.stream
            .send_data(encode_data(&buf[..n]), n)
            .map_err(broke)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.fin_sent {
            this.stream.send_fin().map_err(broke)?;
            this.fin_sent = true;
        }
        Poll::Ready(Ok(()))
    }
}
