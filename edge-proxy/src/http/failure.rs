//! What went wrong, as a visitor sees it: an [`ErrorKind`] (which fixes
//! the HTTP status, the gRPC status and the code in the error body) with a
//! message, from a routing miss, a tunnel error, or whatever Pingora reports.
//! Writing it as a response is `errors`'s job.

use pingora_error::{Error, ErrorSource, ErrorType};

use crate::routing::host::HostError;
use crate::tunnel::connector::TunnelError;
use crate::tunnel::registry::{RouteError, TakeError};

/// What went wrong, as a visitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    /// No identity where the route needs one.
    Unauthenticated,
    /// A bearer token was sent and did not verify.
    InvalidToken,
    /// An identity the route does not admit.
    Forbidden,
    RouteNotFound,
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
            Self::TunnelUnavailable => 503,
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
    /// mapping would derive it from [`Self::status`].
    pub fn grpc_status(self) -> u32 {
        match self {
            Self::RouteNotFound => 12,                        // UNIMPLEMENTED
            Self::Unauthenticated | Self::InvalidToken => 16, // UNAUTHENTICATED
            Self::Forbidden => 7,                             // PERMISSION_DENIED
            Self::TunnelUnavailable
            | Self::UpstreamUnreachable
            | Self::UpstreamError
            | Self::UpstreamTimeout
            | Self::IdentityProvider => 14, // UNAVAILABLE
            Self::BadRequest | Self::FilterFailed | Self::Internal => 13, // INTERNAL
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::BadRequest => "the request is malformed",
            Self::Unauthenticated => "this preview needs a sign-in: send a bearer token or sign in",
            Self::InvalidToken => "the bearer token was refused",
            Self::Forbidden => "this identity may not use this preview",
            Self::RouteNotFound => "no route for this host",
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

#[cfg(test)]
mod tests {
    use super::*;

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
