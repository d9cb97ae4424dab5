//! Runs the edge: the visitor HTTP listener (Pingora) and the tunnel
//! listener (HTTP/2, gRPC), on bound listeners, until a shutdown future resolves.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::tls::ALPN;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, IO};
use pingora_core::server::configuration::ServerConf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use tunnel_transport::coalesce::CoalescingIo;

use arc_swap::ArcSwap;

use crate::admin;
use crate::config::EdgeConfig;
use crate::http::failure::FailureCounts;
use crate::http::visitor::{self, FirstBytes, HeadDeadline};
use crate::http::{self, phases::EdgeProxy};
use crate::inspect::{self, Inspector};
use crate::limits::{self, Gauges, Use};
use crate::metrics::Metrics;
use crate::reload::{self, Reloader};
use crate::shared;
use crate::tcp_ports::TcpPorts;
use crate::tls::{self, SniResolver, TunnelTlsState};
use crate::tunnel::ingress::TunnelIngress;
use crate::tunnel::registry::{Authorizations, TunnelRegistry};
use crate::tunnel::service::{ClientChain, TunnelService};

/// After the grace period, how long the requests whose streams were ended
/// get to write their clean close (a WebSocket Close frame, a gRPC status).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub struct Edge {
    config: Arc<ArcSwap<EdgeConfig>>,
    registry: Arc<TunnelRegistry>,
    certificates: Arc<SniResolver>,
    tunnel_tls: Arc<TunnelTlsState>,
    /// State shared through Redis, when `redis:` says so.
    shared: Arc<shared::InForce>,
    /// What this replica shares and learns through it.
    local: shared::Local,
    metrics: Arc<Metrics>,
}

/// The edge's bound listeners.
pub struct Listeners {
    pub http: TcpListener,
    /// TLS for visitors, if configured.
    pub https: Option<TcpListener>,
    pub tunnel: TcpListener,
    /// Health for probes (`listen.admin`), if configured.
    pub admin: Option<TcpListener>,
    /// `tcp_ports:`, by name.
    pub tcp_ports: Vec<(String, TcpListener)>,
    /// Worker threads (at least 1), each with its own single-threaded
    /// runtime: the caller's runtime is the first. See [`Workers`].
    pub workers: usize,
}

/// Read buffer of a visitor's TLS connection: one full TLS record.
const TLS_READ_BUFFER: usize = 16 * 1024 + 512;

