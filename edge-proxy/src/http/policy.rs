//! The header policy (`header_policy:`, `routes[].header_policy:`; the
//! `header-policy` crate) through the request context: a CORS preflight is
//! answered in `request_filter`, before any upstream work; the request's
//! edits go to the upstream request in `upstream_request_filter`, after the
//! edge's forwarding headers (the copy Pingora made for the service has
//! room for added headers; the visitor's own map has none, and growing it
//! cost more than the policy); the response's in `response_filter`, after
//! the edge's own headers.

use header_policy::{single_value, Headers, LocalResponse, Name, Policy, RequestFacts, Value};
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::context::RequestCtx;

/// A field as `http` holds it; `None` for a name or value it refuses
/// (dropped, as the policy's hosts drop what they cannot carry).
pub fn parse_field(name: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

/// A Pingora header map as the policy sees it. Names come lowercase and
/// valid from the policy (standard ones parse without allocating);
/// Pingora keeps its case map, if any, in step.
macro_rules! pingora_headers {
    ($adapter:ident, $header:ty) => {
        pub struct $adapter<'a>(pub &'a mut $header);

        impl Headers for $adapter<'_> {
            fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
                self.0
                    .headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
            }

            fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
                self.0
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes()))
            }

            fn set(&mut self, name: &str, value: &[u8]) {
                if let Some((name, value)) = parse_field(name, value) {
                    let _ = self.0.insert_header(name, value);
                }
            }

            fn append(&mut self, name: &str, value: &[u8]) {
                if let Some((name, value)) = parse_field(name, value) {
                    let _ = self.0.append_header(name, value);
                }
            }

            fn remove(&mut self, name: &str) {
                let _ = self.0.remove_header(name);
            }

            // The policy's own names and fixed values come parsed.

            fn contains_name(&self, name: &Name) -> bool {
                match name.header_name() {
                    Some(n) => self.0.headers.contains_key(n),
                    None => self.contains(name),
                }
            }

            fn remove_name(&mut self, name: &Name) {
                match name.header_name() {
                    Some(n) => drop(self.0.remove_header(n)),
                    None => self.remove(name),
                }
            }

            fn set_name(&mut self, name: &Name, value: &[u8]) {
                match (name.header_name(), HeaderValue::from_bytes(value)) {
                    (Some(n), Ok(v)) => drop(self.0.insert_header(n.clone(), v)),
                    _ => self.set(name, value),
                }
            }

            fn append_name(&mut self, name: &Name, value: &[u8]) {
                match (name.header_name(), HeaderValue::from_bytes(value)) {
                    (Some(n), Ok(v)) => drop(self.0.append_header(n.clone(), v)),
                    _ => self.append(name, value),
                }
            }

            fn set_value(&mut self, name: &Name, value: &Value) {
                match (name.header_name(), value.header_value()) {
                    (Some(n), Some(v)) => drop(self.0.insert_header(n.clone(), v.clone())),
                    _ => self.set_name(name, value.as_bytes()),
                }
            }

            fn append_value(&mut self, name: &Name, value: &Value) {
                match (name.header_name(), value.header_value()) {
                    (Some(n), Some(v)) => drop(self.0.append_header(n.clone(), v.clone())),
                    _ => self.append_name(name, value.as_bytes()),
                }
            }
        }
    };
}

pingora_headers!(Request, RequestHeader);
pingora_headers!(Response, ResponseHeader);

/// The policy in force for the routed request.
fn policy(ctx: &RequestCtx) -> Option<&Policy> {
    ctx.target.as_ref()?.policy.as_deref()
}

/// The answer to a CORS preflight, when the policy has CORS and the
/// visitor's request is one.
pub fn preflight(session: &Session, ctx: &RequestCtx) -> Option<LocalResponse> {
    let policy = policy(ctx)?;
    let req = session.req_header();
    if req.method != http::Method::OPTIONS {
        return None;
    }
    let facts = facts(ctx, Line::of(req), origin(policy, req), None);
    policy.preflight(&facts, &req.headers)
}

/// Applies the policy's request edits to the request going upstream
/// (on a route with a wasm filter, [`on_visitor_request`] did).
pub fn on_request(session: &Session, upstream: &mut RequestHeader, ctx: &RequestCtx) {
    let Some(policy) = policy(ctx).filter(|p| p.acts_on_request()) else {
        return;
    };
    if ctx.target.as_ref().is_some_and(|t| t.wasm.is_some()) {
        return;
    }
    with_facts(policy, session.req_header(), ctx, |facts| {
        policy.edit_request(facts, &mut Request(upstream))
    });
}

