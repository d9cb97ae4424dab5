//! The tunnel connection's socket, wrapped so the HTTP/2 writer batches
//! small frames from many streams into one syscall.
//!
//! h2 copies a DATA frame into its write buffer only when it is smaller than
//! a threshold: 256 bytes on sockets that support vectored writes, 1 KiB on
//! others. A larger frame is written in place (no copy), but the buffer must
//! be flushed before the next frame can be queued. A proxied HTTP request
//! (request line plus forwarding headers) is usually 300–800 bytes, so on a
//! plain socket every request was its own `writev` and woke the sidecar
//! once: no batching across streams, however many were in flight.
//!
//! [`CoalescingIo`] says it does not do vectored writes, so frames up to
//! 1 KiB are copied and batched, and makes up for it: writes up to
//! [`HOLD_LIMIT`] are held (no syscall) and go out with the next large write
//! as one `writev`, or at the next flush. h2 flushes at the end of every
//! batch, so nothing waits longer than the batch it belongs to.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Most bytes held back from the socket until the next write or flush.
pub const HOLD_LIMIT: usize = 16 * 1024;

/// A socket whose small writes are held until the next large write or flush.
#[derive(Debug)]
pub struct CoalescingIo<T> {
    inner: T,
    held: Vec<u8>,
}

impl<T> CoalescingIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> CoalescingIo<T> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        if self.held.capacity() > HOLD_LIMIT {
            self.held = Vec::new(); // after a burst, do not keep a large buffer per idle tunnel
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + buf.len() <= HOLD_LIMIT {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // A large write: send what is held in front of it, in one syscall.
        while !this.held.is_empty() {
            let slices = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= this.held.len() {
                let from_buf = n - this.held.len();
                this.held.clear();
                if from_buf > 0 {
                    return Poll::Ready(Ok(from_buf));
                }
            } else {
                this.held.drain(..n);
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    /// No: so h2 copies frames up to 1 KiB into its buffer (see the module
    /// docs); held bytes still leave with the next large write as a `writev`.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected> Connected for CoalescingIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the "socket".
    #[derive(Default)]
    struct Counting {
        written: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            let mut n = 0;
            for b in bufs {
                self.written.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_flush() {
        let mut io = CoalescingIo::new(Counting::default());
        for i in 0..10u8 {
            io.write_all(&[i; 500]).await.unwrap();
        }
        assert_eq!(io.get_ref().writes, 0, "held until flush");
        io.flush().await.unwrap();
        assert_eq!(io.get_ref().writes, 1);
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 500]).collect();
        assert_eq!(io.get_ref().written, expected);
    }

    #[tokio::test]
    async fn held_bytes_go_out_in_front_of_a_large_write() {
        let mut io = CoalescingIo::new(Counting::default());
        io.write_all(b"header").await.unwrap();
        let payload = vec![7u8; 64 * 1024];
        io.write_all(&payload).await.unwrap();
        assert_eq!(io.get_ref().writes, 1, "one writev for both");
        io.flush().await.unwrap();
        assert_eq!(io.get_ref().writes, 1);
        assert_eq!(&io.get_ref().written[..6], b"header");
        assert_eq!(&io.get_ref().written[6..], &payload[..]);
    }

    #[tokio::test]
    async fn order_is_kept_through_partial_writes_on_a_real_socket() {
        // A duplex pipe with a 1 KiB buffer: every write is partial.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut io = CoalescingIo::new(a);
        let mut expected = Vec::new();
        let writer = async {
            for i in 0..200u32 {
                let len = if i % 7 == 0 { 20_000 } else { 300 };
                let chunk = vec![(i % 251) as u8; len];
                io.write_all(&chunk).await.unwrap();
                expected.extend_from_slice(&chunk);
                if i % 13 == 0 {
                    io.flush().await.unwrap();
                }
            }
            io.shutdown().await.unwrap();
            expected
        };
        let reader = async {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        };
        let (expected, got) = tokio::join!(writer, reader);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
    }
}
