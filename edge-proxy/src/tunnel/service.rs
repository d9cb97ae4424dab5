//! The gRPC side of the edge: sidecars dial in here.
//!
//! [`TunnelService::serve_connection`] serves one sidecar connection over
//! HTTP/2. `Data` streams (those a sidecar opens ahead of time) are parked
//! in their session's pool as they are, without tonic (see
//! `tunnel_transport::data`); every other RPC goes to the tonic service:
//! `Control` authenticates a sidecar, checks what it may register, and
//! keeps its session alive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use tunnel_proto::tunnel_server::{Tunnel, TunnelServer};
use tunnel_proto::{
    edge_message, sidecar_message, EdgeMessage, HeartbeatAck, Hello, HostRule, Replicas, Route,
    RouteSet, RoutesApplied, SidecarMessage, StreamFrame, Welcome, CAPABILITIES, MAX_MESSAGE_SIZE,
    PROTOCOL_VERSION, SESSION_METADATA, VERSION_METADATA,
};
use tunnel_transport::grpc::{self, DATA_PATH};
use tunnel_transport::settings::*;
use tunnel_transport::{keepalive, rpc, ConnectionFlow, DataStream, Role};

use arc_swap::ArcSwap;

use crate::config::token::{bearer, TokenHash};
use crate::config::{parse_host_pattern, EdgeConfig};
use crate::routing::preview::ServiceRef;
use crate::routing::upstream::Protocol;
use crate::tunnel::registry::{Claim, ClusterGrant, Requested, Served, Session, TunnelRegistry};
use crate::tunnel::throttle::AuthThrottle;
use yaml_config::is_label;

