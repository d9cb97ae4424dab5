//! The visitor-facing HTTP proxy: Pingora's phases, in the order they run
//! for a request.
//!
//! 1. `new_ctx`: a [`RequestCtx`], counted in flight.
//! 2. `request_filter`: learn the request's facts once ([`RequestCtx::learn`]),
//!    apply the visitor settings to its connection, redirect plain HTTP to
//!    HTTPS, route it ([`route::resolve`]), answer a CORS preflight if the
//!    header policy says so ([`policy::preflight`]), check the visitor's
//!    bearer token or session cookie against the target's access rule
//!    ([`auth::check`]), sending a browser that needs one to sign in
//!    ([`login`], which also answers the edge's own `/.edge/` paths before
//!    routing);
//!    on a route with a wasm filter, the policy's request edits and the
//!    filter's request side ([`wasm::on_request`]), which may answer.
//!    Limits: the pre-auth guard right after learning, the route's,
//!    environment's, cluster's, tunnel's, identity's and client IP's once
//!    the visitor is known ([`limits`]).
//! 3. `upstream_peer`: the target's tunnel stream as the upstream socket
//!    ([`TunnelConnector`]), pooled per service and protocol.
//! 4. `upstream_request_filter`: request id, rewritten path, forwarding
//!    headers, the visitor's identity ([`auth::to_service`]), then the
//!    header policy's request edits ([`policy::on_request`]) or the wasm
//!    filter's, recorded in step 2 ([`wasm::on_upstream_request`]).
//! 5. `response_filter`: request id, HSTS, then the header policy's
//!    response side ([`policy::on_response`]), then the wasm filter's
//!    ([`wasm::on_response`]).
//! 6. `fail_to_proxy`: any failure becomes the one error shape (a wasm
//!    filter's own answer is written as it asked).
//! 7. `logging`: one line per request, from the context.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tracing::info;

use super::context::RequestCtx;
use super::errors;
use super::failure::{self, ErrorKind, Failure, FailureCounts};
use super::visitor::HeadDeadline;
use super::{auth, forwarding, https, limits, login, policy, route, wasm, websocket};
use crate::auth::session::Revocations;
use crate::config::{EdgeConfig, VisitorSettings};
use crate::limits::Gauges;
use crate::routing::upstream::{Protocol, TCP_PATH};
use crate::traces::Trace;
use crate::tunnel::connector::TunnelConnector;
use crate::tunnel::ingress::TunnelIngress;
use crate::tunnel::registry::TunnelRegistry;
use tunnel_transport::websocket::TUNNEL_PATH;

#[derive(Clone)]
pub struct EdgeProxy {
    pub config: Arc<ArcSwap<EdgeConfig>>,
    pub registry: Arc<TunnelRegistry>,
    /// Requests (and upgraded connections) in progress.
    pub in_flight: Arc<AtomicUsize>,
    /// The bound HTTPS port, for redirects (`None`: no HTTPS listener).
    pub https_port: Option<u16>,
    /// Sign-ins ended by logout and sign-in tickets used (kept across
    /// config reloads).
    pub revocations: Arc<Revocations>,
    /// What is in flight per limit key, and refusals per scope (kept
    /// across config reloads).
    pub gauges: Arc<Gauges>,
    /// Responses the edge wrote itself, per error code.
    pub failures: Arc<FailureCounts>,
    /// State shared with the other replicas (`redis:`).
    pub shared: Arc<crate::shared::InForce>,
    /// Per-route counts for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Request spans exported over OTLP (`traces:`).
    pub traces: Option<Arc<crate::traces::Traces>>,
    /// Sidecars' tunnels over a WebSocket ([`TUNNEL_PATH`]).
    pub tunnel_ingress: TunnelIngress,
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
/// for `send_timeout` is closed (which resets its tunnel stream). While
/// the edge drains, an HTTP/1.1 connection closes after its response
/// (`Connection: close`): a client or balancer that keeps connections
/// open sends its next request to another replica instead of keeping
/// this one busy to the end of its grace period.
fn visitor_connection(session: &mut Session, visitors: &VisitorSettings, leaving: bool) {
    if let Some(conn) = head_deadline(session) {
        conn.head_received();
    }
    let keepalive = (!leaving).then_some(visitors.keepalive_timeout.as_secs());
    session.set_keepalive(keepalive);
    session.set_write_timeout(Some(visitors.send_timeout));
}

/// A TCP service is reached only by a WebSocket at [`TCP_PATH`] (what
/// `sidecar access tcp` opens); anything else is told how.
fn tcp_tunnel(req: &RequestHeader, ctx: &RequestCtx) -> Result<(), Failure> {
    let tcp = ctx
        .target
        .as_ref()
        .is_some_and(|t| matches!(t.protocol, Protocol::Tcp));
    if !tcp || (req.uri.path() == TCP_PATH && websocket::requested(req)) {
        return Ok(());
    }
    let host = ctx.host.name().unwrap_or_default();
    Err(Failure::with(
        ErrorKind::BadRequest,
        format!("{host} is a TCP service: reach it with `sidecar access tcp {host} --listen 127.0.0.1:PORT`"),
    ))
}

/// A request with more header fields or a longer target than the
/// visitor settings allow (431, 414), or whose target names another host
/// than its `Host` header (400: which one is meant is anyone's guess).
fn request_size(req: &RequestHeader, visitors: &VisitorSettings) -> Result<(), Failure> {
    if req.headers.len() > visitors.max_headers {
        return Err(Failure::with(
            ErrorKind::HeadersTooLarge,
            format!("more than {} header fields", visitors.max_headers),
        ));
    }
    if let (Some(authority), Some(host)) =
        (req.uri.authority(), req.headers.get(http::header::HOST))
    {
        // As Pingora already checks HTTP/1.1 requests: HTTP/2's
        // `:authority` and a `host` field must agree too (RFC 9113 §8.3.1).
        if !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes())
        {
            return Err(Failure::with(
                ErrorKind::BadRequest,
                "the request target names another host than the Host header",
            ));
        }
    }
    let target = req.raw_path().len();
    if target > visitors.max_uri_length {
        return Err(Failure::with(
            ErrorKind::UriTooLong,
            format!(
                "the request target is longer than {} bytes",
                visitors.max_uri_length
            ),
        ));
    }
    Ok(())
}

