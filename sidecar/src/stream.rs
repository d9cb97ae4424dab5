//! One proxied connection at the sidecar: a data stream opened ahead of
//! time, then, when the edge says where, a TCP connection to the target and
//! bytes piped both ways with half-close.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};
use tunnel_proto::h2grpc::{self, FrameSink, FrameSource, Role, DATA_HEADROOM};
use tunnel_proto::transport::CHUNK_SIZE;
use tunnel_proto::{stream_frame::Kind, ErrorCode, Open, StreamFrame, TunnelStats};

use crate::config::Allowlist;

/// Counters reported to the edge in heartbeats.
#[derive(Debug, Default)]
pub struct Stats {
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    pub active: AtomicU64,
    pub bytes_to_targets: AtomicU64,
    pub bytes_from_targets: AtomicU64,
}

impl Stats {
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
    /// The `Data` RPC's URI.
    pub data_uri: Uri,
    pub session_id: HeaderValue,
    pub authorization: HeaderValue,
    pub targets: Allowlist,
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

    /// Opens a `Data` RPC: its two halves once the edge has accepted it.
    async fn open_data_stream(&self) -> Result<(FrameSink, FrameSource), String> {
        let mut request = http::Request::post(self.data_uri.clone())
            .body(())
            .expect("a valid request");
        let headers = request.headers_mut();
        let grpc = HeaderValue::from_static(h2grpc::GRPC_CONTENT_TYPE);
        headers.insert(http::header::CONTENT_TYPE, grpc);
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
        if let Some(refused) = h2grpc::status_error(response.headers()) {
            return Err(refused.0);
        }
        Ok((
            FrameSink::new(send, Role::Client),
            FrameSource::new(response.into_body()),
        ))
    }

    async fn serve_one(self: Arc<Self>) {
        let (mut sink, mut source) = match self.open_data_stream().await {
            Ok(halves) => halves,
            Err(reason) => return debug!(%reason, "data stream not accepted"),
        };
        // Idle until the edge needs a connection, or the session ends.
        let open = match source.next().await {
            Some(Ok(StreamFrame {
                kind: Some(Kind::Open(open)),
            })) => open,
            _ => return,
        };
        self.spawn_idle(); // keep the pool full

        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        let tcp = match self.dial(&open).await {
            Ok(tcp) => tcp,
            Err((code, message)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    request_id = %open.request_id, service = %open.service, port = open.port,
                    code = ?code, %message, "stream refused"
                );
                let _ = sink.send_frame(&StreamFrame::error(code, message)).await;
                close_gracefully(sink, source).await;
                return;
            }
        };
        if sink.send_frame(&StreamFrame::opened()).await.is_err() {
            return;
        }
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = pipe(tcp, sink, source, &self.stats).await {
            debug!(request_id = %open.request_id, error = %e, "stream ended abnormally");
        }
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    async fn dial(&self, open: &Open) -> Result<TcpStream, (ErrorCode, String)> {
        let Some(address) = self.targets.resolve(&open.service, open.port) else {
            return Err((
                ErrorCode::Denied,
                format!(
                    "{}:{} is not in this sidecar's allowlist",
                    open.service, open.port
                ),
            ));
        };
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
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

/// Pipes bytes both ways until both directions have finished. A direction
/// finishes with a half-close (`fin`); an abandoned stream or a socket error
/// ends both at once.
pub async fn pipe(
    tcp: TcpStream,
    mut sink: FrameSink,
    mut source: FrameSource,
    stats: &Stats,
) -> io::Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    let edge_closed = || io::Error::new(io::ErrorKind::BrokenPipe, "edge closed the stream");
    let from_target = async {
        let mut buf = BytesMut::new();
        // Buffers start small (idle connections stay cheap) and grow to
        // CHUNK_SIZE while reads fill them (bulk transfers).
        let mut size = FIRST_READ_BUFFER;
        loop {
            // Small reads share one allocation: a new one only when little
            // room is left (each read's bytes leave as `Bytes`). Each read
            // lands behind room for its frame's header, which is written
            // there: the bytes are never copied.
            if buf.capacity() - buf.len() < DATA_HEADROOM + MIN_READ_ROOM {
                buf = BytesMut::with_capacity(DATA_HEADROOM + size);
            }
            buf.put_bytes(0, DATA_HEADROOM);
            let room = (buf.capacity() - buf.len()).min(CHUNK_SIZE);
            let n = rd.read_buf(&mut (&mut buf).limit(room)).await?;
            if n == room {
                size = (size * 2).min(CHUNK_SIZE);
            }
            if n == 0 {
                let _ = sink.send_frame(&StreamFrame::fin()).await;
                return io::Result::Ok(());
            }
            stats
                .bytes_from_targets
                .fetch_add(n as u64, Ordering::Relaxed);
            sink.send_when_ready(h2grpc::frame_in_place(buf.split()))
                .await
                .map_err(|_| edge_closed())?;
        }
    };
    let to_target = async {
        loop {
            match source.next().await {
                Some(Ok(StreamFrame {
                    kind: Some(Kind::Data(bytes)),
                })) => {
                    stats
                        .bytes_to_targets
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    wr.write_all(&bytes).await?;
                }
                Some(Ok(StreamFrame {
                    kind: Some(Kind::Fin(_)),
                })) => {
                    wr.shutdown().await?;
                    return Ok(());
                }
                Some(Ok(_)) => {} // nothing else is valid mid-stream; newer kinds are ignored
                None | Some(Err(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "edge abandoned the stream",
                    ))
                }
            }
        }
    };
    let both = async {
        tokio::pin!(from_target, to_target);
        let (mut from_done, mut to_done) = (false, false);
        while !(from_done && to_done) {
            tokio::select! {
                r = &mut from_target, if !from_done => { r?; from_done = true; }
                r = &mut to_target, if !to_done => { r?; to_done = true; }
            }
        }
        io::Result::Ok(())
    };
    both.await?;
    close_gracefully(sink, source).await;
    Ok(())
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
async fn close_gracefully(mut sink: FrameSink, mut source: FrameSource) {
    sink.finish();
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = source.next().await {}
    })
    .await;
}