/// How long a visitor may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Edge {
    pub fn new(config: EdgeConfig) -> Self {
        let registry = Arc::new(TunnelRegistry::new(Authorizations::from_config(&config)));
        let certificates = Arc::new(SniResolver::default());
        certificates.replace(reload::cert_store(&config));
        let tunnel_tls = Arc::new(TunnelTlsState::default());
        reload::apply_tunnel_tls(&config, &tunnel_tls);
        for warning in &config.warnings {
            warn!("{warning}");
        }
        if config.tunnel.tls.is_none() {
            let message = "the tunnel listener speaks plaintext: sidecar tokens and visitors' traffic are not encrypted between sidecar and edge (configure tunnel.tls)";
            if config.tunnel_addr.ip().is_loopback() {
                info!(tunnel = %config.tunnel_addr, "{message}");
            } else {
                warn!(tunnel = %config.tunnel_addr, "{message}");
            }
        }
        let local = shared::Local {
            replica: replica_name(),
            revocations: Default::default(),
            environments: {
                let registry = registry.clone();
                Arc::new(move || registry.environments())
            },
            environments_changed: registry.environments_changed(),
            advertise: {
                let registry = registry.clone();
                Arc::new(move || registry.replicas().advertise())
            },
            advertise_changed: registry.replicas().advertise_changed(),
            learned: {
                let registry = registry.clone();
                Arc::new(move |urls| registry.replicas().learned(urls))
            },
        };
        registry.replicas().configure(&config.tunnel);
        Self {
            config: Arc::new(ArcSwap::from_pointee(config)),
            registry,
            certificates,
            tunnel_tls,
            shared: Default::default(),
            local,
            metrics: Default::default(),
        }
    }

    /// Something that swaps in a new config while the edge runs.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(
            self.config.clone(),
            self.registry.clone(),
            self.certificates.clone(),
            self.tunnel_tls.clone(),
            self.shared.clone(),
            self.local.clone(),
            self.metrics.clone(),
        )
    }

    pub fn registry(&self) -> Arc<TunnelRegistry> {
        self.registry.clone()
    }

    /// Serves until `shutdown` resolves, then drains: sidecars are told to
    /// stop sending new work, in-flight requests get `shutdown_grace`, and
    /// then those still open (WebSockets, gRPC streams) are closed cleanly.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Listeners {
            http,
            https,
            tunnel,
            admin,
            tcp_ports,
            workers,
        } = listeners;
        let health = Arc::new(admin::Health::default());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let traces = self.config.load().traces.as_ref().and_then(|settings| {
            match crate::traces::Traces::start(settings) {
                Ok(traces) => {
                    info!(endpoint = %settings.otlp_endpoint, "exporting request spans over OTLP");
                    Some(Arc::new(traces))
                }
                Err(e) => {
                    warn!(endpoint = %settings.otlp_endpoint, error = %e, "cannot export spans; going on without");
                    None
                }
            }
        });
        let gauges = Arc::new(Gauges::default());
        let failures = Arc::new(FailureCounts::default());
        let sources = inspect::Sources {
            metrics: self.metrics.clone(),
            registry: self.registry.clone(),
            failures: failures.clone(),
            gauges: gauges.clone(),
            shared: self.shared.clone(),
            in_flight: in_flight.clone(),
            health: health.clone(),
        };
        let admin = admin.map(|l| {
            let api = Arc::new(Inspector {
                config: self.config.clone(),
                sources,
            });
            tokio::spawn(admin::serve(l, health.clone(), api))
        });
        let default_public_url = match &https {
            Some(l) => format!(
                "https://{{host}}:{}",
                l.local_addr().map(|a| a.port()).unwrap_or(443)
            ),
            None => format!(
                "http://{{host}}:{}",
                http.local_addr().map(|a| a.port()).unwrap_or(80)
            ),
        };
        let conf = Arc::new(ServerConf {
            upstream_keepalive_pool_size: self.config.load().upstream.keepalive_pool_size,
            ..Default::default()
        });
        self.shared.store(shared::for_settings(
            self.config.load().redis.as_ref(),
            &self.local,
        ));
        let tunnel_ingress = TunnelIngress {
            service: TunnelService::new(
                self.registry.clone(),
                self.config.clone(),
                default_public_url,
            ),
            stop: CancellationToken::new(),
        };
        let proxy = EdgeProxy {
            config: self.config.clone(),
            registry: self.registry.clone(),
            in_flight: in_flight.clone(),
            https_port: https
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.port()),
            revocations: self.local.revocations.clone(),
            gauges: gauges.clone(),
            failures,
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            traces: traces.clone(),
            tunnel_ingress: tunnel_ingress.clone(),
        };
        // Two apps: plain connections are sniffed here, and those that
        // start with the HTTP/2 preface go to the one that speaks h2c.
        let visitors = self.config.load().visitors.clone();
        let app = |h2c: bool| {
            let mut app = pingora_proxy::http_proxy(&conf, proxy.clone());
            let mut options = HttpServerOptions::default();
            options.h2c = h2c;
            options.h2_idle_timeout = Some(visitors.keepalive_timeout);
            // Room in each upstream request for the headers the edge adds:
            // the request id, X-Forwarded-For/-Proto/-Host/-Port, Forwarded,
            // traceparent, and Host for an HTTP/2 visitor.
            options.upstream_request_header_room = 8;
            app.server_options = Some(options);
            // HTTP/2's share of the request limits: the header list as an
            // HTTP/1.1 head (CONTINUATION floods end there), streams at
            // once, and resets of streams not yet answered (rapid reset).
            let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
            h2.max_header_list_size(visitors.max_head_size as u32)
                .max_concurrent_streams(visitors.h2_max_concurrent_streams)
                .max_pending_accept_reset_streams(visitors.h2_max_pending_resets);
            app.h2_options = Some(h2);
            Arc::new(app)
        };
        let (stop_http_tx, stop_http_rx) = watch::channel(false);
        let shared = Shared {
            app: app(false),
            h2c_app: app(true),
            tls: https.as_ref().map(|_| {
                Arc::new(Acceptor::from_server_config(tls::server_config(
                    self.certificates.clone(),
                )))
            }),
            tunnel_tls: self.config.load().tunnel.tls.as_ref().map(|_| {
                tokio_rustls::TlsAcceptor::from(tls::tunnel_server_config(
                    self.tunnel_tls.certificates.clone(),
                    self.tunnel_tls.client_auth.clone(),
                ))
            }),
            tunnel: tunnel_ingress,
            config: self.config.clone(),
            ports: Arc::new(TcpPorts {
                config: self.config.clone(),
                registry: self.registry.clone(),
                gauges: gauges.clone(),
                metrics: self.metrics.clone(),
                in_flight: in_flight.clone(),
            }),
            gauges,
            shutdown: stop_http_rx,
            stop_accepting: CancellationToken::new(),
        };
        let workers = Workers::start(workers.max(1), &shared)?;
        let throttle = shared.tunnel.service.throttle().clone();
        let summaries = tokio::spawn(async move { throttle.summarize().await });
        let housekeeping = tokio::spawn(forget_idle_limit_keys(self.config.clone()));
        let mut acceptors = vec![tokio::spawn(accept(
            http,
            Handoff::Visitor,
            workers.queues.clone(),
            shared.stop_accepting.clone(),
        ))];
        if let Some(https) = https {
            acceptors.push(tokio::spawn(accept(
                https,
                Handoff::TlsVisitor,
                workers.queues.clone(),
                shared.stop_accepting.clone(),
            )));
        }
        for (name, listener) in tcp_ports {
            let name: Arc<str> = name.into();
            acceptors.push(tokio::spawn(accept(
                listener,
                move |stream, peer| Handoff::TcpPort(stream, peer, name.clone()),
                workers.queues.clone(),
                shared.stop_accepting.clone(),
            )));
        }
        let tunnel_acceptor = tokio::spawn(accept(
            tunnel,
            Handoff::Tunnel,
            workers.queues.clone(),
            shared.tunnel.stop.clone(),
        ));

        shutdown.await;
        // Not ready from now on: load balancers stop sending first.
        health.drain();
        shared.stop_accepting.cancel();
        for a in acceptors {
            let _ = a.await;
        }

        info!("shutting down: draining tunnels and in-flight requests");
        let _ = stop_http_tx.send(true);
        self.registry.leave().await;
        if let Some(shared) = self.shared.load_full() {
            shared.leave().await;
        }
        // Wait for requests in progress (upgraded connections included), not
        // for idle keep-alive connections: Pingora does not watch for
        // shutdown while one waits for its next request. Those close when we
        // return.
        let grace = self.config.load().shutdown_grace;
        let finished = || in_flight.load(Ordering::Relaxed) == 0;
        if !wait_until(finished, grace).await {
            let open = in_flight.load(Ordering::Relaxed);
            info!(in_flight = open, "grace period over: closing what is still open (WebSocket Close 1001, gRPC UNAVAILABLE)");
            self.registry.end_streams();
            if !wait_until(finished, CLOSE_GRACE).await {
                let open = in_flight.load(Ordering::Relaxed);
                warn!(
                    in_flight = open,
                    "requests still open after their close; cutting their connections"
                );
            }
        }
        shared.tunnel.stop.cancel();
        let _ = tunnel_acceptor.await;
        if let Some(shared) = self.shared.swap(None) {
            shared.withdraw().await;
        }
        if let Some(traces) = traces {
            // The exporter's thread may need this runtime to send.
            let _ = tokio::task::spawn_blocking(move || traces.flush()).await;
        }
        summaries.abort();
        housekeeping.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        workers.stopped().await;
        Ok(())
    }
}

