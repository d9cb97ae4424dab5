//! Visitor authentication through the request context: after routing, the
//! bearer token (if any) is verified, else the session cookie is read, and
//! the route's access rule decides ([`check`]); on the way upstream the
//! visitor's credentials (its `Authorization`, the edge's cookies) and any
//! identity headers it sent are removed and the edge's own are added
//! ([`to_service`]).
//!
//! A token is read only from `Authorization: Bearer`, never from the query
//! string (where logs and `Referer` keep it).

use http::HeaderName;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::context::RequestCtx;
use super::failure::{ErrorKind, Failure};
use super::login;
use crate::auth::access::{Decision, Owners};
use crate::auth::session::Revocations;
use crate::auth::Level;
use crate::config::EdgeConfig;

/// Identity headers a visitor sends are removed, so they cannot be spoofed.
const SPOOFABLE_PREFIX: &str = "x-auth-request-";

/// Verifies the request's bearer token, if any, else reads its session
/// cookie, and applies the target's access rule. A token that fails is
/// refused even on a public route (the visitor meant to be someone); a
/// cookie that fails counts as none (the browser is sent to sign in).
pub async fn check(
    session: &Session,
    ctx: &mut RequestCtx,
    config: &EdgeConfig,
    revocations: &Revocations,
) -> Result<(), Failure> {
    let (Some(auth), Some(access)) = (
        config.auth.as_ref(),
        ctx.target.as_ref().and_then(|t| t.access.clone()),
    ) else {
        return Ok(());
    };
    let req = session.req_header();
    if let Some(token) = bearer(req)? {
        let verified =
            crate::idp::verify(&auth.verifier, &auth.remote_keys, &auth.http, token).await;
        match verified {
            Ok(identity) => ctx.identity = Some(identity),
            Err(e) => return Err(Failure::with(ErrorKind::InvalidToken, e.to_string())),
        }
    } else if auth.login.is_some() {
        ctx.identity = login::identity(req, ctx, &auth.session, revocations);
    }
    let owners = match ctx.target.as_ref() {
        Some(t) if access.level >= Level::Shared => Owners {
            organization: auth
                .organizations
                .get(&t.service.environment)
                .map(String::as_str),
            owner: t.session.requested.owner.as_deref(),
            admins: Some(&auth.admins),
        },
        _ => Owners::default(),
    };
    match access.decide(ctx.identity.as_deref(), &owners) {
        Decision::Allow => Ok(()),
        Decision::Unauthenticated => Err(Failure::new(ErrorKind::Unauthenticated)),
        Decision::Forbidden => Err(Failure::new(ErrorKind::Forbidden)),
    }
}

/// The bearer token, if the request carries one; a malformed or repeated
/// `Authorization` is refused rather than guessed at.
fn bearer(req: &RequestHeader) -> Result<Option<&str>, Failure> {
    let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |message: &str| Failure::with(ErrorKind::InvalidToken, message);
    if values.next().is_some() {
        return Err(invalid("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| invalid("the Authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                return Err(invalid("an empty bearer token"));
            }
            Ok(Some(token))
        }
        // Another scheme (Basic, ...) is the service's business on a route
        // that needs no identity; where one is needed it does not count.
        _ => Ok(None),
    }
}

/// What the service learns about the visitor: the visitor's own
/// `Authorization` is removed unless the route passes it on, identity
/// headers the visitor sent are removed, and the edge's are added.
pub fn to_service(upstream: &mut RequestHeader, ctx: &RequestCtx, config: &EdgeConfig) {
    // An access rule is in force exactly when `auth:` is configured.
    let Some(access) = ctx.target.as_ref().and_then(|t| t.access.as_ref()) else {
        return;
    };
    let pass = access.pass_authorization;
    if !pass {
        let _ = upstream.remove_header(&http::header::AUTHORIZATION);
    }
    let spoofed: Vec<HeaderName> = (upstream.headers.keys())
        .filter(|n| n.as_str().starts_with(SPOOFABLE_PREFIX))
        .cloned()
        .collect();
    for name in &spoofed {
        let _ = upstream.remove_header(name);
    }
    if let Some(auth) = config.auth.as_ref().filter(|a| a.login.is_some()) {
        login::strip_own_cookies(upstream, &auth.session);
    }
    if let Some(who) = &ctx.identity {
        for (name, value) in &who.headers {
            let _ = upstream.insert_header(name.clone(), value.clone());
        }
    }
    let assertions = config.auth.as_ref().and_then(|a| a.assertions.as_ref());
    if let Some(assertions) = assertions {
        // Never the visitor's own.
        let _ = upstream.remove_header(&assertions.header);
        if let (Some(who), Ok(host)) = (&ctx.identity, ctx.host.name()) {
            let token = assertions.token(who, host, crate::auth::now());
            let _ = upstream.insert_header(assertions.header.clone(), token);
        }
    }
}
