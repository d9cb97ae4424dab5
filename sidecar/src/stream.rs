//! One proxied connection at the sidecar: a data stream opened ahead of
//! time, then, when the edge says where, a TCP connection to the target and
//! bytes piped both ways with half-close, as the stream's credit allows.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Uri};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tracing::{debug, warn};
use tunnel_proto::{stream_frame::Kind, ErrorCode, Open, StreamFrame, TunnelStats};
use tunnel_transport::grpc::{self, DATA_HEADROOM};
use tunnel_transport::settings::CHUNK_SIZE;
use tunnel_transport::{ConnectionFlow, DataStream, Role};

use crate::catalog::Catalogs;

/// Counters of one session (reported to the edge in heartbeats), each
/// also added to the process's (`parent`: the sidecar's metrics).
#[derive(Debug, Default)]
pub struct Stats {
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    pub active: AtomicU64,
    pub bytes_to_targets: AtomicU64,
    pub bytes_from_targets: AtomicU64,
    parent: Option<Arc<Stats>>,
}

impl Stats {
    /// A session's counters, added to `parent`'s too.
    pub fn under(parent: Arc<Stats>) -> Self {
        Self {
            parent: Some(parent),
            ..Default::default()
        }
    }

    /// Adds `n` to the counter `which` picks, here and in the parent.
    pub fn add(&self, which: fn(&Stats) -> &AtomicU64, n: u64) {
        which(self).fetch_add(n, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            which(parent).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// One stream fewer piping, here and in the parent.
    fn left(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            parent.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> TunnelStats {
        TunnelStats {
            streams_opened: self.opened.load(Ordering::Relaxed),
            streams_failed: self.failed.load(Ordering::Relaxed),
            streams_active: self.active.load(Ordering::Relaxed),
            bytes_to_targets: self.bytes_to_targets.load(Ordering::Relaxed),
            bytes_from_targets: self.bytes_from_targets.load(Ordering::Relaxed),
        }
    }
}

/// What every data stream of one session shares.
pub struct StreamPool {
    /// The session's HTTP/2 connection to the edge.
    pub connection: h2::client::SendRequest<Bytes>,
    /// What the connection's data streams share (round trip, window budget).
    pub flow: Arc<ConnectionFlow>,
    /// The `Data` RPC's URI.
    pub data_uri: Uri,
    pub session_id: HeaderValue,
    pub authorization: HeaderValue,
    /// What may be dialed: the catalog's targets, as they are now.
    pub targets: Catalogs,
    pub connect_timeout: Duration,
    pub stats: Arc<Stats>,
    pub tasks: tokio_util::task::TaskTracker,
}

impl StreamPool {
    /// Opens one more idle data stream in the background.
    pub fn spawn_idle(self: &Arc<Self>) {
        let pool = self.clone();
        self.tasks.spawn(async move { pool.serve_one().await });
    }

    /// Opens a `Data` RPC, once the edge has accepted it.
    async fn open_data_stream(&self) -> Result<DataStream, String> {
        let mut request = http::Request::post(self.data_uri.clone())
            .body(())
            .expect("a valid request");
        let headers = request.headers_mut();
        let content_type = HeaderValue::from_static(grpc::GRPC_CONTENT_TYPE);
        headers.insert(http::header::CONTENT_TYPE, content_type);
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert(http::header::AUTHORIZATION, self.authorization.clone());
        headers.insert(tunnel_proto::SESSION_METADATA, self.session_id.clone());
        headers.insert(
            tunnel_proto::VERSION_METADATA,
            HeaderValue::from(tunnel_proto::PROTOCOL_VERSION),
        );
        let mut connection = self
            .connection
            .clone()
            .ready()
            .await
            .map_err(|e| e.to_string())?;
        let (response, send) = connection
            .send_request(request, false)
            .map_err(|e| e.to_string())?;
        let response = response.await.map_err(|e| e.to_string())?;
        if let Some(refused) = grpc::status_error(response.headers()) {
            return Err(refused.0);
        }
        Ok(DataStream::new(
            send,
            response.into_body(),
            Role::Client,
            self.flow.clone(),
        ))
    }

    async fn serve_one(self: Arc<Self>) {
        let mut stream = match self.open_data_stream().await {
            Ok(stream) => stream,
            Err(reason) => return debug!(%reason, "data stream not accepted"),
        };
        // Idle until the edge needs a connection, or the session ends.
        let open = match stream.next_frame().await {
            Some(Ok(StreamFrame {
                kind: Some(Kind::Open(open)),
            })) => open,
            _ => return,
        };
        self.spawn_idle(); // keep the pool full

        self.stats.add(|s| &s.opened, 1);
        let tcp = match self.dial(&open).await {
            Ok(tcp) => tcp,
            Err((code, message)) => {
                self.stats.add(|s| &s.failed, 1);
                warn!(
                    request_id = %open.request_id, service = %open.service, port = open.port,
                    code = ?code, %message, "stream refused"
                );
                let _ = stream.send_frame(&StreamFrame::error(code, message)).await;
                close_gracefully(stream).await;
                return;
            }
        };
        if stream.send_frame(&StreamFrame::opened()).await.is_err() {
            return;
        }
        self.stats.add(|s| &s.active, 1);
        if open.websocket {
            let io = tunnel_transport::StreamIo::new(stream);
            if let Err(e) = crate::tcp::serve(io, tcp, &self.stats).await {
                debug!(request_id = %open.request_id, error = %e, "TCP stream ended abnormally");
            }
        } else {
            match pipe(tcp, &mut stream, &self.stats).await {
                Ok(()) => close_gracefully(stream).await,
                Err(e) => {
                    debug!(request_id = %open.request_id, error = %e, "stream ended abnormally")
                }
            }
        }
        self.stats.left();
    }

    async fn dial(&self, open: &Open) -> Result<TcpStream, (ErrorCode, String)> {
        let address = self.targets.borrow().as_ref().and_then(|catalog| {
            catalog
                .targets
                .resolve(&open.service, open.port)
                .map(str::to_owned)
        });
        let Some(address) = address else {
            return Err((
                ErrorCode::Denied,
                format!(
                    "{}:{} is not in this sidecar's allowlist",
                    open.service, open.port
                ),
            ));
        };
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&address)).await {
            Err(_) => Err((
                ErrorCode::Timeout,
                format!("connecting to {address} timed out"),
            )),
            Ok(Err(e)) => {
                let code = match e.kind() {
                    io::ErrorKind::ConnectionRefused => ErrorCode::Refused,
                    io::ErrorKind::TimedOut => ErrorCode::Timeout,
                    _ => ErrorCode::Unreachable,
                };
                Err((code, format!("connecting to {address}: {e}")))
            }
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            }
        }
    }
}

