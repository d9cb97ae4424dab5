//! What the edge knows about one request: learned once, at the start of
//! `request_filter` ([`RequestCtx::learn`]), and read by every later phase,
//! which never goes back to the request's headers for it.
//!
//! Capabilities that act on requests add their facts here, each filled by
//! its own phase: the visitor's identity (visitor auth, before the route's
//! access check), the keys its limits count under (rate limits), the header
//! policy's decisions (applied in the upstream request and response phases).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Version};
use pingora_core::protocols::tls::SslDigest;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::failure::Failure;
use super::forwarding;
use super::route::Target;
use crate::config::EdgeConfig;
use crate::routing::host::Host;

/// One request's facts, outcome and bookkeeping.
pub struct RequestCtx {
    /// `X-Request-Id`: a trusted proxy's, else made here.
    pub id: String,
    pub started: Instant,
    /// The host the request names, normalized.
    pub host: Host,
    pub version: Version,
    /// The visitor's TLS connection (`None`: plain HTTP).
    pub tls: Option<Arc<SslDigest>>,
    /// A gRPC call (`content-type: application/grpc…`).
    pub grpc: bool,
    /// A WebSocket or other protocol upgrade.
    pub upgrade: bool,
    /// An upgraded WebSocket: the service's frames, followed so the edge
    /// can close it cleanly.
    pub websocket: Option<super::websocket::Frames>,
    /// This request's span, when spans are exported (`traces:`).
    pub trace: Option<crate::traces::Trace>,
    pub client: Client,
    /// Where the request goes, once routed.
    pub target: Option<Target>,
    /// Why the edge answered itself, when it did.
    pub failure: Option<Failure>,
    /// The visitor, when a bearer token or a session cookie proved who
    /// they are.
    pub identity: Option<Arc<crate::auth::Identity>>,
    /// A session cookie to write on the response (its sliding refresh).
    pub set_cookie: Option<String>,
    /// The route's wasm filter on this request, from the request side on (ended
    /// when the context is dropped).
    pub wasm: Option<Filtered>,
    /// What the request holds of the concurrency caps, while it lives.
    pub permits: Vec<crate::limits::Permit>,
    /// Request body bytes seen (counted against the route's
    /// `max_body_size` when it has one).
    pub body_bytes: u64,
    /// When the tunnel was asked for a connection to the service.
    pub upstream_started: Option<Instant>,
    /// From then to the service's response head.
    pub upstream_answered: Option<std::time::Duration>,
    /// A sidecar's tunnel over a WebSocket, not a visitor's request.
    pub sidecar_tunnel: bool,
    in_flight: Option<InFlight>,
}

/// The route's wasm filter on one request: its stream (ended when this is
/// dropped) and the edits its request side made, waiting for the request
/// going upstream (`http::wasm` records and applies them).
#[derive(Debug)]
pub struct Filtered {
    pub stream: wasm_host::PooledStream,
    pub edits: Vec<Edit>,
}

/// One edit to the request's headers, parsed when made.
#[derive(Debug)]
pub enum Edit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

/// Makes `edits` to `upstream`, in order.
pub fn apply(edits: impl IntoIterator<Item = Edit>, upstream: &mut RequestHeader) {
    for edit in edits {
        match edit {
            Edit::Set(n, v) => drop(upstream.insert_header(n, v)),
            Edit::Append(n, v) => drop(upstream.append_header(n, v)),
            Edit::Remove(n) => drop(upstream.remove_header(&n)),
        }
    }
}

/// Who sent the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client {
    /// The socket's peer address.
    pub peer: Option<IpAddr>,
    /// The peer is a trusted proxy: its forwarding headers are believed.
    pub trusted_hop: bool,
    /// The visitor's address as far as it can be trusted: the peer, or
    /// behind trusted proxies, the address they say they were reached from.
    pub ip: Option<IpAddr>,
}

impl RequestCtx {
    /// A request about to be read; `in_flight` counts it while it lives.
    pub fn new(in_flight: &Arc<AtomicUsize>) -> Self {
        Self {
            id: forwarding::new_request_id(),
            started: Instant::now(),
            host: Host::default(),
            version: Version::HTTP_11,
            tls: None,
            grpc: false,
            upgrade: false,
            websocket: None,
            trace: None,
            client: Client::default(),
            target: None,
            failure: None,
            wasm: None,
            identity: None,
            set_cookie: None,
            permits: Vec::new(),
            body_bytes: 0,
            upstream_started: None,
            upstream_answered: None,
            sidecar_tunnel: false,
            in_flight: Some(InFlight::new(in_flight)),
        }
    }

    /// Reads what every later phase needs from the request and its
    /// connection, once.
    pub fn learn(&mut self, session: &Session, config: &EdgeConfig) {
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = |ip: &IpAddr| config.trusted_proxies.iter().any(|n| n.contains(ip));
        let trusted_hop = peer.as_ref().is_some_and(trusted);
        self.client = Client {
            peer,
            trusted_hop,
            ip: forwarding::client_ip(peer, &req.headers, trusted),
        };
        if let Some(id) = forwarding::trusted_request_id(&req.headers, trusted_hop) {
            self.id = id;
        }
        self.host = Host::of(&req.headers, &req.uri);
        self.version = req.version;
        self.tls = session.digest().and_then(|d| d.ssl_digest.clone());
        self.grpc = is_grpc(req);
        self.upgrade = session.is_upgrade_req();
    }

    /// No longer counted among the requests in progress.
    pub fn not_in_flight(&mut self) {
        self.in_flight = None;
    }

    /// A long-lived stream that may be quiet for a while: an upgraded
    /// connection or a gRPC call.
    pub fn long_lived(&self) -> bool {
        self.upgrade || self.grpc
    }

    /// The server name the visitor's TLS handshake asked for.
    pub fn sni(&self) -> Option<&str> {
        crate::tls::server_name(self.tls.as_deref()?)
    }
}

/// A gRPC call, by its content type.
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Counts a request (or a TCP port's connection) as in progress for as
/// long as it lives.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