/// The certificate chain a sidecar presented in its TLS handshake (end
/// entity first), kept with the connection's requests.
#[derive(Clone, Debug)]
pub struct ClientChain(pub Arc<[rustls::pki_types::CertificateDer<'static>]>);

/// Cancelled to close a sidecar connection whose source was just locked
/// out (see [`AuthThrottle`]); travels with the connection's requests.
#[derive(Clone, Debug)]
struct CloseConnection(CancellationToken);

/// Largest header block a sidecar may send.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// How long a new control stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Missed heartbeats before a session is declared dead.
const MISSED_HEARTBEATS: u32 = 3;
/// Most routes one session may register.
const MAX_ROUTES: usize = 1024;
/// Most host rules one session may claim.
const MAX_HOST_RULES: usize = 1024;

#[derive(Clone)]
pub struct TunnelService {
    registry: Arc<TunnelRegistry>,
    config: Arc<ArcSwap<EdgeConfig>>,
    /// Used when the config sets no `preview.public_url`.
    default_public_url: String,
    throttle: Arc<AuthThrottle>,
}

impl TunnelService {
    /// `default_public_url` has a `{host}` placeholder, e.g. `http://{host}:8080`.
    pub fn new(
        registry: Arc<TunnelRegistry>,
        config: Arc<ArcSwap<EdgeConfig>>,
        default_public_url: String,
    ) -> Self {
        Self {
            registry,
            config,
            default_public_url,
            throttle: Arc::default(),
        }
    }

    /// Failed authentications by source: the listener refuses the
    /// connections of a locked-out source with it.
    pub fn throttle(&self) -> &Arc<AuthThrottle> {
        &self.throttle
    }

    /// Records a refused authentication from `peer` and says how long to
    /// wait before answering; closes the connection when the source is now
    /// locked out.
    fn rejected(
        &self,
        peer: Option<SocketAddr>,
        status: &Status,
        close: Option<&CloseConnection>,
    ) -> Duration {
        let Some(peer) = peer else {
            warn!(reason = status.message(), "sidecar rejected");
            return Duration::ZERO;
        };
        let verdict = self
            .throttle
            .failed(peer.ip(), status.message(), std::time::Instant::now());
        if verdict.close {
            if let Some(close) = close {
                close.0.cancel();
            }
        }
        verdict.delay
    }

    /// The token names the cluster; a cluster with mutual TLS also needs a
    /// client certificate from its own CA on the connection. Messages never
    /// repeat the token or its hash.
    fn authenticate(
        &self,
        metadata: &MetadataMap,
        client: Option<&ClientChain>,
    ) -> Result<(TokenHash, ClusterGrant), Status> {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let hash = TokenHash::of(token);
        let grant = self
            .registry
            .authorizations()
            .by_token
            .get(&hash)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the edge does not know this sidecar token"))?;
        if let Some(ca) = &grant.client_ca {
            let chain = client.map(|c| &c.0[..]).unwrap_or_default();
            if chain.is_empty() {
                return Err(Status::unauthenticated(format!(
                    "cluster {:?} requires a client certificate (mutual TLS); the sidecar sent none",
                    grant.cluster
                )));
            }
            ca.verify(chain).map_err(|e| {
                Status::unauthenticated(format!(
                    "the client certificate is not one of cluster {:?}'s: {e}",
                    grant.cluster
                ))
            })?;
        }
        Ok((hash, grant))
    }

    /// The public URL of each route, in order.
    fn urls(&self, environment: &str, routes: &[Route]) -> Vec<String> {
        let config = self.config.load();
        routes
            .iter()
            .map(|r| {
                let service = ServiceRef {
                    service: r.service.clone(),
                    port: r.port as u16,
                    environment: environment.into(),
                };
                self.url_for(&config, &service)
            })
            .collect()
    }

    fn url_for(&self, config: &EdgeConfig, service: &ServiceRef) -> String {
        let template = config
            .public_url
            .as_deref()
            .unwrap_or(&self.default_public_url);
        template.replace("{host}", &service.host(&config.preview_domains[0])) + "/"
    }
}

/// A session's registered routes: service and port → how to speak to it.
type Routes = HashMap<(String, u16), Protocol>;

/// The access a Hello asks for: a known level, an owner of sane length
/// only with `personal`.
fn requested(hello: &Hello) -> Result<Requested, Status> {
    let level = match hello.access_level.as_str() {
        "" => None,
        name => match crate::auth::Level::parse(name) {
            Some(crate::auth::Level::Public) | None => {
                return Err(Status::invalid_argument(format!(
                    "access level {name:?} is not one a sidecar may ask for (authenticated, shared, personal)"
                )))
            }
            level => level,
        },
    };
    let owner = Some(hello.owner.clone()).filter(|o| !o.is_empty());
    if owner.as_ref().is_some_and(|o| o.len() > 256) {
        return Err(Status::invalid_argument("owner: at most 256 bytes"));
    }
    if owner.is_some() && level != Some(crate::auth::Level::Personal) {
        return Err(Status::invalid_argument(
            "owner: only with access level personal",
        ));
    }
    Ok(Requested { level, owner })
}

/// Checks a Hello against what the token allows; returns the environment
/// and the routes.
fn admit(hello: &Hello, grant: &ClusterGrant) -> Result<(String, Routes), Status> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version {} is not supported (this edge speaks version {PROTOCOL_VERSION})",
            hello.protocol_version
        )));
    }
    let environment = match (hello.environment.as_str(), grant.environments.as_slice()) {
        ("", [only]) => only.clone(),
        ("", _) => {
            return Err(Status::invalid_argument(format!(
                "cluster {:?} may serve several environments ({}); name one",
                grant.cluster,
                grant.environments.join(", ")
            )))
        }
        (env, allowed) if allowed.iter().any(|a| a == env) => env.to_string(),
        (env, _) => {
            return Err(Status::permission_denied(format!(
                "cluster {:?} may not register environment {env:?}",
                grant.cluster
            )))
        }
    };
    Ok((environment, routes(&hello.routes)?))
}

/// A sidecar's routes, checked.
fn routes(registered: &[Route]) -> Result<Routes, Status> {
    if registered.len() > MAX_ROUTES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_ROUTES} routes per session"
        )));
    }
    let mut routes = HashMap::new();
    for r in registered {
        let port = u16::try_from(r.port).ok().filter(|p| *p > 0);
        match port {
            Some(port) if is_label(&r.service) => {
                let protocol = Protocol::from_registration(r.protocol, r.tls.as_ref(), &r.service)
                    .map_err(|e| {
                        Status::invalid_argument(format!("route {}:{}: {e}", r.service, r.port))
                    })?;
                routes.insert((r.service.clone(), port), protocol);
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "route {}:{} is not valid (service: lowercase letters, digits and '-'; port: 1-65535)",
                    r.service, r.port
                )))
            }
        }
    }
    Ok(routes)
}

