//! One proxied connection at the sidecar: a data stream opened ahead of
//! time, then, when the edge says where, a TCP connection to the target and
//! bytes piped both ways with half-close.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Streaming};
use tracing::{debug, warn};
use tunnel_proto::transport::{CHUNK_SIZE, STREAM_QUEUE};
use tunnel_proto::tunnel_client::TunnelClient;
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
    pub client: TunnelClient<Channel>,
    pub session_id: MetadataValue<tonic::metadata::Ascii>,
    pub authorization: MetadataValue<tonic::metadata::Ascii>,
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

    async fn serve_one(self: Arc<Self>) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut request = Request::new(ReceiverStream::new(rx));
        let md = request.metadata_mut();
        md.insert("authorization", self.authorization.clone());
        md.insert(tunnel_proto::SESSION_METADATA, self.session_id.clone());
        md.insert(
            tunnel_proto::VERSION_METADATA,
            MetadataValue::from(tunnel_proto::PROTOCOL_VERSION),
        );
        let mut inbound = match self.client.clone().data(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                debug!(code = ?status.code(), message = status.message(), "data stream not accepted");
                return;
            }
        };
        // Idle until the edge needs a connection, or the session ends.
        let open = match inbound.message().await {
            Ok(Some(StreamFrame {
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
                let _ = tx.send(StreamFrame::error(code, message)).await;
                close_gracefully(tx, inbound).await;
                return;
            }
        };
        if tx.send(StreamFrame::opened()).await.is_err() {
            return;
        }
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = pipe(tcp, inbound, tx, &self.stats).await {
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
    mut inbound: Streaming<StreamFrame>,
    tx: mpsc::Sender<StreamFrame>,
    stats: &Stats,
) -> io::Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    let from_target = async {
        let mut buf = BytesMut::new();
        // Buffers start small (idle connections stay cheap) and grow to
        // CHUNK_SIZE while reads fill them (bulk transfers).
        let mut size = FIRST_READ_BUFFER;
        loop {
            // Small reads share one allocation: a new one only when little
            // room is left (each read's bytes leave as `Bytes`).
            if buf.capacity() - buf.len() < MIN_READ_ROOM {
                buf = BytesMut::with_capacity(size);
            }
            let room = buf.capacity() - buf.len();
            let n = rd.read_buf(&mut buf).await?;
            if n == room {
                size = (size * 2).min(CHUNK_SIZE);
            }
            if n == 0 {
                let _ = tx.send(StreamFrame::fin()).await;
                return Ok(());
            }
            stats
                .bytes_from_targets
                .fetch_add(n as u64, Ordering::Relaxed);
            if tx
                .send(StreamFrame::data(buf.split().freeze()))
                .await
                .is_err()
            {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "edge closed the stream",
                ));
            }
        }
    };
    let to_target = async {
        loop {
            match inbound.message().await {
                Ok(Some(StreamFrame {
                    kind: Some(Kind::Data(bytes)),
                })) => {
                    stats
                        .bytes_to_targets
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    wr.write_all(&bytes).await?;
                }
                Ok(Some(StreamFrame {
                    kind: Some(Kind::Fin(_)),
                })) => {
                    wr.shutdown().await?;
                    return Ok(());
                }
                Ok(Some(_)) => {} // nothing else is valid mid-stream; newer kinds are ignored
                Ok(None) | Err(_) => {
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
    close_gracefully(tx, inbound).await;
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
/// dropping the response first would cancel the call and discard them.
async fn close_gracefully(tx: mpsc::Sender<StreamFrame>, mut inbound: Streaming<StreamFrame>) {
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}
