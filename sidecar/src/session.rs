//! One tunnel session: dial the edge, say Hello, keep data streams open
//! ahead of time, heartbeat, and end on drain, failure or shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tracing::{debug, info, warn};
use tunnel_proto::tunnel_client::TunnelClient;
use tunnel_proto::{
    edge_message, sidecar_message, Drain, EdgeMessage, Heartbeat, Hello, RouteSet, SidecarMessage,
    Welcome, CAPABILITIES, MAX_MESSAGE_SIZE, PROTOCOL_VERSION,
};
use tunnel_transport::coalesce::CoalescingIo;
use tunnel_transport::grpc::DATA_PATH;
use tunnel_transport::rpc::H2Channel;
use tunnel_transport::settings::*;
use tunnel_transport::websocket::{WsIo, TUNNEL_PATH};
use tunnel_transport::{keepalive, ConnectionFlow};

use crate::catalog::Catalogs;
use crate::config::{Edge, EdgeTransport, SidecarConfig};
use crate::proxy::Proxy;
use crate::stream::{Stats, StreamPool};

/// In-flight streams get this long to finish when the sidecar stops.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Most extra streams opened at once on the edge's request.
const MAX_WANT_STREAMS: u32 = 256;

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// We were asked to stop.
    Shutdown,
    /// The edge is going away: reconnect.
    Drained,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to the edge at {edge}: {reason}")]
    Connect { edge: String, reason: String },
    #[error("the edge rejected this sidecar: {0}")]
    Rejected(String),
    #[error("tunnel lost: {0}")]
    Lost(String),
    #[error("no trusted TLS connection to the edge: {0}")]
    Tls(String),
}

impl SessionError {
    /// Rejections are about configuration (token, environment): retrying
    /// soon will not help, but the edge's config may change, so keep
    /// retrying at the backoff cap.
    pub fn is_rejection(&self) -> bool {
        matches!(self, SessionError::Rejected(_) | SessionError::Tls(_))
    }
}

/// How long dialing the edge and the HTTP/2 handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The edge's tunnel URL as a URI.
pub fn edge_uri(edge: &Edge) -> Result<Uri, SessionError> {
    edge.url
        .parse()
        .map_err(|e| SessionError::Rejected(format!("edge URL {:?}: {e}", edge.url)))
}

/// Opens the TCP connection to the edge, at `address` (a replica's) or
/// by its name, through the HTTP proxy if one is set for it (no Nagle
/// delay: small frames of many streams share it; frames batched into few
/// writes by [`CoalescingIo`]), with TLS unless the edge URL is `http://`
/// or `ws://`, upgraded to a WebSocket for a `ws[s]://` edge, and speaks
/// HTTP/2 on it with the tunnel's settings. The connection is driven, with
/// keep-alive pings, by a task of its own until the edge closes it or
/// every handle to it is gone.
async fn connect(
    uri: &Uri,
    address: Option<SocketAddr>,
    edge: &Edge,
    proxy: Option<&Proxy>,
    first_bytes: &Arc<FirstBytes>,
) -> Result<h2::client::SendRequest<Bytes>, SessionError> {
    // The config checked that the URL has a host.
    let (host, port) = crate::replicas::host_port(uri).unwrap_or_default();
    let failed = |reason: String| SessionError::Connect {
        edge: match address {
            Some(address) => format!("{uri} ({address})"),
            None => uri.to_string(),
        },
        reason,
    };
    let stream = crate::proxy::dial(proxy, host, port, address)
        .await
        .map_err(failed)?;
    match &edge.transport {
        EdgeTransport::Plaintext { warn } => {
            if *warn {
                warn!(edge = %uri, "connecting to the edge WITHOUT TLS (insecure_plaintext: true): the token and all traffic cross the network in clear");
            }
            let io = Sniffed {
                inner: stream,
                first: first_bytes.clone(),
            };
            if edge.websocket() {
                let ws = websocket(uri, io).await.map_err(failed)?;
                return h2_over(ws).await.map_err(failed);
            }
            h2_over(CoalescingIo::new(io)).await.map_err(failed)
        }
        EdgeTransport::Tls(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let stream = connector
                .connect(tls.server_name.clone(), stream)
                .await
                .map_err(|e| SessionError::Tls(crate::tls::explain(&e, tls)))?;
            if edge.websocket() {
                let ws = websocket(uri, stream).await.map_err(failed)?;
                return h2_over(ws).await.map_err(failed);
            }
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(SessionError::Tls(
                    "the edge did not agree to HTTP/2 (ALPN h2): is this the edge's tunnel port? (its visitor port takes wss://)"
                        .into(),
                ));
            }
            h2_over(CoalescingIo::new(stream)).await.map_err(failed)
        }
    }
}