/// The host rules a sidecar claimed that the edge takes: hosts within its
/// cluster's domains, for routes it registered. The others, each with its
/// reason.
fn claims(rules: &[HostRule], grant: &ClusterGrant, routes: &Routes) -> (Vec<Claim>, Vec<String>) {
    let mut taken = Vec::new();
    let mut refused = Vec::new();
    for rule in rules.iter().take(MAX_HOST_RULES) {
        match claim(rule, grant, routes) {
            Ok(claim) => taken.push(claim),
            Err(reason) => refused.push(format!(
                "{}{} ({}): {reason}",
                rule.host, rule.path, rule.source
            )),
        }
    }
    if rules.len() > MAX_HOST_RULES {
        refused.push(format!(
            "{} host rules past the first {MAX_HOST_RULES}: a session may claim no more",
            rules.len() - MAX_HOST_RULES
        ));
    }
    (taken, refused)
}

fn claim(rule: &HostRule, grant: &ClusterGrant, routes: &Routes) -> Result<Claim, String> {
    let host = parse_host_pattern(&rule.host)
        .ok_or("not a host name (app.example.com or *.example.com)")?;
    if !grant.owns(&host) {
        return Err(match &grant.domains[..] {
            [] => "this cluster may claim no custom domains (the edge's clusters[].domains)".into(),
            domains => format!("not within this cluster's domains ({})", domains.join(", ")),
        });
    }
    let path = match rule.path.as_str() {
        "" => "/".to_string(),
        p if p.starts_with('/') && !p.contains(['?', '#', ' ']) && p.len() <= 1024 => p.into(),
        _ => return Err("the path must start with '/' (no query, fragment or space)".into()),
    };
    let port = u16::try_from(rule.port)
        .ok()
        .filter(|port| routes.contains_key(&(rule.service.clone(), *port)))
        .ok_or_else(|| {
            format!(
                "{}:{} is not one of this session's routes",
                rule.service, rule.port
            )
        })?;
    Ok(Claim {
        host,
        path,
        exact_path: rule.exact_path,
        service: rule.service.clone(),
        port,
        source: rule.source.chars().take(256).collect(),
    })
}

#[tonic::async_trait]
impl Tunnel for TunnelService {
    type ControlStream = ReceiverStream<Result<EdgeMessage, Status>>;
    type DataStream = ReceiverStream<Result<StreamFrame, Status>>;