/// A request with both `Transfer-Encoding` and `Content-Length`: which
/// one frames the body is what request smuggling lives on, and RFC 9112
/// §6.3 says such a message "ought to be handled as an error" (Pingora
/// would read it as chunked; vendored patch 014 tells the edge).
fn conflicting_framing(session: &Session) -> Result<(), Failure> {
    let both = (session.as_downstream().as_http1()).is_some_and(|h1| h1.sent_both_framings());
    if both {
        return Err(Failure::with(
            ErrorKind::BadRequest,
            "both Transfer-Encoding and Content-Length: the body's length is ambiguous",
        ));
    }
    Ok(())
}

/// A body its `Content-Length` says is larger than the route allows: 413
/// before a byte of it is read.
fn announced_body(req: &RequestHeader, ctx: &RequestCtx) -> Result<(), Failure> {
    let Some(max) = ctx.target.as_ref().and_then(|t| t.max_body_size) else {
        return Ok(());
    };
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match length {
        Some(length) if length > max => Err(body_too_large(max)),
        _ => Ok(()),
    }
}

fn body_too_large(max: u64) -> Failure {
    Failure::with(
        ErrorKind::BodyTooLarge,
        format!("the request body is larger than this route's {max} bytes"),
    )
}

/// Answers the request with `failure` instead of proxying it.
async fn answer(session: &mut Session, failure: Failure, ctx: &mut RequestCtx) -> Result<bool> {
    errors::respond(session, &failure, ctx).await;
    ctx.failure = Some(failure);
    Ok(true)
}