/// The WebSocket handshake at the edge's [`TUNNEL_PATH`] on `io`; its
/// messages as the byte stream HTTP/2 runs on.
async fn websocket<S>(uri: &Uri, io: S) -> Result<CoalescingIo<WsIo<S>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let scheme = uri.scheme_str().unwrap_or("wss");
    let url = format!("{scheme}://{authority}{TUNNEL_PATH}");
    let config = tunnel_transport::websocket::config();
    match tokio_tungstenite::client_async_with_config(url, io, Some(config)).await {
        Ok((ws, _)) => Ok(CoalescingIo::new(WsIo::new(ws))),
        Err(e) => {
            let hint = match &e {
                tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 404 => {
                    " (an edge older than the WebSocket transport, or not the edge's visitor port?)"
                }
                _ => "",
            };
            let refused = crate::tcp::upgrade_refused(e);
            Err(format!(
                "WebSocket upgrade at {TUNNEL_PATH}: {refused}{hint}"
            ))
        }
    }
}

/// HTTP/2 with the tunnel's settings on `io`.
async fn h2_over<T>(io: T) -> Result<h2::client::SendRequest<Bytes>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    Ok(drive(send, connection))
}

fn drive<T>(
    send: h2::client::SendRequest<Bytes>,
    mut connection: h2::client::Connection<T, Bytes>,
) -> h2::client::SendRequest<Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let pings = connection.ping_pong().expect("taken once");
    tokio::spawn(async move {
        tokio::select! {
            ended = connection => if let Err(e) = ended {
                debug!(error = %e, "tunnel connection ended");
            },
            reason = keepalive::keepalive(pings, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT) => {
                warn!(%reason, "tunnel connection lost");
            }
        }
    });
    send
}

/// The first two bytes a plaintext connection received: a TLS record
/// header there means the edge's tunnel port speaks TLS.
#[derive(Default)]
pub struct FirstBytes {
    /// Both bytes seen: reads no longer look.
    done: std::sync::atomic::AtomicBool,
    bytes: std::sync::Mutex<Vec<u8>>,
}

impl FirstBytes {
    fn looks_like_tls(&self) -> bool {
        matches!(self.bytes.lock().unwrap()[..], [0x14..=0x17, 0x03, ..])
    }
}

/// A plaintext connection that keeps its first bytes in [`FirstBytes`].
struct Sniffed {
    inner: TcpStream,
    first: Arc<FirstBytes>,
}

