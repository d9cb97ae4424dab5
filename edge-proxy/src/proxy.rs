//! The visitor-facing HTTP proxy: Pingora's phases, one module each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tracing::info;

use crate::config::{EdgeConfig, VisitorSettings};
use crate::connector::TunnelConnector;
use crate::errors::{self, Failure};
use crate::forwarding;
use crate::https;
use crate::preview::normalize_host;
use crate::registry::TunnelRegistry;
use crate::route::{self, Target};
use crate::visitor::HeadDeadline;

#[derive(Clone)]
pub struct EdgeProxy {
    pub config: Arc<ArcSwap<EdgeConfig>>,
    pub registry: Arc<TunnelRegistry>,
    /// Requests (and upgraded connections) in progress.
    pub in_flight: Arc<AtomicUsize>,
    /// The bound HTTPS port, for redirects (`None`: no HTTPS listener).
    pub https_port: Option<u16>,
}

/// What earlier phases learned about a request.
pub struct RequestCtx {
    pub request_id: String,
    pub target: Option<Target>,
    pub failure: Option<Failure>,
    pub started: Instant,
    /// The client is a trusted proxy (its forwarding headers are kept).
    pub trusted_hop: bool,
    /// A WebSocket (or other upgrade) or a gRPC call: a long-lived stream
    /// that may be quiet for a while.
    pub long_lived: bool,
    _in_flight: InFlight,
}

/// Counts a request as in progress for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// A header value HTTP/2 sends as a literal "never indexed": a value unique
/// to each response (a request id) would otherwise enter the connection's
/// HPACK table every time and push out the values worth indexing (`date`,
/// `content-type`, ...).
fn unindexed(value: &str) -> Result<http::HeaderValue> {
    let mut value =
        http::HeaderValue::from_str(value).map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The HTTP/1 connection's request-head deadline, if this is one.
fn head_deadline(session: &Session) -> Option<&HeadDeadline> {
    session.stream()?.as_any().downcast_ref::<HeadDeadline>()
}

/// Applies the visitor settings to the connection a request came on: its
/// head has arrived, an idle keep-alive connection closes after
/// `keepalive_timeout`, and a visitor that takes nothing of the response
/// for `send_timeout` is closed (which resets its tunnel stream).
fn visitor_connection(session: &mut Session, visitors: &VisitorSettings) {
    if let Some(conn) = head_deadline(session) {
        conn.head_received();
    }
    session.set_keepalive(Some(visitors.keepalive_timeout.as_secs()));
    session.set_write_timeout(Some(visitors.send_timeout));
}

/// Whether the visitor's connection is TLS.
fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: forwarding::new_request_id(),
            target: None,
            failure: None,
            started: Instant::now(),
            trusted_hop: false,
            long_lived: false,
            _in_flight: InFlight::new(&self.in_flight),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let config = self.config.load();
        visitor_connection(session, &config.visitors);
        ctx.trusted_hop = client_ip(session)
            .is_some_and(|ip| config.trusted_proxies.iter().any(|n| n.contains(&ip)));
        if let Some(id) =
            forwarding::trusted_request_id(&session.req_header().headers, ctx.trusted_hop)
        {
            ctx.request_id = id;
        }
        ctx.long_lived = session.is_upgrade_req() || errors::is_grpc(session.req_header());
        if !is_tls(session) && https::redirects(&config, self.https_port) {
            let req = session.req_header();
            let host = route::host(req).and_then(|h| normalize_host(h).ok());
            let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            if let Some(location) =
                host.and_then(|h| https::redirect_location(&config, self.https_port, &h, path))
            {
                errors::redirect(session, &location, &ctx.request_id).await;
                return Ok(true);
            }
        }
        match route::resolve(session.req_header(), &config, &self.registry) {
            Ok(target) => {
                ctx.target = Some(target);
                Ok(false)
            }
            Err(failure) => {
                errors::respond(session, &failure, &ctx.request_id).await;
                ctx.failure = Some(failure);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let target = ctx
            .target
            .as_ref()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        // The address is never dialed: the custom connector below opens a
        // tunnel stream instead.
        let mut peer = HttpPeer::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], target.service.port)),
            target.protocol.is_tls(),
            String::new(),
        );
        target
            .protocol
            .configure(&mut peer, session.is_upgrade_req());
        peer.group_key = target.pool_key();
        peer.options.read_timeout = Some(if ctx.long_lived {
            target.stream_idle_timeout
        } else {
            target.read_timeout
        });
        peer.options.idle_timeout = Some(target.idle_timeout);
        peer.options.custom_l4 = Some(Arc::new(TunnelConnector {
            session: target.session.clone(),
            service: target.service.service.clone(),
            port: target.service.port,
            request_id: ctx.request_id.clone(),
            open_stream_timeout: target.open_stream_timeout,
            connect_timeout: target.connect_timeout,
        }));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        request.insert_header(&forwarding::X_REQUEST_ID, &ctx.request_id)?;
        if let Some(path) = ctx.target.as_ref().and_then(|t| t.upstream_path.as_deref()) {
            let uri = path
                .parse()
                .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
            request.set_uri(uri);
        }
        let hop = forwarding::Hop {
            client_ip: client_ip(session),
            trusted: ctx.trusted_hop,
            tls: is_tls(session),
            host: route::host(session.req_header()),
        };
        let mut result = Ok(());
        forwarding::headers(&hop, &session.req_header().headers, |name, value| {
            if result.is_ok() {
                result = request.insert_header(name, value);
            }
        });
        result
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.insert_header(&forwarding::X_REQUEST_ID, unindexed(&ctx.request_id)?)?;
        if is_tls(session) {
            let host = route::host(session.req_header());
            if let Some(value) = https::hsts(&self.config.load(), host) {
                response.insert_header("strict-transport-security", value)?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let failure = errors::classify(e);
        let error_code = errors::respond(session, &failure, &ctx.request_id).await;
        ctx.failure = Some(failure);
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(conn) = head_deadline(session) {
            conn.request_done();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let req = session.req_header();
        info!(
            request_id = %ctx.request_id,
            method = %req.method,
            host = route::host(req).unwrap_or(""),
            path = req.uri.path(),
            status,
            outcome = ctx.failure.as_ref().map(|f| f.kind.code()).unwrap_or("OK"),
            error = e.map(|e| e.to_string()),
            session = ctx.target.as_ref().map(|t| t.session.id.as_str()),
            duration_us = ctx.started.elapsed().as_micros() as u64,
            "request"
        );
    }
}