/// Applies the policy's request edits to the visitor's request itself, on
/// a route whose wasm filter runs next and must see them (the filter
/// answers before a tunnel stream is taken, so it sees the request before
/// the forwarding headers, as Envoy's filters do).
pub fn on_visitor_request(session: &mut Session, ctx: &RequestCtx) {
    let Some(policy) = policy(ctx).filter(|p| p.acts_on_request()) else {
        return;
    };
    let req = session.req_header();
    let line = Line::of(req).owned();
    let origin = origin(policy, req).map(str::to_owned);
    let client_ip = client_ip(policy, ctx);
    let facts = facts(
        ctx,
        line.borrowed(),
        origin.as_deref(),
        client_ip.as_deref(),
    );
    policy.edit_request(&facts, &mut Request(session.req_header_mut()));
}

/// Applies the response side of the policy to the service's response.
pub fn on_response(session: &Session, response: &mut ResponseHeader, ctx: &RequestCtx) {
    let Some(policy) = policy(ctx).filter(|p| p.acts_on_response()) else {
        return;
    };
    with_facts(policy, session.req_header(), ctx, |facts| {
        policy.on_response(facts, &mut Response(response))
    });
}

/// Runs `f` with what the policy knows of the visitor's request `req`.
fn with_facts<R>(
    policy: &Policy,
    req: &RequestHeader,
    ctx: &RequestCtx,
    f: impl FnOnce(&RequestFacts<'_>) -> R,
) -> R {
    let client_ip = client_ip(policy, ctx);
    f(&facts(
        ctx,
        Line::of(req),
        origin(policy, req),
        client_ip.as_deref(),
    ))
}

/// The visitor's request line: method and path (without the query).
#[derive(Clone, Copy)]
struct Line<'a> {
    method: &'a str,
    path: &'a str,
}

impl<'a> Line<'a> {
    fn of(req: &'a RequestHeader) -> Self {
        Line {
            method: req.method.as_str(),
            path: req.uri.path(),
        }
    }

    /// A copy, for reading while the request's own map is edited.
    fn owned(self) -> OwnedLine {
        OwnedLine(self.method.to_owned(), self.path.to_owned())
    }
}

struct OwnedLine(String, String);

impl OwnedLine {
    fn borrowed(&self) -> Line<'_> {
        Line {
            method: &self.0,
            path: &self.1,
        }
    }
}

/// The visitor's address as text, when the policy reads it.
fn client_ip(policy: &Policy, ctx: &RequestCtx) -> Option<String> {
    policy
        .needs()
        .client_ip
        .then(|| ctx.client.ip.map(|ip| ip.to_string()))
        .flatten()
}

/// The request's `Origin`, looked up only when the policy reads it.
fn origin<'a>(policy: &Policy, req: &'a RequestHeader) -> Option<&'a str> {
    policy
        .needs()
        .origin
        .then(|| single_value(&req.headers, "origin"))
        .flatten()
}

/// What the policy knows of the request: the visitor's request as sent,
/// and the context.
fn facts<'a>(
    ctx: &'a RequestCtx,
    line: Line<'a>,
    origin: Option<&'a str>,
    client_ip: Option<&'a str>,
) -> RequestFacts<'a> {
    RequestFacts {
        method: line.method,
        host: ctx.host.sent().unwrap_or(""),
        path: line.path,
        route: ctx.target.as_ref().and_then(|t| t.route_name.as_deref()),
        request_id: Some(&ctx.id),
        client_ip,
        origin,
        claims: ctx
            .identity
            .as_ref()
            .map(|who| &who.claims as &dyn header_policy::Claims),
    }
}

/// Answers a request with the policy's own response (a CORS preflight).
pub async fn answer(session: &mut Session, answer: &LocalResponse, request_id: &str) {
    let Ok(mut header) = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))
    else {
        return;
    };
    for (name, value) in &answer.headers {
        let _ = header.append_header(*name, value.as_str());
    }
    let _ = header.insert_header("content-length", "0");
    let _ = header.insert_header("x-request-id", request_id);
    let _ = session.write_response_header(Box::new(header), true).await;
}
