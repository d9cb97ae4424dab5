//! Errors become HTTP responses here and nowhere else (and so does the one
//! other response the edge writes itself: the redirect to HTTPS).
//!
//! Every error response has the same JSON shape
//! `{"error":{"code":"…","message":"…","request_id":"…"}}` and carries
//! `X-Request-Id`.

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::connector::TunnelError;
use crate::preview::HostError;
use crate::registry::{RouteError, TakeError};

/// What went wrong, as a visitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    RouteNotFound,
    TunnelUnavailable,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamError,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::RouteNotFound => 404,
            Self::TunnelUnavailable => 503,
            Self::UpstreamUnreachable | Self::UpstreamError => 502,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::RouteNotFound => "ROUTE_NOT_FOUND",
            Self::TunnelUnavailable => "TUNNEL_UNAVAILABLE",
            Self::UpstreamUnreachable => "UPSTREAM_UNREACHABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::UpstreamError => "UPSTREAM_ERROR",
            Self::Internal => "INTERNAL",
        }
    }

    /// The gRPC status for the same situation, as gRPC's HTTP-to-gRPC
    /// mapping would derive it from [`Self::status`].
    pub fn grpc_status(self) -> u32 {
        match self {
            Self::RouteNotFound => 12, // UNIMPLEMENTED
            Self::TunnelUnavailable
            | Self::UpstreamUnreachable
            | Self::UpstreamError
            | Self::UpstreamTimeout => 14, // UNAVAILABLE
            Self::BadRequest | Self::Internal => 13, // INTERNAL
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::BadRequest => "the request is malformed",
            Self::RouteNotFound => "no route for this host",
            Self::TunnelUnavailable => "the service's tunnel is not connected",
            Self::UpstreamUnreachable => "the service could not be reached",
            Self::UpstreamTimeout => "the service did not answer in time",
            Self::UpstreamError => "the service's response was invalid or cut short",
            Self::Internal => "internal error",
        }
    }
}

/// An error kind with the message shown to the visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            message: kind.default_message().to_string(),
        }
    }
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Self {
        match e {
            HostError::NotFound => Failure::new(ErrorKind::RouteNotFound),
            HostError::Missing | HostError::Malformed => Failure {
                kind: ErrorKind::BadRequest,
                message: e.to_string(),
            },
        }
    }
}

impl From<RouteError> for Failure {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound => Failure::new(ErrorKind::RouteNotFound),
            RouteError::Unavailable(_) => Failure::new(ErrorKind::TunnelUnavailable),
        }
    }
}

impl From<&TunnelError> for Failure {
    fn from(e: &TunnelError) -> Self {
        use tunnel_proto::ErrorCode;
        let kind = match e {
            TunnelError::NoStream(TakeError::Closed) | TunnelError::Broken => {
                ErrorKind::TunnelUnavailable
            }
            TunnelError::NoStream(TakeError::Timeout) => ErrorKind::TunnelUnavailable,
            TunnelError::ConnectTimeout(_) => ErrorKind::UpstreamTimeout,
            TunnelError::Target {
                code: ErrorCode::Timeout,
                ..
            } => ErrorKind::UpstreamTimeout,
            TunnelError::Target { .. } => ErrorKind::UpstreamUnreachable,
        };
        Failure::new(kind)
    }
}

/// Classifies an error pingora reports while proxying.
pub fn classify(e: &Error) -> Failure {
    if let Some(tunnel) = e.root_cause().downcast_ref::<TunnelError>() {
        return tunnel.into();
    }
    use ErrorType::*;
    let kind = match (e.etype(), e.esource()) {
        (HTTPStatus(400..=499), _) => ErrorKind::BadRequest,
        (
            ConnectTimedout | ReadTimedout | WriteTimedout,
            ErrorSource::Upstream | ErrorSource::Unset,
        ) => ErrorKind::UpstreamTimeout,
        (ConnectRefused | ConnectNoRoute | ConnectError, _) => ErrorKind::UpstreamUnreachable,
        (_, ErrorSource::Upstream) => ErrorKind::UpstreamError,
        (_, ErrorSource::Downstream) => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    };
    Failure::new(kind)
}

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

/// Whether a request is a gRPC call: its errors are gRPC statuses, not JSON.
pub fn is_grpc(req: &pingora_http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
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

/// Writes the error response. Returns the status written. A response
/// already under way is not touched: the connection closes (no keep-alive),
/// so the visitor sees it cut short rather than an error spliced into it.
pub async fn respond(session: &mut Session, failure: &Failure, request_id: &str) -> u16 {
    if let Some(status) = session.response_written().map(|r| r.status.as_u16()) {
        session.set_keepalive(None);
        return status;
    }
    if is_grpc(session.req_header()) {
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

    #[test]
    fn tunnel_errors_map_to_honest_statuses() {
        let refused = TunnelError::Target {
            code: tunnel_proto::ErrorCode::Refused,
            message: "x".into(),
        };
        assert_eq!(Failure::from(&refused).kind.status(), 502);
        assert_eq!(
            Failure::from(&TunnelError::ConnectTimeout(Default::default()))
                .kind
                .status(),
            504
        );
        assert_eq!(
            Failure::from(&TunnelError::NoStream(TakeError::Closed))
                .kind
                .status(),
            503
        );
        let e = Error::because(ErrorType::ConnectError, "ctx", refused);
        assert_eq!(classify(&e).kind, ErrorKind::UpstreamUnreachable);
        let mut timeout = Error::new(ErrorType::ReadTimedout);
        timeout.as_up();
        assert_eq!(classify(&timeout).kind, ErrorKind::UpstreamTimeout);
    }
}
