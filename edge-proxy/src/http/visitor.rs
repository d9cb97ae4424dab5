//! A visitor's connection before and between requests: which protocol it
//! speaks (HTTP/2 with prior knowledge is recognised from its first bytes,
//! without waiting for all 24 of the preface), and for every HTTP/1 request
//! head a deadline, so that a client sending a byte now and then cannot
//! keep a connection (Pingora bounds each read, not the head), and a size
//! cap (Pingora's is 1 MiB): a [`HeadError`] the refusal is made from.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;

use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plain connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    Http2,
    Http1,
}

/// Reads a new plain connection's first bytes, up to the point where they
/// differ from the HTTP/2 preface or complete it, starting with those
/// already read (`read`: what followed a PROXY protocol header); returns
/// the protocol and the bytes read (to be handed back to the HTTP parser).
/// An HTTP/1 request shorter than the preface is recognised at its first
/// byte.
pub async fn sniff(tcp: &mut TcpStream, mut read: Vec<u8>) -> io::Result<(FirstBytes, Vec<u8>)> {
    let mut buf = [0u8; 24];
    loop {
        if !read.is_empty() && !H2_PREFACE.starts_with(&read[..read.len().min(24)]) {
            return Ok((FirstBytes::Http1, read));
        }
        if read.len() >= H2_PREFACE.len() {
            return Ok((FirstBytes::Http2, read));
        }
        let n = tcp.read(&mut buf[..H2_PREFACE.len() - read.len()]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        read.extend_from_slice(&buf[..n]);
    }
}

/// The longest PROXY protocol header read: v1's is at most 107 bytes, v2's
/// address block plus the TLVs load balancers add (AWS, GCP, Azure send a
/// few hundred bytes at most).
const MAX_PROXY_HEADER: usize = 4096;

/// Reads the PROXY protocol header (v1 or v2) a load balancer sends before
/// a client's bytes. Returns the client's address it names (`None` for the
/// balancer's own connections: v2 `LOCAL`, v1 `UNKNOWN`) and the bytes read
/// past the header. Anything else is an error: on a listener configured
/// for it, every connection must come through the balancer.
pub async fn proxy_header(tcp: &mut TcpStream) -> io::Result<(Option<SocketAddr>, Vec<u8>)> {
    use ppp::{v1, v2, HeaderResult, PartialResult};
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut read = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        read.extend_from_slice(&buf[..n]);
        let header = HeaderResult::parse(&read);
        if header.is_incomplete() {
            if read.len() > MAX_PROXY_HEADER {
                return Err(invalid(format!(
                    "no PROXY protocol header in the first {MAX_PROXY_HEADER} bytes"
                )));
            }
            continue;
        }
        let (length, client) = match header {
            HeaderResult::V1(Ok(h)) => (
                h.header.len(),
                match h.addresses {
                    v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    v1::Addresses::Unknown => None,
                },
            ),
            HeaderResult::V2(Ok(h)) => (
                h.len(),
                match (h.command, h.addresses) {
                    (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                },
            ),
            HeaderResult::V1(Err(e)) => {
                return Err(invalid(format!("not a PROXY protocol header: {e}")))
            }
            HeaderResult::V2(Err(e)) => {
                return Err(invalid(format!("not a PROXY protocol header: {e}")))
            }
        };
        return Ok((client, read.split_off(length)));
    }
}

/// Where an HTTP/1 connection is in its request cycle.
const WAITING: u8 = 0; // kept alive, waiting for a next request
const HEAD: u8 = 1; // receiving a request head: the deadline runs
const REQUEST: u8 = 2; // head received; body, response, upgrade

/// Why a request head was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head did not arrive in time")]
    Timeout,
    #[error("the request head is larger than {0} bytes")]
    TooLarge(usize),
}

impl HeadError {
    /// The head error behind a read error, if one is.
    pub fn of(e: &io::Error) -> Option<HeadError> {
        e.get_ref()?.downcast_ref::<HeadError>().copied()
    }
}

/// A visitor's HTTP/1 connection (plain or TLS) whose request heads must
/// each arrive whole within `header_timeout` and `max_head` bytes, counted from the head's first
/// byte (from the connection's start for its first request). The request
/// phases say when a head is complete ([`HeadDeadline::head_received`])
/// and when the request is over ([`HeadDeadline::request_done`]); they
/// find this type by downcasting Pingora's stream.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    header_timeout: Duration,
    max_head: usize,
    /// Bytes read since the head being received began.
    head_bytes: usize,
    phase: AtomicU8,
    deadline: Instant,
    /// Armed only when a read of a head has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// HTTP/2: bytes still to come of the preface, after which the deadline
    /// is off for good (HTTP/2's own idle timeout takes over).
    preface_left: usize,
}