    async fn control(
        &self,
        request: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let client = request.extensions().get::<ClientChain>();
        let (token, grant) = match self.authenticate(request.metadata(), client) {
            Ok(admitted) => admitted,
            Err(status) => {
                let close = request.extensions().get::<CloseConnection>();
                let delay = self.rejected(request.remote_addr(), &status, close);
                tokio::time::sleep(delay).await;
                return Err(status);
            }
        };
        if self.registry.is_leaving() {
            return Err(Status::unavailable(
                "this edge is shutting down; connect to another replica",
            ));
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(SidecarMessage {
                kind: Some(sidecar_message::Kind::Hello(h)),
            }))) => h,
            Ok(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "the first control message must be Hello",
                ))
            }
        };
        let (environment, routes, requested) = admit(&hello, &grant)
            .and_then(|(env, routes)| Ok((env, routes, requested(&hello)?)))
            .inspect_err(|e| {
                warn!(cluster = %grant.cluster, sidecar = %hello.sidecar_name, reason = e.message(), "sidecar rejected");
            })?;

        let (claims, refused) = claims(&hello.host_rules, &grant, &routes);
        log_refused(&grant.cluster, &hello.sidecar_name, &refused);
        let config = self.config.load();
        let (tx, rx) = mpsc::channel(16);
        let mut session = Session::new(
            grant.cluster.clone(),
            environment.clone(),
            hello.sidecar_name.clone(),
            token,
            Served::new(routes, claims),
            config.tunnel.idle_streams,
            tx,
        );
        session.requested = requested;
        session.sidecar_version = hello.sidecar_version.clone();
        let session = Arc::new(session);
        let urls = self.urls(&environment, &hello.routes);
        let heartbeat = config.tunnel.heartbeat_interval;
        // Subscribed before Welcome reads the set: no change is missed.
        let mut replicas = self.registry.replicas().subscribe();
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            session_id: session.id.clone(),
            environment: environment.clone(),
            urls,
            idle_streams: config.tunnel.idle_streams,
            heartbeat_interval_ms: heartbeat.as_millis() as u32,
            replicas: replicas.borrow_and_update().to_vec(),
            refused,
        };
        session.send(edge_message::Kind::Welcome(welcome)).await;
        self.registry.insert(session.clone());
        info!(
            session = %session.id, cluster = %session.cluster, environment = %session.environment,
            sidecar = %session.sidecar_name, routes = hello.routes.len(), "tunnel up"
        );
        tokio::spawn(self.clone().run_session(
            session,
            inbound,
            replicas,
            heartbeat * MISSED_HEARTBEATS,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn data(
        &self,
        _request: Request<Streaming<StreamFrame>>,
    ) -> Result<Response<Self::DataStream>, Status> {
        // `serve_connection` takes every Data stream before tonic sees it.
        Err(Status::internal(
            "data streams are served by the connection, not by tonic",
        ))
    }
}

impl TunnelService {
    /// Serves one sidecar connection until it closes, its keep-alive pings
    /// go unanswered, or `stop` is cancelled (then gracefully: GOAWAY, and
    /// the streams in flight finish).
    /// `client` is the certificate chain the sidecar presented in the TLS
    /// handshake, if any.
    pub async fn serve_connection<T>(
        self,
        io: T,
        peer: Option<SocketAddr>,
        client: Option<ClientChain>,
        stop: CancellationToken,
    ) where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .handshake(io);
        let mut connection = match tokio::time::timeout(HELLO_TIMEOUT, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return info!(?peer, error = %e, "tunnel handshake failed"),
            Err(_) => return debug!(?peer, "tunnel handshake timed out"),
        };
        let pings = connection.ping_pong().expect("taken once");
        // What the connection's data streams share: the budget their
        // windows grow from.
        let flow = Arc::new(ConnectionFlow::default());
        let close = CloseConnection(CancellationToken::new());
        let keepalive = keepalive::keepalive(pings, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
        tokio::pin!(keepalive);
        let rpcs = TunnelServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let mut stopping = false;
        loop {
            tokio::select! {
                next = connection.accept() => match next {
                    Some(Ok((mut request, respond))) => {
                        if request.uri().path() == DATA_PATH {
                            self.park_data_stream(request, respond, &flow, client.as_ref(), peer, &close);
                        } else {
                            if let Some(client) = &client {
                                request.extensions_mut().insert(client.clone());
                            }
                            request.extensions_mut().insert(close.clone());
                            tokio::spawn(rpc::serve_rpc(rpcs.clone(), request, respond, peer));
                        }
                    }
                    Some(Err(e)) => break info!(?peer, error = %e, "tunnel connection failed"),
                    None => break,
                },
                reason = &mut keepalive => break warn!(?peer, %reason, "tunnel connection lost"),
                // Dropped, not drained: the source is locked out.
                _ = close.0.cancelled() => break,
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.graceful_shutdown();
                }
            }
        }
    }

    /// Checks a new data stream and parks it in its session's pool, or
    /// answers it with the gRPC status that says why not.
    fn park_data_stream(
        &self,
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        flow: &Arc<ConnectionFlow>,
        client: Option<&ClientChain>,
        peer: Option<SocketAddr>,
        close: &CloseConnection,
    ) {
        let session = match self.admit_data_stream(request.headers(), client) {
            Ok(session) => session,
            Err(status) => {
                let delay = match status.code() {
                    tonic::Code::Unauthenticated => self.rejected(peer, &status, Some(close)),
                    _ => Duration::ZERO,
                };
                let refusal = grpc::status_response(status.code(), status.message());
                if delay.is_zero() {
                    let _ = respond.send_response(refusal, true);
                } else {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = respond.send_response(refusal, true);
                    });
                }
                return;
            }
        };
        let Ok(send) = respond.send_response(grpc::ok_response(), false) else {
            return;
        };
        let stream = DataStream::new(send, request.into_body(), Role::Server, flow.clone());
        if let Err(mut refused) = session.add_idle(stream) {
            refused.fail(
                tonic::Code::ResourceExhausted,
                "too many idle data streams for this session",
            );
        }
    }

    fn admit_data_stream(
        &self,
        headers: &http::HeaderMap,
        client: Option<&ClientChain>,
    ) -> Result<Arc<Session>, Status> {
        let version = headers.get(VERSION_METADATA).and_then(|v| v.to_str().ok());
        if version.and_then(|v| v.parse().ok()) != Some(PROTOCOL_VERSION) {
            return Err(Status::failed_precondition(format!(
                "data stream protocol version {version:?} is not supported (expected \"{PROTOCOL_VERSION}\")"
            )));
        }
        let session = headers
            .get(SESSION_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|id| self.registry.session(id))
            .ok_or_else(|| Status::not_found("unknown tunnel session"))?;
        let metadata = MetadataMap::from_headers(headers.clone());
        let (token, _) = self.authenticate(&metadata, client)?;
        if token != session.token {
            return Err(Status::permission_denied(
                "this token does not own the session",
            ));
        }
        Ok(session)
    }
}