/// Whether `done` came true within `limit` (looked at every 20 ms).
async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// This process's name among the edge's replicas: the host name (a pod's
/// name in Kubernetes) and the process id.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "edge".into());
    format!("{host}/{}", std::process::id())
}

/// How often rate limits forget the keys they no longer need: the state
/// of a client that stayed within its limit for a while is that of a
/// client never seen.
const LIMIT_HOUSEKEEPING: Duration = Duration::from_secs(30);

/// Keeps the rate limits' memory to the clients seen recently.
async fn forget_idle_limit_keys(config: Arc<ArcSwap<EdgeConfig>>) {
    let mut every = tokio::time::interval(LIMIT_HOUSEKEEPING);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let config = config.load();
        for limit in http::limits::rates(&config) {
            limit.forget_idle();
        }
    }
}

/// What every worker serves with.
#[derive(Clone)]
struct Shared {
    app: Arc<ProxyApp>,
    /// Serves plain connections that began with the HTTP/2 preface.
    h2c_app: Arc<ProxyApp>,
    /// Present when visitors are served over TLS.
    tls: Option<Arc<Acceptor>>,
    /// Present when the tunnel listener speaks TLS.
    tunnel_tls: Option<tokio_rustls::TlsAcceptor>,
    /// The tunnel's service, and the token that stops serving tunnels
    /// (cancelled last, after the drain), on both tunnel paths.
    tunnel: TunnelIngress,
    config: Arc<ArcSwap<EdgeConfig>>,
    /// Open connections per client IP (and the requests' limits).
    gauges: Arc<Gauges>,
    ports: Arc<TcpPorts>,
    /// Tells Pingora that in-flight requests should wind down.
    shutdown: watch::Receiver<bool>,
    stop_accepting: CancellationToken,
}

