//! What went wrong, as a visitor sees it: an [`ErrorKind`] (which fixes
//! the HTTP status, the gRPC status and the code in the error body) with a
//! message, from a routing miss, a tunnel error, or whatever Pingora reports.
//! Writing it as a response is `errors`'s job.

use pingora_error::{Error, ErrorSource, ErrorType};

use crate::http::visitor::HeadError;
use crate::routing::host::HostError;
use crate::tunnel::connector::TunnelError;
use crate::tunnel::registry::RouteError;

/// Which hop of the way failed: the visitor's request itself, the edge,
/// the tunnel between edge and sidecar, the sidecar, or the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Visitor,
    Edge,
    Tunnel,
    Sidecar,
    Service,
}

impl Hop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visitor => "visitor",
            Self::Edge => "edge",
            Self::Tunnel => "tunnel",
            Self::Sidecar => "sidecar",
            Self::Service => "service",
        }
    }
}

/// Declares [`ErrorKind`] and [`ALL_KINDS`] from one list, so no kind can
/// be missing from the list the documented table is checked against.
macro_rules! error_kinds {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// What went wrong, as a visitor sees it. The table in
        /// `docs/errors.md` lists every kind; a test keeps the two the same.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorKind {
            $($(#[$doc])* $name,)*
        }

        /// Every kind, in declaration order (the documented table's).
        pub const ALL_KINDS: &[ErrorKind] = &[$(ErrorKind::$name,)*];
    };
}