impl TunnelService {
    /// Serves one session's control stream until the sidecar goes away or stops
    /// sending heartbeats, telling it of every change of the edge's replicas.
    async fn run_session(
        self,
        session: Arc<Session>,
        mut inbound: Streaming<SidecarMessage>,
        mut replicas: watch::Receiver<Arc<[String]>>,
        dead_after: Duration,
    ) {
        let reason = loop {
            let received = tokio::select! {
                received = tokio::time::timeout(dead_after, inbound.message()) => received,
                Ok(()) = replicas.changed() => {
                    let urls = replicas.borrow_and_update().to_vec();
                    session.send(edge_message::Kind::Replicas(Replicas { urls })).await;
                    continue;
                }
            };
            let message = match received {
                Err(_) => break "heartbeats stopped".to_string(),
                Ok(Err(status)) => break format!("control stream failed: {}", status.message()),
                Ok(Ok(None)) => break "sidecar closed the session".to_string(),
                Ok(Ok(Some(m))) => m,
            };
            match message.kind {
                Some(sidecar_message::Kind::Heartbeat(hb)) => {
                    if let Some(stats) = hb.stats {
                        *session.last_stats.lock().unwrap() = stats;
                    }
                    session.adapt_idle();
                    let ack = edge_message::Kind::HeartbeatAck(HeartbeatAck {
                        sequence: hb.sequence,
                    });
                    if !session.send(ack).await {
                        break "control stream closed".to_string();
                    }
                }
                Some(sidecar_message::Kind::Drain(d)) => {
                    info!(session = %session.id, reason = %d.reason, "sidecar draining");
                    session.set_draining();
                }
                Some(sidecar_message::Kind::Routes(set)) => {
                    let applied = self.apply_routes(&session, set);
                    let applied = edge_message::Kind::RoutesApplied(applied);
                    if !session.send(applied).await {
                        break "control stream closed".to_string();
                    }
                }
                // A second Hello, or a kind from a newer sidecar: ignore.
                _ => {}
            }
        };
        self.registry.remove(&session);
        info!(session = %session.id, environment = %session.environment, %reason, "tunnel down");
    }

    /// A new route set from a session's sidecar: what it serves from now
    /// on, unless its routes are invalid (then it keeps the last set). Its
    /// host rules are checked against what the token grants now (a reload
    /// may have changed the cluster's domains since the session began).
    fn apply_routes(&self, session: &Arc<Session>, set: RouteSet) -> RoutesApplied {
        let routes = match routes(&set.routes) {
            Ok(routes) => routes,
            Err(status) => {
                let refused = vec![format!(
                    "the whole set, kept the last one: {}",
                    status.message()
                )];
                log_refused(&session.cluster, &session.sidecar_name, &refused);
                return RoutesApplied {
                    urls: Vec::new(),
                    refused,
                };
            }
        };
        let auth = self.registry.authorizations();
        // A token no longer known: its session is being closed; it claims nothing.
        let revoked = ClusterGrant::default();
        let grant = auth.by_token.get(&session.token).unwrap_or(&revoked);
        let (claims, refused) = claims(&set.host_rules, grant, &routes);
        log_refused(&session.cluster, &session.sidecar_name, &refused);
        info!(
            session = %session.id, routes = routes.len(), host_rules = claims.len(),
            "sidecar's routes changed"
        );
        self.registry.serve(session, Served::new(routes, claims));
        RoutesApplied {
            urls: self.urls(&session.environment, &set.routes),
            refused,
        }
    }
}