/// The edge's worker threads. Each runs a single-threaded runtime that
/// serves the visitor and tunnel connections handed to it: the acceptors
/// deal new connections round robin, so a sidecar's connections (two by
/// default) land on different workers and visitors spread evenly. A
/// visitor's request goes to a session whose tunnel connection its own
/// worker serves when there is one, so its bytes cross no thread. A
/// single-threaded runtime costs less per request than a work-stealing
/// one, and N of them use N cores.
struct Workers {
    queues: Vec<mpsc::UnboundedSender<Handoff>>,
    /// The first worker runs on the caller's runtime.
    first: tokio::task::JoinHandle<()>,
    /// The others, each a thread; each sends once it has stopped.
    others: Vec<oneshot::Receiver<()>>,
}

/// A new connection for a worker.
enum Handoff {
    Visitor(std::net::TcpStream, std::net::SocketAddr),
    TlsVisitor(std::net::TcpStream, std::net::SocketAddr),
    Tunnel(std::net::TcpStream, std::net::SocketAddr),
    /// On the `tcp_ports:` entry of this name.
    TcpPort(std::net::TcpStream, std::net::SocketAddr, Arc<str>),
}

impl Workers {
    fn start(count: usize, shared: &Shared) -> std::io::Result<Self> {
        let (queue, handoffs) = mpsc::unbounded_channel();
        let mut queues = vec![queue];
        let first = tokio::spawn(run_worker(shared.clone(), handoffs));
        let mut others = Vec::new();
        for n in 1..count {
            let (queue, handoffs) = mpsc::unbounded_channel();
            queues.push(queue);
            let shared = shared.clone();
            let (stopped, done) = oneshot::channel();
            others.push(done);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("edge-worker-{n}"))
                .spawn(move || {
                    runtime.block_on(run_worker(shared, handoffs));
                    let _ = stopped.send(());
                })?;
        }
        Ok(Self {
            queues,
            first,
            others,
        })
    }

    /// Waits for every worker to finish (after `tunnel.stop`).
    async fn stopped(self) {
        drop(self.queues);
        let _ = self.first.await;
        for done in self.others {
            let _ = done.await;
        }
    }
}