impl HeadDeadline {
    /// An HTTP/1 connection: every request head has `header_timeout` and
    /// `max_head` bytes.
    pub fn new(inner: Stream, header_timeout: Duration, max_head: usize) -> Self {
        Self {
            inner,
            header_timeout,
            max_head,
            head_bytes: 0,
            phase: AtomicU8::new(HEAD),
            deadline: Instant::now() + header_timeout,
            timer: None,
            preface_left: 0,
        }
    }

    /// An HTTP/2 connection (ALPN `h2`): its preface has `header_timeout`.
    pub fn preface(inner: Stream, header_timeout: Duration) -> Self {
        Self {
            preface_left: H2_PREFACE.len(),
            ..Self::new(inner, header_timeout, usize::MAX)
        }
    }

    /// The request's head was parsed: no deadline while it is served.
    pub fn head_received(&self) {
        self.phase.store(REQUEST, Ordering::Relaxed);
    }

    /// The request is over; the connection waits for the next one (bounded
    /// by the keep-alive timeout) and its head gets a new deadline.
    pub fn request_done(&self) {
        self.phase.store(WAITING, Ordering::Relaxed);
    }

    /// The deadline of the head being received, if one is.
    fn head_deadline(&mut self) -> Option<Instant> {
        (*self.phase.get_mut() == HEAD).then_some(self.deadline)
    }
}

fn head_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, HeadError::Timeout)
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.head_deadline() {
            if Instant::now() >= deadline {
                return Poll::Ready(Err(head_timed_out()));
            }
            // Pingora reads again only while the head is incomplete: this
            // many bytes without a whole head is a head too large.
            if this.head_bytes >= this.max_head {
                let e = HeadError::TooLarge(this.max_head);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                let phase = this.phase.get_mut();
                if this.preface_left > 0 {
                    this.preface_left = this.preface_left.saturating_sub(read);
                    if this.preface_left == 0 {
                        *phase = REQUEST;
                    }
                } else if *phase == WAITING && read > 0 {
                    *phase = HEAD;
                    this.deadline = Instant::now() + this.header_timeout;
                    this.head_bytes = read;
                } else if *phase == HEAD {
                    this.head_bytes += read;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.head_deadline() else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(head_timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// Pingora's connection traits, passed through to the stream inside.

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server side of a new connection whose client sent `bytes` and
    /// closed its side.
    async fn received(bytes: &[u8]) -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, bytes)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut client)
            .await
            .unwrap();
        server
    }

    async fn sniffed(bytes: &[u8]) -> io::Result<(FirstBytes, Vec<u8>)> {
        sniff(&mut received(bytes).await, Vec::new()).await
    }

    #[tokio::test]
    async fn a_short_http1_request_is_recognised_at_its_first_byte() {
        let (kind, read) = sniffed(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        assert_eq!(kind, FirstBytes::Http1);
        assert!(!read.is_empty() && b"GET / HTTP/1.0\r\n\r\n".starts_with(&read));
    }

    #[tokio::test]
    async fn the_preface_is_recognised_and_handed_back() {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(b"\x00\x00\x00\x04");
        let (kind, read) = sniffed(&bytes).await.unwrap();
        assert_eq!(kind, FirstBytes::Http2);
        assert_eq!(read, H2_PREFACE);
    }

    /// `bytes` sent on a new connection, read by [`proxy_header`].
    async fn proxied(bytes: &[u8]) -> io::Result<(Option<SocketAddr>, Vec<u8>)> {
        proxy_header(&mut received(bytes).await).await
    }

    #[tokio::test]
    async fn proxy_protocol_headers_name_the_client_and_hand_back_what_follows() {
        let (client, rest) =
            proxied(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
        assert_eq!(client, Some("203.0.113.7:5555".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (client, rest) = proxied(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n")
            .await
            .unwrap();
        assert_eq!(client, Some("[2001:db8::7]:5555".parse().unwrap()));
        assert!(rest.is_empty());

        // v2, PROXY over TCP/IPv4, then a TLS ClientHello's first byte.
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb, 0x16]);
        let (client, rest) = proxied(&v2).await.unwrap();
        assert_eq!(client, Some("198.51.100.9:8080".parse().unwrap()));
        assert_eq!(rest, [0x16]);

        // v2 LOCAL (the balancer's own health check): no client address.
        let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(proxied(local).await.unwrap(), (None, Vec::new()));
        let (client, _) = proxied(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(client, None);
    }

    #[tokio::test]
    async fn a_connection_without_a_proxy_header_is_refused() {
        for bytes in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"PROX",
        ] {
            assert!(
                proxied(bytes).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn a_connection_closed_inside_the_preface_is_an_error() {
        assert!(sniffed(&H2_PREFACE[..10]).await.is_err());
        assert!(sniffed(b"").await.is_err());
    }
}