fn log_refused(cluster: &str, sidecar: &str, refused: &[String]) {
    for reason in refused {
        warn!(%cluster, %sidecar, %reason, "host rule refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(envs: &[&str]) -> ClusterGrant {
        ClusterGrant {
            cluster: "c1".into(),
            environments: envs.iter().map(|e| e.to_string()).collect(),
            domains: vec!["team1.example.com".into()],
            client_ca: None,
        }
    }

    fn hello(env: &str, routes: &[(&str, u32)]) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            environment: env.into(),
            routes: routes
                .iter()
                .map(|(s, p)| Route {
                    service: s.to_string(),
                    port: *p,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn admits_the_tokens_environment() {
        let (env, routes) = admit(&hello("", &[("web", 80)]), &grant(&["demo"])).unwrap();
        assert_eq!(env, "demo");
        assert!(routes.contains_key(&("web".to_string(), 80)));
        assert_eq!(admit(&hello("b", &[]), &grant(&["a", "b"])).unwrap().0, "b");
    }

    #[test]
    fn refuses_foreign_environment_bad_routes_and_versions() {
        let e = admit(&hello("prod", &[]), &grant(&["demo"])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("\"prod\""));
        assert_eq!(
            admit(&hello("", &[]), &grant(&["a", "b"]))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            admit(&hello("demo", &[("web", 0)]), &grant(&["demo"]))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            admit(&hello("demo", &[("Web!", 80)]), &grant(&["demo"]))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        let mut h = hello("demo", &[]);
        h.protocol_version = 99;
        let e = admit(&h, &grant(&["demo"])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("99"));
    }

    fn host_rule(host: &str, path: &str, service: &str, port: u32) -> HostRule {
        HostRule {
            host: host.into(),
            path: path.into(),
            service: service.into(),
            port,
            source: "ingress team1/web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn claims_stay_within_the_clusters_domains_and_routes() {
        let routes: Routes = [(("web".to_string(), 80), Protocol::Http1)].into();
        let (taken, refused) = claims(
            &[
                host_rule("team1.example.com", "", "web", 80),
                host_rule("*.team1.example.com", "/api", "web", 80),
                host_rule("App.Team1.Example.com", "/", "web", 80),
                host_rule("team2.example.com", "/", "web", 80),
                host_rule("evilteam1.example.com", "/", "web", 80),
                host_rule("*.example.com", "/", "web", 80),
                host_rule("a.team1.example.com", "/", "db", 5432),
                host_rule("a.team1.example.com", "api", "web", 80),
                host_rule("not a host", "/", "web", 80),
            ],
            &grant(&["demo"]),
            &routes,
        );
        let hosts: Vec<_> = taken
            .iter()
            .map(|c| (c.host.to_string(), c.path.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("team1.example.com".to_string(), "/"),
                ("*.team1.example.com".to_string(), "/api"),
                ("app.team1.example.com".to_string(), "/"),
            ]
        );
        assert_eq!(refused.len(), 6, "{refused:#?}");
        assert!(refused[0].starts_with("team2.example.com/ (ingress team1/web): not within this cluster's domains (team1.example.com)"));
        assert!(
            refused[1].contains("not within"),
            "a suffix is not a parent domain"
        );
        assert!(
            refused[2].contains("not within"),
            "a wildcard above the domain"
        );
        assert!(refused[3].contains("db:5432 is not one of this session's routes"));
        assert!(refused[4].contains("must start with '/'"));
        assert!(refused[5].contains("not a host name"));
        let (_, refused) = claims(
            &[host_rule("team1.example.com", "/", "web", 80)],
            &ClusterGrant::default(),
            &routes,
        );
        assert!(refused[0].contains("may claim no custom domains"));
    }
}