/// Accepts connections until `stop` is cancelled and deals them to the
/// workers in turn.
async fn accept(
    listener: TcpListener,
    handoff: impl Fn(std::net::TcpStream, std::net::SocketAddr) -> Handoff,
    workers: Vec<mpsc::UnboundedSender<Handoff>>,
    stop: CancellationToken,
) {
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Visitors: a response's header and body leave in one write anyway.
        // Tunnels: small frames of many streams share one TCP connection,
        // and Nagle's algorithm would hold each behind the previous one's
        // ACK (frames of many streams leave in one write: CoalescingIo).
        let _ = stream.set_nodelay(true);
        // Out of this runtime's reactor, to be registered with the worker's.
        match stream.into_std() {
            Ok(stream) => {
                let _ = workers[next % workers.len()].send(handoff(stream, peer));
                next += 1;
            }
            Err(e) => warn!(error = %e, "connection lost in hand-off"),
        }
    }
}

/// One worker's life: serve what it is handed until `tunnel.stop`.
async fn run_worker(shared: Shared, mut handoffs: mpsc::UnboundedReceiver<Handoff>) {
    // Each tunnel connection's HTTP/2 state and tasks live on this thread.
    let tunnels = TaskTracker::new();
    loop {
        let handoff = tokio::select! {
            h = handoffs.recv() => h,
            _ = shared.tunnel.stop.cancelled() => None,
        };
        let (stream, peer, tls) = match handoff {
            None => break,
            Some(Handoff::Tunnel(stream, peer)) => {
                match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        tunnels.spawn(serve_tunnel(stream, peer, shared.clone()));
                    }
                    Err(e) => warn!(error = %e, "cannot register a tunnel connection"),
                }
                continue;
            }
            Some(Handoff::TcpPort(stream, peer, name)) => {
                match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        let ports = shared.ports.clone();
                        tokio::spawn(async move { ports.serve(stream, peer, &name).await });
                    }
                    Err(e) => warn!(error = %e, "cannot register a TCP port's connection"),
                }
                continue;
            }
            Some(Handoff::Visitor(stream, peer)) => (stream, peer, None),
            Some(Handoff::TlsVisitor(stream, peer)) => (stream, peer, shared.tls.clone()),
        };
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(serve_visitor(stream, peer, tls, shared.clone()));
            }
            Err(e) => warn!(error = %e, "cannot register a visitor's connection"),
        }
    }
    shared.tunnel.stop.cancelled().await;
    tunnels.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tunnels.wait()).await;
}

/// Serves one sidecar connection; with tunnel TLS, after the handshake
/// (the client certificate chain, if any, goes with the connection).
async fn serve_tunnel(stream: TcpStream, peer: std::net::SocketAddr, shared: Shared) {
    let service = shared.tunnel.service.clone();
    if service
        .throttle()
        .refuses(peer.ip(), std::time::Instant::now())
    {
        // Locked out after failed authentications: closed before any TLS.
        return;
    }
    let stop = shared.tunnel.stop.clone();
    let Some(acceptor) = &shared.tunnel_tls else {
        return service
            .serve_connection(CoalescingIo::new(stream), Some(peer), None, stop)
            .await;
    };
    let handshake = Box::pin(acceptor.accept(stream));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // A plaintext sidecar's first bytes are the HTTP/2 preface.
            let hint = if e.to_string().contains("InvalidContentType")
                || e.to_string().contains("corrupt message")
            {
                "; the client did not speak TLS (a sidecar with `edge: http://…`? it needs https://)"
            } else {
                ""
            };
            return info!(%peer, error = %e, "tunnel TLS handshake failed{hint}");
        }
        Err(_) => return debug!(%peer, "tunnel TLS handshake timed out"),
    };
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| ClientChain(chain.iter().map(|c| c.clone().into_owned()).collect()));
    service
        .serve_connection(CoalescingIo::new(tls), Some(peer), client, stop)
        .await
}

/// A visitor's connection as Pingora's stream, which records the client's
/// address for the request (as Pingora's own listener does).
fn visitor_stream(stream: TcpStream, peer: std::net::SocketAddr) -> Stream {
    let mut stream = Stream::from(stream);
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    stream
}

type ProxyApp = pingora_proxy::HttpProxy<EdgeProxy>;