impl EdgeProxy {
    /// A request at [`TUNNEL_PATH`]: a sidecar opening its tunnel as a
    /// WebSocket, on any host. It authenticates in the tunnel (its Hello),
    /// not as a visitor; a source locked out for failed authentications is
    /// refused here, as the tunnel listener refuses its connections.
    fn sidecar_websocket(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<(), Failure> {
        if !websocket::requested(req) {
            return Err(Failure::with(
                ErrorKind::BadRequest,
                format!(
                    "{TUNNEL_PATH} is where sidecars open their tunnel, with a WebSocket upgrade"
                ),
            ));
        }
        let throttle = self.tunnel_ingress.service.throttle();
        if let Some(ip) = ctx.client.peer {
            if throttle.refuses(ip, std::time::Instant::now()) {
                return Err(Failure::with(
                    ErrorKind::RateLimited,
                    "too many failed sidecar authentications from this address; wait and retry",
                ));
            }
        }
        ctx.sidecar_tunnel = true;
        // A tunnel is not a visitor's request: the edge's drain does not
        // wait for it (its sessions drain as the tunnel listener's do).
        ctx.not_in_flight();
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.in_flight)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let config = self.config.load();
        ctx.learn(session, &config);
        visitor_connection(session, &config.visitors, self.registry.is_leaving());
        if let Err(failure) = limits::guard(ctx, &config, &self.gauges) {
            return answer(session, failure, ctx).await;
        }
        if let Err(failure) = request_size(session.req_header(), &config.visitors)
            .and_then(|()| conflicting_framing(session))
        {
            return answer(session, failure, ctx).await;
        }
        if session.req_header().uri.path() == TUNNEL_PATH {
            return match self.sidecar_websocket(session.req_header(), ctx) {
                Ok(()) => Ok(false),
                Err(failure) => answer(session, failure, ctx).await,
            };
        }
        let host = match ctx.host.name() {
            Ok(host) => host,
            Err(e) => return answer(session, e.into(), ctx).await,
        };
        if ctx.tls.is_none() && https::redirects(&config, self.https_port) {
            let req = session.req_header();
            let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            if let Some(location) = https::redirect_location(&config, self.https_port, host, path) {
                errors::redirect(session, &location, &ctx.id).await;
                return Ok(true);
            }
        }
        if login::endpoint(
            session,
            ctx,
            &config,
            &self.registry,
            &self.revocations,
            &self.shared,
        )
        .await
        {
            return Ok(true);
        }
        let host = ctx.host.name().unwrap_or_default(); // an error was answered above
        match route::resolve_waiting(host, session.req_header(), &config, &self.registry).await {
            Ok(target) => {
                ctx.target = Some(target);
                if let Some(answer) = policy::preflight(session, ctx) {
                    policy::answer(session, &answer, &ctx.id).await;
                    return Ok(true);
                }
                if let Err(failure) = auth::check(session, ctx, &config, &self.revocations).await {
                    let req = session.req_header();
                    if let Some(location) = login::sign_in_redirect(req, ctx, &config, &failure) {
                        let reply = errors::redirect_reply(location, Vec::new());
                        errors::own_response(session, &reply, &ctx.id).await;
                        ctx.failure = Some(failure);
                        return Ok(true);
                    }
                    return answer(session, failure, ctx).await;
                }
                if let Err(failure) = limits::admit(ctx, &config, &self.gauges, &self.shared).await
                {
                    return answer(session, failure, ctx).await;
                }
                if let Err(failure) = announced_body(session.req_header(), ctx) {
                    return answer(session, failure, ctx).await;
                }
                if let Err(failure) = tcp_tunnel(session.req_header(), ctx) {
                    return answer(session, failure, ctx).await;
                }
                if ctx.target.as_ref().is_some_and(|t| t.wasm.is_some()) {
                    policy::on_visitor_request(session, ctx);
                    return match wasm::on_request(session, ctx) {
                        wasm::Step::Continue => Ok(false),
                        wasm::Step::Reply(reply) => {
                            wasm::reply(session, &reply, &ctx.id).await;
                            Ok(true)
                        }
                        wasm::Step::Failed(failure) => answer(session, failure, ctx).await,
                        reset @ wasm::Step::Reset => Err(reset.into_error()),
                    };
                }
                Ok(false)
            }
            Err(failure) => {
                let failure = route::tunnel_elsewhere(failure, &self.shared).await;
                answer(session, failure, ctx).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.sidecar_tunnel {
            let mut peer = HttpPeer::new(
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                false,
                String::new(),
            );
            let sidecar = session.client_addr().and_then(|a| a.as_inet()).copied();
            peer.options.custom_l4 = Some(Arc::new(self.tunnel_ingress.connector(sidecar)));
            return Ok(Box::new(peer));
        }
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
        peer.options.read_timeout = Some(if ctx.long_lived() {
            target.stream_idle_timeout
        } else {
            target.read_timeout
        });
        peer.options.idle_timeout = Some(target.idle_timeout);
        ctx.upstream_started = Some(std::time::Instant::now());
        peer.options.custom_l4 = Some(Arc::new(TunnelConnector {
            session: target.session.clone(),
            service: target.service.service.clone(),
            port: target.service.port,
            request_id: ctx.id.clone(),
            open_stream_timeout: target.open_stream_timeout,
            connect_timeout: target.connect_timeout,
            websocket: matches!(target.protocol, Protocol::Tcp),
        }));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.sidecar_tunnel {
            return Ok(()); // the edge answers it itself
        }
        request.insert_header(&forwarding::X_REQUEST_ID, &ctx.id)?;
        if let Some(path) = ctx.target.as_ref().and_then(|t| t.upstream_path.as_deref()) {
            let uri = path
                .parse()
                .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
            request.set_uri(uri);
        }
        let hop = forwarding::Hop {
            client_ip: ctx.client.peer,
            trusted: ctx.client.trusted_hop,
            tls: ctx.tls.is_some(),
            host: &ctx.host,
            port: session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port()),
        };
        let mut result = Ok(());
        let mut removed = Vec::new();
        forwarding::headers(
            &hop,
            &session.req_header().headers,
            |name, value| {
                if result.is_ok() {
                    result = request.insert_header(name, value);
                }
            },
            |name| removed.push(name),
        );
        for name in removed {
            let _ = request.remove_header(name);
        }
        if self.traces.is_some() {
            // The service's parent span is the edge's.
            let trace = Trace::continuing(
                request
                    .headers
                    .get(&forwarding::TRACEPARENT)
                    .and_then(|v| v.to_str().ok()),
            );
            request.insert_header(&forwarding::TRACEPARENT, trace.traceparent())?;
            ctx.trace = Some(trace);
        }
        if let Some(cookies) = forwarding::joined_cookies(&request.headers) {
            request.insert_header(http::header::COOKIE, cookies)?;
        }
        if let Some(length) = forwarding::single_content_length(&request.headers) {
            request.insert_header(http::header::CONTENT_LENGTH, length)?;
        }
        auth::to_service(request, ctx, &self.config.load());
        policy::on_request(session, request, ctx);
        wasm::on_upstream_request(request, ctx);
        result
    }

    /// A body longer than the route allows, found while it streams (no
    /// `Content-Length`, or one that lied): the request fails with 413 if
    /// the service has not answered yet, else the connection is cut.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(max) = ctx.target.as_ref().and_then(|t| t.max_body_size) else {
            return Ok(());
        };
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > max {
            ctx.failure = Some(body_too_large(max));
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body over the route's max_body_size",
            ));
        }
        Ok(())
    }

    /// Requests refused before a phase ran (a head too large, too slow or
    /// malformed; `CONNECT`) get the one error shape too, with a request
    /// id, and are counted and logged once.
    fn early_refusal(
        &self,
        error: Option<&Error>,
        req: Option<&RequestHeader>,
    ) -> Option<(ResponseHeader, bytes::Bytes)> {
        let failure = match error {
            None => Failure::new(ErrorKind::MethodNotAllowed),
            Some(e) => failure::unreadable(e)?,
        };
        let id = forwarding::new_request_id();
        let format = match req {
            Some(req) => errors::Format::of(req, super::context::is_grpc(req)),
            None => errors::Format::Json,
        };
        self.failures.count(failure.kind);
        info!(
            request_id = %id,
            method = req.map(|r| r.method.as_str()),
            status = failure.kind.status(),
            outcome = failure.kind.code(),
            hop = failure.hop.as_str(),
            error = error.map(|e| e.to_string()),
            "request refused before it was read"
        );
        let (mut header, body) = errors::render(&failure, &id, format);
        if failure.kind == ErrorKind::MethodNotAllowed {
            let _ = header.insert_header("allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
        }
        Some((header, body))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_answered = ctx.upstream_started.map(|t| t.elapsed());
        response.insert_header(&forwarding::X_REQUEST_ID, unindexed(&ctx.id)?)?;
        if ctx.sidecar_tunnel {
            return Ok(());
        }
        if let (Some(_), Ok(host)) = (&ctx.tls, ctx.host.name()) {
            if let Some(value) = https::hsts(&self.config.load(), host) {
                response.insert_header("strict-transport-security", value)?;
            }
        }
        if let Some(auth) = ctx.target.as_ref().and(self.config.load().auth.clone()) {
            if auth.login.is_some() {
                login::strip_tossed_cookies(response, &auth.session);
            }
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        if response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && websocket::requested(session.req_header())
        {
            ctx.websocket = Some(Default::default());
        }
        policy::on_response(session, response, ctx);
        wasm::on_response(session, response, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let Some(frames) = ctx.websocket.as_mut() else {
            return Ok(None);
        };
        match body {
            Some(data) => frames.feed(data),
            // The edge ended the tunnel stream (its grace period is over):
            // the visitor is told, between two of the service's frames.
            None if end_of_stream
                && frames.may_close()
                && ctx
                    .target
                    .as_ref()
                    .is_some_and(|t| t.session.streams_ended()) =>
            {
                *body = Some(websocket::going_away());
            }
            None => {}
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let failure = match wasm::replaced(e) {
            Some(wasm::Step::Reply(reply)) => {
                return FailToProxy {
                    error_code: wasm::reply(session, reply, &ctx.id).await,
                    can_reuse_downstream: false,
                }
            }
            Some(wasm::Step::Reset) => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                }
            }
            Some(wasm::Step::Failed(failure)) => failure.clone(),
            // The edge ended the stream at the end of its grace period.
            Some(wasm::Step::Continue) | None
                if ctx
                    .target
                    .as_ref()
                    .is_some_and(|t| t.session.streams_ended()) =>
            {
                Failure::with(
                    ErrorKind::TunnelUnavailable,
                    "this replica of the edge is shutting down; call again",
                )
            }
            // A phase that failed for a reason of its own said which
            // (a body over the route's limit); else, what Pingora reports.
            Some(wasm::Step::Continue) | None => {
                ctx.failure.take().unwrap_or_else(|| failure::classify(e))
            }
        };
        let error_code = errors::respond(session, &failure, ctx).await;
        ctx.failure = Some(failure);
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    /// Every request, failed or not, has its one line from [`Self::logging`]
    /// with the error, the code and the hop that failed. Pingora's own
    /// line would say it again, at error level, for what is mostly
    /// ordinary: a visitor who cancels a call or closes a tab, a service
    /// that is down (a wasm filter's failures are logged by the host with
    /// their cause).
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _e: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(conn) = head_deadline(session) {
            conn.request_done();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let Some(failure) = &ctx.failure {
            self.failures.count(failure.kind);
        }
        let duration = ctx.started.elapsed();
        let (bytes_in, bytes_out) = (
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
        let route_key = ctx.target.as_ref().map_or(0, |t| t.route_key);
        self.metrics.finished(
            route_key,
            || match &ctx.target {
                Some(t) => crate::metrics::RouteName {
                    environment: &t.service.environment,
                    route: t.route_label(),
                },
                None => crate::metrics::RouteName {
                    environment: "",
                    route: "".into(),
                },
            },
            crate::metrics::Finished {
                status,
                hop: ctx.failure.as_ref().map_or("", |f| f.hop.as_str()),
                duration,
                upstream: ctx.upstream_answered,
                bytes_in,
                bytes_out,
            },
        );
        let req = session.req_header();
        info!(
            request_id = %ctx.id,
            method = %req.method,
            host = ctx.host.sent().unwrap_or(""),
            client = ctx.client.ip.map(tracing::field::display),
            http = ?ctx.version,
            sni = ctx.sni(),
            path = req.uri.path(),
            route = ctx.target.as_ref().map(|t| tracing::field::display(t.route_display())),
            environment = ctx.target.as_ref().map(|t| t.service.environment.as_str()),
            subject = ctx.identity.as_ref().map(|i| i.subject.as_str()),
            status,
            outcome = ctx.failure.as_ref().map(|f| f.kind.code()).unwrap_or("OK"),
            hop = ctx.failure.as_ref().map(|f| f.hop.as_str()),
            error = e.map(|e| e.to_string()),
            session = ctx.target.as_ref().map(|t| t.session.id.as_str()),
            bytes_in,
            bytes_out,
            upstream_us = ctx.upstream_answered.map(|d| d.as_micros() as u64),
            duration_us = duration.as_micros() as u64,
            "request"
        );
        if let Some(traces) = &self.traces {
            // Refused before forwarding: the span continues the visitor's
            // trace all the same.
            let trace = ctx.trace.unwrap_or_else(|| {
                let sent = req.headers.get(&forwarding::TRACEPARENT);
                let valid = sent
                    .and_then(|v| v.to_str().ok())
                    .filter(|t| forwarding::is_valid_traceparent(t));
                Trace::continuing(valid)
            });
            let end = std::time::SystemTime::now();
            let route = ctx.target.as_ref().map(|t| t.route_label());
            traces.export(crate::traces::Finished {
                trace,
                method: req.method.as_str(),
                route: route.as_deref().unwrap_or(""),
                host: ctx.host.sent().unwrap_or(""),
                path: req.uri.path(),
                status,
                environment: ctx
                    .target
                    .as_ref()
                    .map_or("", |t| t.service.environment.as_str()),
                request_id: &ctx.id,
                error: ctx.failure.as_ref().map(|f| f.kind.code()),
                start: end - duration,
                end,
            });
        }
    }
}