impl tokio::io::AsyncRead for Sniffed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.first.done.load(std::sync::atomic::Ordering::Relaxed) {
            let mut first = this.first.bytes.lock().unwrap();
            let new = &buf.filled()[before..];
            let take = new.len().min(2 - first.len());
            first.extend_from_slice(&new[..take]);
            if first.len() == 2 {
                this.first
                    .done
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Sniffed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs one session with `edge` (at `address`, one replica's, or by name)
/// to its end, registering what `catalog` holds (waiting for it when it
/// holds nothing yet; sending each new one). `on_welcome` is called once
/// the edge has accepted us, `on_urls` with the URLs of each later route
/// set, `on_replicas` with each replica set the edge tells of (in Welcome
/// and after), `drain_asked` when the edge asks us to
/// go: the session goes on serving (the leaving replica's requests in
/// flight, or routed to it meanwhile) until the edge retires it or closes.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: &SidecarConfig,
    edge: &Edge,
    address: Option<SocketAddr>,
    totals: &Arc<Stats>,
    shutdown: &CancellationToken,
    mut catalog: Catalogs,
    on_welcome: impl FnOnce(&Welcome),
    mut on_urls: impl FnMut(&[String]),
    mut on_replicas: impl FnMut(&[String]),
    drain_asked: oneshot::Sender<()>,
) -> Result<SessionEnd, SessionError> {
    let uri = edge_uri(edge)?;
    let serving = tokio::select! {
        known = catalog.wait_for(Option::is_some) => match known {
            Ok(known) => known.clone().expect("waited for it"),
            Err(_) => return Ok(SessionEnd::Shutdown),
        },
        _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
    };
    let first_bytes = Arc::new(FirstBytes::default());
    let connection = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect(&uri, address, edge, config.proxy.as_ref(), &first_bytes),
    )
    .await
    .unwrap_or_else(|_| {
        Err(SessionError::Connect {
            edge: edge.url.clone(),
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        })
    })?;
    // A plaintext sidecar at a TLS port fails somewhere in HTTP/2; the
    // bytes it got say why.
    // So does a client certificate the edge refuses: with TLS 1.3 its
    // alert comes after the handshake, as the first thing read.
    let tls_port = |message: &str| {
        if first_bytes.looks_like_tls() {
            return Some(SessionError::Tls(
                "the edge's tunnel port speaks TLS, and this sidecar spoke plaintext: write the edge URL as https://"
                    .into(),
            ));
        }
        let alert = message.split("received fatal alert: ").nth(1)?;
        Some(SessionError::Tls(format!(
            "the edge refused this sidecar's client certificate ({alert}); check tls.client_cert and the cluster's client_ca"
        )))
    };
    let client = TunnelClient::with_origin(H2Channel(connection.clone()), uri.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let bearer = format!("Bearer {}", config.token.expose());
    let not_a_header =
        || SessionError::Rejected("the token has characters not allowed in a header".into());
    // The same value twice: tonic's metadata for the control call, a plain
    // header for the data streams opened on h2 directly.
    let authorization = http::HeaderValue::try_from(&bearer).map_err(|_| not_a_header())?;
    let control_authorization =
        tonic::metadata::MetadataValue::try_from(&bearer).map_err(|_| not_a_header())?;

    let (control, control_rx) = mpsc::channel(16);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        environment: config.environment.clone(),
        routes: serving.routes.clone(),
        host_rules: serving.host_rules.clone(),
        sidecar_name: config.name.clone(),
        access_level: config.access.clone(),
        owner: config.owner.clone(),
        sidecar_version: env!("CARGO_PKG_VERSION").into(),
    };
    drop(serving);
    let _ = control
        .send(message(sidecar_message::Kind::Hello(hello)))
        .await;
    let mut request = Request::new(ReceiverStream::new(control_rx));
    request
        .metadata_mut()
        .insert("authorization", control_authorization);
    let mut inbound = client
        .clone()
        .control(request)
        .await
        .map_err(|status| {
            tls_port(status.message()).unwrap_or_else(|| match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
                    SessionError::Lost(status.message().to_string())
                }
                _ => SessionError::Rejected(status.message().to_string()),
            })
        })?
        .into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(EdgeMessage {
            kind: Some(edge_message::Kind::Welcome(w)),
        })) => w,
        Ok(_) => {
            return Err(tls_port("")
                .unwrap_or_else(|| SessionError::Lost("the edge did not send Welcome".into())))
        }
        Err(status) => {
            return Err(tls_port(status.message())
                .unwrap_or_else(|| SessionError::Rejected(status.message().to_string())))
        }
    };
    on_welcome(&welcome);
    on_replicas(&welcome.replicas);
    log_refused(&welcome.refused);
    // An older edge takes routes in Hello only: a new set needs a new session.
    let updates = welcome.capabilities.iter().any(|c| c == "route-updates");

    let stats = Arc::new(Stats::under(totals.clone()));
    let pool = Arc::new(StreamPool {
        connection,
        flow: Arc::new(ConnectionFlow::default()),
        data_uri: data_uri(&uri)?,
        session_id: welcome
            .session_id
            .parse()
            .map_err(|_| SessionError::Lost("invalid session id".into()))?,
        authorization,
        targets: catalog.clone(),
        connect_timeout: config.connect_timeout,
        stats: stats.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
    });
    for _ in 0..welcome.idle_streams.max(1) {
        pool.spawn_idle();
    }

    let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(100) as u64);
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut last_ack = Instant::now();
    let mut sequence = 0u64;
    let mut drain_asked = Some(drain_asked);
    let end = loop {
        tokio::select! {
            received = inbound.message() => match received {
                Ok(Some(EdgeMessage { kind: Some(kind) })) => match kind {
                    edge_message::Kind::HeartbeatAck(_) => last_ack = Instant::now(),
                    edge_message::Kind::WantStreams(w) => {
                        for _ in 0..w.count.min(MAX_WANT_STREAMS) {
                            pool.spawn_idle();
                        }
                    }
                    edge_message::Kind::Drain(d) => {
                        if let Some(asked) = drain_asked.take() {
                            info!(reason = %d.reason, "edge asked us to drain; opening a new session, this one serves what is in flight");
                            let _ = asked.send(());
                        }
                    }
                    // Retired: the edge will route nothing here again.
                    edge_message::Kind::Drained(_) => {
                        info!("drained: the edge has nothing in flight here");
                        break Ok(SessionEnd::Drained);
                    }
                    edge_message::Kind::Replicas(r) => on_replicas(&r.urls),
                    edge_message::Kind::RoutesApplied(applied) => {
                        on_urls(&applied.urls);
                        log_refused(&applied.refused);
                    }
                    edge_message::Kind::Welcome(_) => {}
                },
                Ok(Some(_)) => {} // a kind from a newer edge
                // A leaving edge ends its drained sessions as it exits.
                Ok(None) | Err(_) if drain_asked.is_none() => break Ok(SessionEnd::Drained),
                Ok(None) => break Err(SessionError::Lost("the edge closed the session".into())),
                Err(status) => break Err(SessionError::Lost(status.message().to_string())),
            },
            Ok(()) = catalog.changed() => {
                let Some(now) = catalog.borrow_and_update().clone() else { continue };
                if !updates {
                    info!("routes changed; the edge takes them only in a new session");
                    break Ok(SessionEnd::Drained);
                }
                let set = RouteSet { routes: now.routes.clone(), host_rules: now.host_rules.clone() };
                if control.send(message(sidecar_message::Kind::Routes(set))).await.is_err() {
                    break Err(SessionError::Lost("control stream closed".into()));
                }
            }
            _ = ticker.tick() => {
                if last_ack.elapsed() > interval * 3 {
                    break Err(SessionError::Lost("the edge stopped answering heartbeats".into()));
                }
                sequence += 1;
                let hb = Heartbeat { sequence, stats: Some(stats.snapshot()) };
                if control.send(message(sidecar_message::Kind::Heartbeat(hb))).await.is_err() {
                    break Err(SessionError::Lost("control stream closed".into()));
                }
            }
            _ = shutdown.cancelled() => {
                let drain = Drain { reason: "sidecar shutting down".into() };
                let _ = control.send(message(sidecar_message::Kind::Drain(drain))).await;
                wait_drained(&mut inbound, &stats).await;
                break Ok(SessionEnd::Shutdown);
            }
        }
    };
    // Streams in flight go on in their own tasks: after the edge's Drain
    // they finish while the next session is already up; after ours the
    // wait above let them.
    pool.tasks.close();
    if let Err(e) = &end {
        warn!(error = %e, "session ended");
    }
    end
}

