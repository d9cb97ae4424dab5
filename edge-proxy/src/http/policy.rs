//! The header policy (`header_policy:`, `routes[].header_policy:`; the
//! `header-policy` crate) on a request's way upstream and its response's
//! way back, through the request context: the visitor's headers are edited
//! in `request_filter` (so Pingora's copy for the service has the edits, and
//! a CORS preflight is answered before any upstream work), the response's
//! in `response_filter`, after the edge's own headers.

use header_policy::{single_value, Decision, Headers, LocalResponse, Policy, RequestFacts};
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::context::RequestCtx;

/// A Pingora header map as the policy sees it. Names come lowercase and
/// valid from the policy; Pingora keeps its case map in step.
macro_rules! pingora_headers {
    ($adapter:ident, $header:ty) => {
        struct $adapter<'a>(&'a mut $header);

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
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    let _ = self.0.insert_header(name.to_owned(), value);
                }
            }

            fn append(&mut self, name: &str, value: &[u8]) {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    let _ = self.0.append_header(name.to_owned(), value);
                }
            }

            fn remove(&mut self, name: &str) {
                let _ = self.0.remove_header(name);
            }
        }
    };
}

pingora_headers!(Request, RequestHeader);
pingora_headers!(Response, ResponseHeader);

/// The facts a policy reads, owned: the request phase edits the header
/// they come from. Only what the policy needs is copied.
#[derive(Default)]
struct Owned {
    method: String,
    path: String,
    origin: Option<String>,
    client_ip: Option<String>,
}

/// The policy in force for the routed request, if it acts on requests.
fn request_policy(ctx: &RequestCtx) -> Option<&Policy> {
    let policy = ctx.target.as_ref()?.policy.as_deref()?;
    policy.acts_on_request().then_some(policy)
}

/// Applies the request side of the policy to the visitor's request; a
/// CORS preflight comes back as the response to answer with.
pub fn on_request(session: &mut Session, ctx: &RequestCtx) -> Option<LocalResponse> {
    let policy = request_policy(ctx)?;
    let needs = policy.needs();
    let req = session.req_header();
    let owned = Owned {
        method: if needs.method {
            req.method.as_str().to_owned()
        } else {
            String::new()
        },
        path: if needs.path {
            req.uri.path().to_owned()
        } else {
            String::new()
        },
        origin: needs
            .origin
            .then(|| single_value(&req.headers, "origin").map(str::to_owned))
            .flatten(),
        client_ip: needs
            .client_ip
            .then(|| ctx.client.ip.map(|ip| ip.to_string()))
            .flatten(),
    };
    let facts = facts(
        ctx,
        &owned.method,
        &owned.path,
        owned.origin.as_deref(),
        owned.client_ip.as_deref(),
    );
    match policy.on_request(&facts, &mut Request(session.req_header_mut())) {
        Decision::Continue => None,
        Decision::Respond(answer) => Some(answer),
    }
}

/// Applies the response side of the policy to the service's response.
pub fn on_response(session: &Session, response: &mut ResponseHeader, ctx: &RequestCtx) {
    let Some(policy) = ctx.target.as_ref().and_then(|t| t.policy.as_deref()) else {
        return;
    };
    if !policy.acts_on_response() {
        return;
    }
    let req = session.req_header();
    let origin = single_value(&req.headers, "origin");
    let client_ip = policy
        .needs()
        .client_ip
        .then(|| ctx.client.ip.map(|ip| ip.to_string()))
        .flatten();
    let facts = facts(
        ctx,
        req.method.as_str(),
        req.uri.path(),
        origin,
        client_ip.as_deref(),
    );
    policy.on_response(&facts, &mut Response(response));
}

fn facts<'a>(
    ctx: &'a RequestCtx,
    method: &'a str,
    path: &'a str,
    origin: Option<&'a str>,
    client_ip: Option<&'a str>,
) -> RequestFacts<'a> {
    RequestFacts {
        method,
        host: ctx.host.sent().unwrap_or(""),
        path,
        route: ctx.target.as_ref().and_then(|t| t.route_name.as_deref()),
        request_id: Some(&ctx.id),
        client_ip,
        origin,
        claims: None,
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