error_kinds! {
    BadRequest,
    /// No identity where the route needs one.
    Unauthenticated,
    /// A bearer token was sent and did not verify.
    InvalidToken,
    /// An identity the route does not admit.
    Forbidden,
    RouteNotFound,
    /// A method the edge does not proxy (`CONNECT`).
    MethodNotAllowed,
    /// The visitor took too long to send its request head.
    RequestTimeout,
    /// A body larger than the route allows.
    BodyTooLarge,
    UriTooLong,
    /// Too many header fields, or too many bytes of them.
    HeadersTooLarge,
    /// Over a rate limit.
    RateLimited,
    /// Over a cap on requests in flight at once.
    ConcurrencyLimited,
    /// Shared limits cannot be checked (Redis unreachable, `on_failure:
    /// closed`).
    LimitsUnavailable,
    TunnelUnavailable,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamError,
    /// The route's wasm filter crashed, ran too long or grew too large.
    FilterFailed,
    /// The identity provider could not be reached or refused a sign-in.
    IdentityProvider,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthenticated | Self::InvalidToken => 401,
            Self::Forbidden => 403,
            Self::RouteNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::BodyTooLarge => 413,
            Self::UriTooLong => 414,
            Self::RateLimited | Self::ConcurrencyLimited => 429,
            Self::HeadersTooLarge => 431,
            Self::TunnelUnavailable | Self::LimitsUnavailable => 503,
            Self::UpstreamUnreachable | Self::UpstreamError | Self::IdentityProvider => 502,
            Self::UpstreamTimeout => 504,
            Self::FilterFailed | Self::Internal => 500,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::InvalidToken => "INVALID_TOKEN",
            Self::Forbidden => "FORBIDDEN",
            Self::RouteNotFound => "ROUTE_NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::BodyTooLarge => "BODY_TOO_LARGE",
            Self::UriTooLong => "URI_TOO_LONG",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::ConcurrencyLimited => "CONCURRENCY_LIMITED",
            Self::LimitsUnavailable => "LIMITS_UNAVAILABLE",
            Self::TunnelUnavailable => "TUNNEL_UNAVAILABLE",
            Self::UpstreamUnreachable => "UPSTREAM_UNREACHABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::UpstreamError => "UPSTREAM_ERROR",
            Self::FilterFailed => "FILTER_FAILED",
            Self::IdentityProvider => "IDENTITY_PROVIDER_ERROR",
            Self::Internal => "INTERNAL",
        }
    }

    /// The gRPC status for the same situation, as gRPC's HTTP-to-gRPC
    /// mapping would derive it from [`Self::status`], except where gRPC
    /// has a closer one (`RESOURCE_EXHAUSTED` for limits).
    pub fn grpc_status(self) -> u32 {
        match self {
            Self::RouteNotFound | Self::MethodNotAllowed => 12, // UNIMPLEMENTED
            Self::Unauthenticated | Self::InvalidToken => 16,   // UNAUTHENTICATED
            Self::Forbidden => 7,                               // PERMISSION_DENIED
            Self::RateLimited | Self::ConcurrencyLimited => 8,  // RESOURCE_EXHAUSTED
            Self::BodyTooLarge | Self::UriTooLong | Self::HeadersTooLarge => 8,
            Self::RequestTimeout => 4, // DEADLINE_EXCEEDED
            Self::TunnelUnavailable
            | Self::LimitsUnavailable
            | Self::UpstreamUnreachable
            | Self::UpstreamError
            | Self::UpstreamTimeout
            | Self::IdentityProvider => 14, // UNAVAILABLE
            Self::BadRequest | Self::FilterFailed | Self::Internal => 13, // INTERNAL
        }
    }

    /// The hop that failed, unless the failure knows better (a sidecar
    /// refusing a target it may not dial).
    pub fn hop(self) -> Hop {
        match self {
            Self::BadRequest
            | Self::Unauthenticated
            | Self::InvalidToken
            | Self::Forbidden
            | Self::MethodNotAllowed
            | Self::RequestTimeout
            | Self::BodyTooLarge
            | Self::UriTooLong
            | Self::HeadersTooLarge
            | Self::RateLimited
            | Self::ConcurrencyLimited => Hop::Visitor,
            Self::RouteNotFound
            | Self::LimitsUnavailable
            | Self::FilterFailed
            | Self::IdentityProvider
            | Self::Internal => Hop::Edge,
            Self::TunnelUnavailable => Hop::Tunnel,
            Self::UpstreamUnreachable | Self::UpstreamTimeout | Self::UpstreamError => Hop::Service,
        }
    }

    /// Whether the connection closes after this refusal. A request the
    /// edge could not read or will not read the rest of (its head, its
    /// body, its method) leaves the connection in doubt; one refused for
    /// who sent it or what it asked for does not, and a client held back
    /// by a limit should not pay for a new connection on top (the answer
    /// would come sooner than the next try).
    pub fn ends_connection(self) -> bool {
        matches!(
            self,
            Self::BadRequest
                | Self::MethodNotAllowed
                | Self::RequestTimeout
                | Self::BodyTooLarge
                | Self::UriTooLong
                | Self::HeadersTooLarge
                | Self::FilterFailed
                | Self::Internal
        )
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::BadRequest => "the request is malformed",
            Self::Unauthenticated => "this preview needs a sign-in: send a bearer token or sign in",
            Self::InvalidToken => "the bearer token was refused",
            Self::Forbidden => "this identity may not use this preview",
            Self::RouteNotFound => "no route for this host",
            Self::MethodNotAllowed => "the edge does not proxy this method",
            Self::RequestTimeout => "the request head did not arrive in time",
            Self::BodyTooLarge => "the request body is larger than this route allows",
            Self::UriTooLong => "the request target is too long",
            Self::HeadersTooLarge => "the request's header fields are too many or too large",
            Self::RateLimited => "too many requests: slow down",
            Self::ConcurrencyLimited => "too many requests in progress at once",
            Self::LimitsUnavailable => "the shared limits cannot be checked now: retry shortly",
            Self::TunnelUnavailable => "the service's tunnel is not connected",
            Self::UpstreamUnreachable => "the service could not be reached",
            Self::UpstreamTimeout => "the service did not answer in time",
            Self::UpstreamError => "the service's response was invalid or cut short",
            Self::FilterFailed => "the route's filter failed on this request",
            Self::IdentityProvider => "the identity provider could not be reached",
            Self::Internal => "internal error",
        }
    }
}

/// Responses the edge wrote itself, per code (for the metrics endpoint).
#[derive(Debug, Default)]
pub struct FailureCounts([std::sync::atomic::AtomicU64; ALL_KINDS.len()]);

impl FailureCounts {
    pub fn count(&self, kind: ErrorKind) {
        self.0[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind as usize].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A limit's refusal: what a 429 tells the client about when to retry
/// (`Retry-After`) and which quota it hit (`RateLimit-Policy`, `RateLimit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Whole seconds until a retry can succeed (at least 1).
    pub retry_after: u64,
    /// `RateLimit-Policy`'s value.
    pub policy: String,
    /// `RateLimit`'s value.
    pub state: String,
}

/// An error kind with the message shown to the visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
    pub hop: Hop,
    /// Set on limit refusals.
    pub refusal: Option<Box<Refusal>>,
    /// Set when no tunnel of this environment is connected here.
    pub environment: Option<Box<str>>,
}

impl Failure {
    pub fn new(kind: ErrorKind) -> Self {
        Self::with(kind, kind.default_message())
    }

