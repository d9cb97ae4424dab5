//! Errors become HTTP responses here and nowhere else (and so does the one
//! other response the edge writes itself: the redirect to HTTPS).
//!
//! Every error response has the same JSON shape
//! `{"error":{"code":"…","message":"…","request_id":"…"}}` and carries
//! `X-Request-Id`.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::context::RequestCtx;
use super::failure::{ErrorKind, Failure};

/// The JSON body of an error response.
pub fn body(failure: &Failure, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "code": failure.kind.code(),
            "message": failure.message,
            "request_id": request_id,
        }
    });
    Bytes::from(body.to_string())
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

/// Writes a gRPC "trailers-only" error: HTTP 200 with `grpc-status` and
/// `grpc-message`, as gRPC clients expect from a proxy.
async fn respond_grpc(session: &mut Session, failure: &Failure, request_id: &str) -> u16 {
    let Ok(mut header) = ResponseHeader::build(200, Some(5)) else {
        return 0;
    };
    let _ = header.insert_header("content-type", "application/grpc");
    let _ = header.insert_header("grpc-status", failure.kind.grpc_status().to_string());
    let _ = header.insert_header("grpc-message", grpc_message(failure, request_id));
    let _ = header.insert_header("x-request-id", request_id);
    session.set_keepalive(None);
    match session.write_response_header(Box::new(header), true).await {
        Ok(()) => 200,
        Err(_) => 0,
    }
}

/// Writes the error response: a gRPC status to a gRPC call, JSON to
/// anything else. Returns the status written. A response already under way
/// is not touched: the connection closes (no keep-alive), so the visitor
/// sees it cut short rather than an error spliced into it.
pub async fn respond(session: &mut Session, failure: &Failure, ctx: &RequestCtx) -> u16 {
    let request_id = ctx.id.as_str();
    if let Some(status) = session.response_written().map(|r| r.status.as_u16()) {
        session.set_keepalive(None);
        return status;
    }
    if ctx.grpc {
        return respond_grpc(session, failure, request_id).await;
    }
    let status = failure.kind.status();
    let body = body(failure, request_id);
    let mut header = match ResponseHeader::build(status, Some(4)) {
        Ok(h) => h,
        Err(_) => return 0,
    };
    let _ = header.insert_header("content-type", "application/json");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("x-request-id", request_id);
    let _ = header.insert_header("cache-control", "no-store");
    if failure.kind == ErrorKind::TunnelUnavailable {
        let _ = header.insert_header("retry-after", "5");
    }
    if let Some(challenge) = challenge(failure) {
        let _ = header.insert_header("www-authenticate", challenge);
    }
    session.set_keepalive(None);
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
        || session.write_response_body(Some(body), true).await.is_err()
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
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        let failure = Failure {
            kind: ErrorKind::TunnelUnavailable,
            message: "100% gone\n".into(),
        };
        assert_eq!(
            grpc_message(&failure, "r1"),
            "TUNNEL_UNAVAILABLE: 100%25 gone%0A (request id r1)"
        );
        assert_eq!(ErrorKind::RouteNotFound.grpc_status(), 12);
        assert_eq!(ErrorKind::UpstreamTimeout.grpc_status(), 14);
    }
}