/// Pipes bytes both ways until both directions have finished: the
/// service's bytes go out as the stream's credit allows (the service's TCP
/// connection holds the rest), and the edge's are written to the service
/// as it takes them (its credit is granted back as they are). A direction
/// finishes with a half-close (`fin`); an abandoned stream or a socket
/// error ends both at once.
pub async fn pipe(mut tcp: TcpStream, stream: &mut DataStream, stats: &Stats) -> io::Result<()> {
    let (mut rd, mut wr) = tcp.split();
    let edge_closed = || io::Error::new(io::ErrorKind::BrokenPipe, "edge closed the stream");
    // Service -> edge. Buffers start small (idle connections stay cheap)
    // and grow to CHUNK_SIZE while reads fill them (bulk transfers). Small
    // reads share one allocation; each read lands behind room for its
    // frame's header, which is written there: the bytes are never copied.
    let mut buf = BytesMut::new();
    let mut size = FIRST_READ_BUFFER;
    let mut from_done = false;
    // Edge -> service: the chunk being written.
    let mut pending = Bytes::new();
    let mut to_done = false;
    poll_fn(|cx| loop {
        let mut progress = false;
        if !from_done {
            if let Poll::Ready(credit) = stream.poll_send_credit(cx) {
                let credit = credit.map_err(|_| edge_closed())?;
                if buf.capacity() - buf.len() < DATA_HEADROOM + MIN_READ_ROOM {
                    buf = BytesMut::with_capacity(DATA_HEADROOM + size);
                }
                let start = buf.len();
                buf.put_bytes(0, DATA_HEADROOM);
                let room = (buf.capacity() - buf.len()).min(CHUNK_SIZE).min(credit);
                let read = tokio_util::io::poll_read_buf(
                    Pin::new(&mut rd),
                    cx,
                    &mut (&mut buf).limit(room),
                );
                match read {
                    Poll::Pending => buf.truncate(start),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => {
                        buf.truncate(start);
                        stream.send_fin().map_err(|_| edge_closed())?;
                        from_done = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        if n == room {
                            size = (size * 2).min(CHUNK_SIZE);
                        }
                        stats.add(|s| &s.bytes_from_targets, n as u64);
                        let frame = grpc::frame_in_place(buf.split());
                        stream.send_data(frame, n).map_err(|_| edge_closed())?;
                        progress = true;
                    }
                }
            }
        }
        if !to_done {
            if pending.is_empty() {
                match stream.poll_read(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(Some(chunk))) => {
                        stats.add(|s| &s.bytes_to_targets, chunk.len() as u64);
                        pending = chunk;
                        progress = true;
                    }
                    Poll::Ready(Ok(None)) => {
                        if Pin::new(&mut wr).poll_shutdown(cx)?.is_ready() {
                            to_done = true;
                            progress = true;
                        }
                    }
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "edge abandoned the stream",
                        )))
                    }
                }
            }
            if !pending.is_empty() {
                if let Poll::Ready(n) = Pin::new(&mut wr).poll_write(cx, &pending) {
                    pending.advance(n?);
                    progress = true;
                }
            }
        }
        if from_done && to_done {
            return Poll::Ready(Ok(()));
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await
}

/// Below this much free room, a read gets a fresh buffer.
const MIN_READ_ROOM: usize = 2 * 1024;
/// A connection's first read buffer.
const FIRST_READ_BUFFER: usize = 8 * 1024;

/// How long a finished stream waits for the edge to close its side.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Ends our half of the stream and waits for the edge to end its half, so
/// that the frames still queued (the last data, an error) are delivered:
/// dropping the stream first would reset it and discard them.
async fn close_gracefully(mut stream: DataStream) {
    stream.finish();
    let _ = tokio::time::timeout(CLOSE_GRACE, stream.drain()).await;
}