    pub fn with(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hop: kind.hop(),
            refusal: None,
            environment: None,
        }
    }

    pub fn at(mut self, hop: Hop) -> Self {
        self.hop = hop;
        self
    }
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Self {
        match e {
            HostError::NotFound => Failure::new(ErrorKind::RouteNotFound),
            HostError::Missing | HostError::Malformed => {
                Failure::with(ErrorKind::BadRequest, e.to_string())
            }
        }
    }
}

impl From<RouteError> for Failure {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound => Failure::new(ErrorKind::RouteNotFound),
            RouteError::Unavailable(environment) => Failure {
                environment: Some(environment.into()),
                ..Failure::new(ErrorKind::TunnelUnavailable)
            },
        }
    }
}

impl From<&TunnelError> for Failure {
    fn from(e: &TunnelError) -> Self {
        use tunnel_proto::ErrorCode;
        match e {
            TunnelError::NoStream(_) | TunnelError::Broken => {
                Failure::new(ErrorKind::TunnelUnavailable)
            }
            TunnelError::ConnectTimeout(_) => Failure::new(ErrorKind::UpstreamTimeout),
            TunnelError::Target {
                code: ErrorCode::Timeout,
                ..
            } => Failure::new(ErrorKind::UpstreamTimeout),
            // The sidecar would not dial it: its allowlist, not the service.
            TunnelError::Target {
                code: ErrorCode::Denied | ErrorCode::UnsupportedVersion | ErrorCode::Internal,
                ..
            } => Failure::with(
                ErrorKind::UpstreamUnreachable,
                "the sidecar refused to connect to this service",
            )
            .at(Hop::Sidecar),
            TunnelError::Target { .. } => Failure::new(ErrorKind::UpstreamUnreachable),
        }
    }
}

/// What a request head that could not be read is answered with: 408 for
/// one too slow, 431 for one too large, 400 for one that does not parse;
/// nothing for a connection that broke.
pub fn unreadable(e: &Error) -> Option<Failure> {
    let cause = e.root_cause();
    if let Some(head) = cause
        .downcast_ref::<std::io::Error>()
        .and_then(crate::http::visitor::HeadError::of)
    {
        return Some(match head {
            HeadError::Timeout => Failure::new(ErrorKind::RequestTimeout),
            HeadError::TooLarge(_) => Failure::with(ErrorKind::HeadersTooLarge, head.to_string()),
        });
    }
    if e.etype() != &ErrorType::InvalidHTTPHeader {
        return None;
    }
    if let Some(httparse::Error::TooManyHeaders) = cause.downcast_ref::<httparse::Error>() {
        return Some(Failure::with(
            ErrorKind::HeadersTooLarge,
            "more header fields than the edge parses",
        ));
    }
    let detail = e
        .context
        .as_ref()
        .map(|c| c.as_str())
        .unwrap_or("malformed");
    Some(Failure::with(
        ErrorKind::BadRequest,
        format!("the request head is malformed ({detail})"),
    ))
}

/// Classifies an error pingora reports while proxying.
pub fn classify(e: &Error) -> Failure {
    if let Some(tunnel) = e.root_cause().downcast_ref::<TunnelError>() {
        return tunnel.into();
    }
    use ErrorType::*;
    let kind = match (e.etype(), e.esource()) {
        (HTTPStatus(413), _) => ErrorKind::BodyTooLarge,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::registry::TakeError;

    /// `docs/errors.md` has one row per kind, in order, with the status,
    /// gRPC status and hop the code gives it: the table operators read is
    /// the code's.
    #[test]
    fn the_documented_table_is_the_code() {
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/errors.md"),
        )
        .unwrap();
        let rows: Vec<Vec<String>> = docs
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
            .collect();
        assert_eq!(rows.len(), ALL_KINDS.len(), "one row per error kind");
        for (kind, row) in ALL_KINDS.iter().zip(&rows) {
            assert_eq!(row[1], format!("`{}`", kind.code()), "{kind:?}");
            assert_eq!(row[2], kind.status().to_string(), "{kind:?}");
            assert!(
                row[3].starts_with(&format!("{} ", kind.grpc_status())),
                "{kind:?}: gRPC {} in {:?}",
                kind.grpc_status(),
                row[3]
            );
            assert_eq!(row[4], kind.hop().as_str(), "{kind:?}");
        }
        let codes: std::collections::HashSet<_> = ALL_KINDS.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ALL_KINDS.len(), "codes are unique");
        for kind in ALL_KINDS {
            let message = Failure::new(*kind).message;
            assert!(message.len() > 10 && !message.ends_with('.'), "{kind:?}");
        }
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
