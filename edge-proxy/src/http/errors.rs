//! Errors become HTTP responses here and nowhere else (and so does the one
//! other response the edge writes itself: the redirect to HTTPS).
//!
//! Every refusal carries the same facts: status, stable code, message,
//! request id and the hop that failed, as JSON
//! `{"error":{"code":"…","status":…,"message":"…","hop":"…","request_id":"…"}}`
//! for API clients, a short HTML page for browsers (`Accept: text/html`),
//! a gRPC status for gRPC calls; always with `X-Request-Id`. The codes are
//! listed in `docs/errors.md`.

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::context::RequestCtx;
use super::failure::{ErrorKind, Failure};

/// draft-ietf-httpapi-ratelimit-headers-10's fields.
static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// How an error is written for the client that will read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// A browser's page load.
    Html,
    /// A trailers-only gRPC response.
    Grpc,
}

impl Format {
    /// The format a request's client reads: gRPC for a gRPC call, HTML for
    /// a client that asks for it, else JSON.
    pub fn of(req: &RequestHeader, grpc: bool) -> Self {
        if grpc {
            Self::Grpc
        } else if accepts_html(req) {
            Self::Html
        } else {
            Self::Json
        }
    }
}

/// The client asks for HTML (a browser loading a page).
pub fn accepts_html(req: &RequestHeader) -> bool {
    req.headers.get(http::header::ACCEPT).is_some_and(|v| {
        v.as_bytes()
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"text/html"))
    })
}

/// The JSON body of an error response.
pub fn body(failure: &Failure, request_id: &str) -> Bytes {
    // Written straight from borrowed fields: a `json!` value built a map
    // of owned strings first, half the cost of a refusal.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: Fields<'a>,
    }
    #[derive(serde::Serialize)]
    struct Fields<'a> {
        code: &'a str,
        status: u16,
        message: &'a str,
        hop: &'a str,
        request_id: &'a str,
    }
    let body = Body {
        error: Fields {
            code: failure.kind.code(),
            status: failure.kind.status(),
            message: &failure.message,
            hop: failure.hop.as_str(),
            request_id,
        },
    };
    Bytes::from(serde_json::to_vec(&body).expect("strings and a number serialize"))
}

/// The HTML page for a browser: the same facts, readable.
pub fn page(failure: &Failure, request_id: &str) -> Bytes {
    let status = failure.kind.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Bytes::from(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{status} {reason}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}}\
         code{{background:#eee;padding:0 .3em}}small{{color:#666}}</style></head>\n\
         <body><h1>{status} {reason}</h1>\n<p>{message}</p>\n\
         <p><small>Error <code>{code}</code> at the {hop} &middot; request id <code>{request_id}</code></small></p>\n\
         </body></html>\n",
        message = escape_html(&failure.message),
        code = failure.kind.code(),
        hop = failure.hop.as_str(),
        request_id = escape_html(request_id),
    ))
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `grpc-status` and `grpc-message` of a call that fails after its
/// response headers.
fn grpc_trailers(failure: &Failure, request_id: &str) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", failure.kind.grpc_status().into());
    if let Ok(message) = http::HeaderValue::from_str(&grpc_message(failure, request_id)) {
        trailers.insert("grpc-message", message);
    }
    trailers
}