/// Serves one visitor's connection; with `tls`, a TLS handshake first
/// (HTTP/2 if ALPN picks it). A plain connection that begins with the
/// HTTP/2 preface is served as HTTP/2 where `visitors.h2c` allows it.
/// Every HTTP/1 request head has `visitors.header_timeout` to arrive, the
/// first one counted from the connection's start.
async fn serve_visitor(
    mut tcp: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<Arc<Acceptor>>,
    shared: Shared,
) {
    let config = shared.config.load();
    let visitors = config.visitors.clone();
    // Behind a load balancer speaking the PROXY protocol, the client is
    // the one its header names (the balancer's own checks keep the socket's).
    let mut peer = peer;
    let mut first_bytes = Vec::new();
    if config.proxy_protocol {
        match tokio::time::timeout(visitors.header_timeout, visitor::proxy_header(&mut tcp)).await {
            Ok(Ok((client, rest))) => {
                peer = client.unwrap_or(peer);
                first_bytes = rest;
            }
            Ok(Err(e)) => {
                return debug!(%peer, error = %e, "connection refused: visitors.proxy_protocol expects a PROXY header")
            }
            Err(_) => {
                return debug!(%peer, "no PROXY protocol header within visitors.header_timeout")
            }
        }
    }
    // Open connections per client IP: over the cap, closed unserved (a
    // trusted proxy's connections carry many clients: not counted).
    let trusted = config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer.ip()));
    let _connection = match (&config.limits.connections, trusted) {
        (Some(cap), false) => {
            match shared
                .gauges
                .acquire(cap, Use::Connections, limits::ip_key(peer.ip()))
            {
                Ok(permit) => Some(permit),
                Err((refused, permit)) => {
                    shared.gauges.count_refusal(&refused);
                    if permit.is_none() {
                        return debug!(%peer, max = cap.max, "connection refused: too many open from this address");
                    }
                    info!(%peer, "a dry-run limit would refuse this connection");
                    permit
                }
            }
        }
        _ => None,
    };
    drop(config);
    let mut app = &shared.app;
    if tls.is_none() && visitors.h2c {
        let read = std::mem::take(&mut first_bytes);
        match tokio::time::timeout(visitors.header_timeout, visitor::sniff(&mut tcp, read)).await {
            Ok(Ok((kind, read))) => {
                if kind == FirstBytes::Http2 {
                    app = &shared.h2c_app;
                }
                first_bytes = read;
            }
            Ok(Err(e)) => return debug!(error = %e, "connection closed before a request"),
            Err(_) => return debug!("no request within visitors.header_timeout"),
        }
    }
    let mut stream = visitor_stream(tcp, peer);
    stream.rewind(&first_bytes);
    // A response's header and body leave in one write; TLS reads whole
    // records. Plain HTTP needs no read buffer (Pingora reads into its own).
    stream.set_buffer(L4BufferSettings::new(
        if tls.is_some() { TLS_READ_BUFFER } else { 0 },
        DEFAULT_L4_WRITE_BUFFER_SIZE,
    ));
    let stream: Box<dyn IO> = match tls {
        None => Box::new(stream),
        Some(acceptor) => {
            // Boxed: the handshake's state is several KiB, and inline it
            // would be part of every connection's task for the connection's
            // whole life.
            match tokio::time::timeout(
                TLS_HANDSHAKE_TIMEOUT,
                Box::pin(handshake_with_callback(
                    &acceptor,
                    stream,
                    &tls::RecordServerName,
                )),
            )
            .await
            {
                Ok(Ok(tls_stream)) => Box::new(tls_stream),
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    return;
                }
            }
        }
    };
    // HTTP/2 with prior knowledge was recognised by its whole preface;
    // by ALPN, the preface is still to come.
    let stream: Box<dyn IO> = if std::ptr::eq(app, &shared.h2c_app) {
        stream
    } else if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        Box::new(HeadDeadline::preface(stream, visitors.header_timeout))
    } else {
        Box::new(HeadDeadline::new(
            stream,
            visitors.header_timeout,
            visitors.max_head_size,
        ))
    };
    let mut next = app.process_new(stream, &shared.shutdown).await;
    while let Some(stream) = next {
        next = app.process_new(stream, &shared.shutdown).await;
    }
}