/// After telling the edge this sidecar leaves: waits until nothing is in
/// flight, or [`DRAIN_GRACE`]. The edge says when (`Drained`): once the
/// requests it routed here have finished, the streams left open are idle
/// ones (pooled keep-alive connections) it will never use again. Without
/// the edge, nothing active is the sign.
async fn wait_drained(inbound: &mut tonic::Streaming<EdgeMessage>, stats: &Stats) {
    let deadline = Instant::now() + DRAIN_GRACE;
    let mut edge_open = true;
    let mut check = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            received = inbound.message(), if edge_open => match received {
                Ok(Some(EdgeMessage { kind: Some(edge_message::Kind::Drained(_)) })) => {
                    info!("drained: the edge has nothing in flight here");
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => edge_open = false,
            },
            // The edge's word first: it knows what it routed here. Only
            // once it is gone is nothing active the sign.
            _ = check.tick(), if !edge_open => {
                let active = stats.active.load(std::sync::atomic::Ordering::Relaxed);
                if active == 0 {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let active = stats.active.load(std::sync::atomic::Ordering::Relaxed);
                warn!(active, "grace period over; closing the connections still open");
                return;
            }
        }
    }
}

/// Where data streams are opened: the `Data` RPC on the edge's URL.
fn data_uri(edge: &Uri) -> Result<Uri, SessionError> {
    let mut parts = edge.clone().into_parts();
    parts.path_and_query = Some(DATA_PATH.parse().expect("a valid path"));
    Uri::from_parts(parts).map_err(|e| SessionError::Rejected(format!("edge URL {edge}: {e}")))
}

fn log_refused(refused: &[String]) {
    for reason in refused {
        warn!(%reason, "the edge refused a host rule");
    }
}

fn message(kind: sidecar_message::Kind) -> SidecarMessage {
    SidecarMessage { kind: Some(kind) }
}