/// `grpc-message` text: percent-encoded as the gRPC spec asks.
fn grpc_message(failure: &Failure, request_id: &str) -> String {
    let text = format!(
        "{}: {} (request id {request_id})",
        failure.kind.code(),
        failure.message
    );
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The whole error response: header and body (empty for gRPC, whose
/// "trailers-only" response is HTTP 200 with `grpc-status` and
/// `grpc-message`, as gRPC clients expect from a proxy).
pub fn render(failure: &Failure, request_id: &str, format: Format) -> (ResponseHeader, Bytes) {
    let (status, content_type, body) = match format {
        Format::Grpc => (200, "application/grpc", Bytes::new()),
        Format::Html => (
            failure.kind.status(),
            "text/html; charset=utf-8",
            page(failure, request_id),
        ),
        Format::Json => (
            failure.kind.status(),
            "application/json",
            body(failure, request_id),
        ),
    };
    // Names as constants (no parsing), no case map (they go out
    // lowercase, as the services' responses do).
    use http::header::{self, HeaderValue};
    let mut header = ResponseHeader::build_no_case(status, Some(8)).expect("a valid status");
    let _ = header.insert_header(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if format == Format::Grpc {
        let _ = header.insert_header("grpc-status", failure.kind.grpc_status().to_string());
        let _ = header.insert_header("grpc-message", grpc_message(failure, request_id));
    } else {
        let _ = header.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let _ = header.insert_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let _ = header.insert_header(&super::forwarding::X_REQUEST_ID, request_id);
    match failure.kind {
        ErrorKind::TunnelUnavailable => {
            let _ = header.insert_header(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        ErrorKind::LimitsUnavailable => {
            let _ = header.insert_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    if let Some(refusal) = &failure.refusal {
        let _ = header.insert_header(header::RETRY_AFTER, HeaderValue::from(refusal.retry_after));
        let _ = header.insert_header(&RATELIMIT_POLICY, &refusal.policy);
        let _ = header.insert_header(&RATELIMIT, &refusal.state);
    }
    if let Some(challenge) = challenge(failure) {
        let _ = header.insert_header(header::WWW_AUTHENTICATE, challenge);
    }
    (header, body)
}

/// Writes the error response in the format its client reads. Returns the
/// status written. A response already under way is not touched: the
/// connection closes (no keep-alive), so the visitor sees it cut short
/// rather than an error spliced into it. Otherwise the connection is kept
/// for the next request when the refusal allows it
/// ([`ErrorKind::ends_connection`]) and the request was read whole.
pub async fn respond(session: &mut Session, failure: &Failure, ctx: &RequestCtx) -> u16 {
    if let Some(status) = session.response_written().map(|r| r.status.as_u16()) {
        session.set_keepalive(None);
        if ctx.grpc {
            // The call's headers went out: its status ends it, in trailers,
            // rather than a reset stream the client reads as INTERNAL.
            let _ = session
                .write_response_trailers(grpc_trailers(failure, &ctx.id))
                .await;
        }
        return status;
    }
    let format = Format::of(session.req_header(), ctx.grpc);
    let (header, body) = render(failure, &ctx.id, format);
    let status = header.status.as_u16();
    // Kept alive only with nothing of the request left unread: draining a
    // body the edge refused would be work for the refused.
    if failure.kind.ends_connection() || !(session.is_body_done() || session.is_body_empty()) {
        session.set_keepalive(None);
    }
    let end = body.is_empty();
    if session
        .write_response_header(Box::new(header), end)
        .await
        .is_err()
        || (!end && session.write_response_body(Some(body), true).await.is_err())
    {
        return 0;
    }
    status
}

/// `WWW-Authenticate` for a 401 (RFC 6750): `invalid_token` with the
/// reason when a token was sent.
fn challenge(failure: &Failure) -> Option<String> {
    match failure.kind {
        ErrorKind::Unauthenticated => Some("Bearer realm=\"preview\"".into()),
        ErrorKind::InvalidToken => Some(format!(
            "Bearer realm=\"preview\", error=\"invalid_token\", error_description=\"{}\"",
            failure.message.replace(['"', '\\'], "")
        )),
        _ => None,
    }
}

/// A response of the edge's own: a redirect or a short page, with cookies.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub cookies: Vec<String>,
    /// Content type and body.
    pub body: Option<(&'static str, Bytes)>,
    /// `no-store` unless said otherwise.
    pub cache_control: &'static str,
}

pub fn redirect_reply(location: String, cookies: Vec<String>) -> Reply {
    Reply {
        status: 302,
        location: Some(location),
        cookies,
        body: None,
        cache_control: "no-store",
    }
}

/// Writes one of the edge's own responses (sign-in redirects, the
/// signed-out page, the identity token's keys).
pub async fn own_response(session: &mut Session, reply: &Reply, request_id: &str) {
    let Ok(mut header) = ResponseHeader::build(reply.status, Some(6)) else {
        return;
    };
    if let Some(location) = &reply.location {
        let _ = header.insert_header("location", location);
    }
    for cookie in &reply.cookies {
        let _ = header.append_header("set-cookie", cookie);
    }
    let body = match &reply.body {
        Some((content_type, body)) => {
            let _ = header.insert_header("content-type", *content_type);
            body.clone()
        }
        None => Bytes::new(),
    };
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", reply.cache_control);
    let _ = header.insert_header("x-request-id", request_id);
    if session
        .write_response_header(Box::new(header), body.is_empty())
        .await
        .is_ok()
        && !body.is_empty()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

/// Writes a 308 Permanent Redirect to `location`.
pub async fn redirect(session: &mut Session, location: &str, request_id: &str) {
    let Ok(mut header) = ResponseHeader::build(308, Some(4)) else {
        return;
    };
    let _ = header.insert_header("location", location);
    let _ = header.insert_header("content-length", "0");
    let _ = header.insert_header("x-request-id", request_id);
    let _ = session.write_response_header(Box::new(header), true).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_documented_shape() {
        let body = body(&Failure::new(ErrorKind::RouteNotFound), "abc");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "ROUTE_NOT_FOUND");
        assert_eq!(v["error"]["request_id"], "abc");
        assert!(v["error"]["message"].as_str().unwrap().len() > 3);
        assert_eq!(v["error"]["status"], 404);
        assert_eq!(v["error"]["hop"], "edge");
    }

    fn request(accept: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("accept", accept).unwrap();
        req
    }

    #[test]
    fn each_client_gets_its_format_with_the_same_facts() {
        let browser = request("text/html,application/xhtml+xml,*/*;q=0.8");
        assert_eq!(Format::of(&browser, false), Format::Html);
        assert_eq!(Format::of(&browser, true), Format::Grpc);
        assert_eq!(
            Format::of(&request("application/json"), false),
            Format::Json
        );
        assert_eq!(Format::of(&request("*/*"), false), Format::Json);

        let mut failure = Failure::with(ErrorKind::Forbidden, "<script>alert(1)</script>");
        failure.hop = super::super::failure::Hop::Sidecar;
        let (header, page) = render(&failure, "req-1", Format::Html);
        assert_eq!(header.status, 403);
        assert_eq!(header.headers["x-request-id"], "req-1");
        assert_eq!(header.headers["content-length"], page.len().to_string());
        let page = std::str::from_utf8(&page).unwrap();
        assert!(page.contains("403 Forbidden"), "{page}");
        assert!(
            page.contains("<code>FORBIDDEN</code> at the sidecar"),
            "{page}"
        );
        assert!(page.contains("<code>req-1</code>"), "{page}");
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));

        let (header, body) = render(&failure, "req-1", Format::Grpc);
        assert_eq!(header.status, 200);
        assert!(body.is_empty());
        assert_eq!(header.headers["grpc-status"], "7");
        assert_eq!(header.headers["x-request-id"], "req-1");
    }

    #[test]
    fn limit_refusals_say_when_to_retry() {
        let mut failure = Failure::new(ErrorKind::RateLimited);
        failure.refusal = Some(Box::new(super::super::failure::Refusal {
            retry_after: 3,
            policy: "\"cluster\";q=1000;w=60".into(),
            state: "\"cluster\";r=0;t=3".into(),
        }));
        for format in [Format::Json, Format::Html, Format::Grpc] {
            let (header, _) = render(&failure, "r", format);
            assert_eq!(header.headers["retry-after"], "3");
            assert_eq!(
                header.headers["ratelimit-policy"],
                "\"cluster\";q=1000;w=60"
            );
            assert_eq!(header.headers["ratelimit"], "\"cluster\";r=0;t=3");
        }
        assert_eq!(
            render(&failure, "r", Format::Grpc).0.headers["grpc-status"],
            "8"
        );
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        let failure = Failure::with(ErrorKind::TunnelUnavailable, "100% gone\n");
        assert_eq!(
            grpc_message(&failure, "r1"),
            "TUNNEL_UNAVAILABLE: 100%25 gone%0A (request id r1)"
        );
        assert_eq!(ErrorKind::RouteNotFound.grpc_status(), 12);
        assert_eq!(ErrorKind::UpstreamTimeout.grpc_status(), 14);
    }
}
