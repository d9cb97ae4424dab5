//! Browser sign-in: the session cookie as an identity, the redirect to
//! sign in, and the edge's own endpoints under `/.edge/`.
//!
//! One sign-in host (`auth.login.url`) talks to the OpenID provider; each
//! preview host gets its own host-only cookie, handed over in one redirect
//! with a sealed, one-time, one-minute ticket:
//!
//! ```text
//! preview host  GET /page              → 302 <login>/.edge/login?rd=<page>
//! sign-in host  GET /.edge/login       → 302 provider (state, nonce, PKCE)
//! provider      sign-in                → 302 <login>/.edge/callback?code&state
//! sign-in host  GET /.edge/callback    → code exchanged, ID token checked,
//!                                        its own cookie set,
//!                                        302 <preview>/.edge/session?ticket
//! preview host  GET /.edge/session     → its cookie set, 302 <page>
//! ```
//!
//! The next preview's first visit finds the sign-in host's cookie and skips
//! the provider. `/.edge/logout` on any host ends the sign-in everywhere
//! (every cookie of one sign-in shares its `sid`).

use std::sync::Arc;

use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::context::RequestCtx;
use super::errors::{self, redirect_reply as redirect, Reply};
use super::failure::{ErrorKind, Failure};
use crate::auth::session::{
    self, CookieValue, Freshness, LoginState, Opened, Purpose, Revocations, Ticket,
};
use crate::auth::{self, Identity};
use crate::config::auth::{AuthSettings, Login, SessionSettings};
use crate::config::EdgeConfig;
use crate::shared::{self, Ended};
use crate::tunnel::registry::TunnelRegistry;

/// The paths the edge answers itself on every host, with `auth.login`.
pub const PREFIX: &str = "/.edge/";
const LOGIN: &str = "/.edge/login";
const CALLBACK: &str = "/.edge/callback";
const SESSION: &str = "/.edge/session";
const LOGOUT: &str = "/.edge/logout";
/// The identity token's keys, on every host (with `auth:`).
pub const JWKS: &str = "/.well-known/jwks.json";

/// A sealed session bigger than this does not fit in a cookie next to
/// the service's own.
const MAX_COOKIE_VALUE: usize = 3800;

/// Claims of an ID token not kept in the session (they describe the
/// token, not the person, or are kept as fields).
const TOKEN_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "at_hash",
    "c_hash",
    "auth_time",
    "azp",
    "sid",
    "jti",
    "acr",
    "amr",
    "email",
];

/// The identity the request's session cookie proves on this host, if it
/// proves one; a cookie due for its sliding refresh is rewritten
/// ([`RequestCtx::set_cookie`]).
pub fn identity(
    req: &RequestHeader,
    ctx: &mut RequestCtx,
    settings: &SessionSettings,
    revocations: &Revocations,
) -> Option<Arc<Identity>> {
    let opened = opened(req, ctx, settings, revocations)?;
    let now = auth::now();
    if opened.session.freshness(now, settings.idle.as_secs()) == Freshness::Refresh {
        let mut refreshed = opened.session.clone();
        refreshed.seen = now;
        ctx.set_cookie = Some(session_cookie(settings, &refreshed, ctx.tls.is_some()));
    }
    Some(opened.identity.clone())
}

/// The request's session cookie, opened and valid for this host now.
fn opened(
    req: &RequestHeader,
    ctx: &RequestCtx,
    settings: &SessionSettings,
    revocations: &Revocations,
) -> Option<Arc<Opened>> {
    let cookies = req.headers.get_all(http::header::COOKIE);
    let CookieValue::One(value) =
        session::cookie(cookies.iter().map(|v| v.as_bytes()), &settings.cookie)
    else {
        return None;
    };
    let now = auth::now();
    let opened = match settings.cache.get(value, now) {
        Some(hit) => hit,
        None => {
            let session: session::Session = settings.sealer.open(Purpose::Session, value).ok()?;
            let until = session
                .expires
                .min(session.seen.saturating_add(settings.idle.as_secs()));
            let opened = Arc::new(Opened {
                identity: Arc::new(session.identity()),
                session,
            });
            settings.cache.insert(value, opened.clone(), until, now);
            opened
        }
    };
    let valid = ctx.host.name().is_ok_and(|h| h == opened.session.host)
        && opened.session.freshness(now, settings.idle.as_secs()) != Freshness::Expired
        && !revocations.is_ended(&opened.session.sid, now);
    valid.then_some(opened)
}

/// Where to send a browser that needs to sign in: its own address, back
/// after the sign-in. Only for a page load (`GET`/`HEAD` accepting HTML);
/// an API client gets its 401.
pub fn sign_in_redirect(
    req: &RequestHeader,
    ctx: &RequestCtx,
    config: &EdgeConfig,
    failure: &Failure,
) -> Option<String> {
    let login = config.auth.as_ref()?.login.as_ref()?;
    let browser =
        matches!(req.method, http::Method::GET | http::Method::HEAD) && errors::accepts_html(req);
    if failure.kind != ErrorKind::Unauthenticated || !browser || ctx.grpc {
        return None;
    }
    let here = format!(
        "{}://{}{}",
        scheme(ctx),
        ctx.host.sent()?,
        req.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    Some(format!("{}{LOGIN}?rd={}", login.url, encode(&here)))
}

fn scheme(ctx: &RequestCtx) -> &'static str {
    if ctx.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A query parameter's value (the first), decoded.
fn param(req: &RequestHeader, name: &str) -> Option<String> {
    let query = req.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A `Set-Cookie` value for one of the edge's cookies (`HttpOnly`,
/// `SameSite=Lax`, `Secure` over HTTPS, host-only: no `Domain`).
fn cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

fn session_cookie(settings: &SessionSettings, session: &session::Session, secure: bool) -> String {
    let sealed = settings.sealer.seal(Purpose::Session, session);
    let max_age = session
        .expires
        .min(session.seen + settings.idle.as_secs())
        .saturating_sub(auth::now());
    cookie(&settings.cookie, &sealed, "/", max_age, secure)
}

/// Answers the edge's own paths (`/.edge/…`). Returns false when the
/// request is not one of them.
pub async fn endpoint(
    session: &mut Session,
    ctx: &mut RequestCtx,
    config: &EdgeConfig,
    registry: &TunnelRegistry,
    revocations: &Revocations,
    shared: &shared::InForce,
) -> bool {
    let Some(auth) = config.auth.as_deref() else {
        return false;
    };
    let path = session.req_header().uri.path();
    if path == JWKS {
        if let Some(assertions) = &auth.assertions {
            let reply = Reply {
                status: 200,
                location: None,
                cookies: Vec::new(),
                body: Some(("application/json", assertions.jwks.clone())),
                cache_control: "public, max-age=300",
            };
            errors::own_response(session, &reply, &ctx.id).await;
            return true;
        }
    }
    let Some(login) = auth.login.as_ref() else {
        return false;
    };
    if !path.starts_with(PREFIX) {
        return false;
    }
    let on_login_host = ctx.host.name().is_ok_and(|h| h == login.host);
    let outcome = match path {
        LOGIN if on_login_host => {
            let serves = |h: &str| serves(config, registry, login, h);
            start(session.req_header(), ctx, &serves, auth, login, revocations).await
        }
        CALLBACK if on_login_host => {
            let serves = |h: &str| serves(config, registry, login, h);
            callback(session.req_header(), ctx, &serves, auth, login).await
        }
        SESSION => {
            let ends = Ends::new(revocations, shared);
            handover(session.req_header(), ctx, &auth.session, &ends).await
        }
        LOGOUT => {
            let ends = Ends::new(revocations, shared);
            Ok(logout(session.req_header(), ctx, &auth.session, &ends).await)
        }
        _ => Err(Failure::with(
            ErrorKind::RouteNotFound,
            format!("{path} is not one of the edge's own paths"),
        )),
    };
    match outcome {
        Ok(reply) => {
            errors::own_response(session, &reply, &ctx.id).await;
        }
        Err(failure) => {
            errors::respond(session, &failure, ctx).await;
            ctx.failure = Some(failure);
        }
    }
    true
}

fn bad(message: &str) -> Failure {
    Failure::with(ErrorKind::BadRequest, message)
}

/// Whether this edge serves `host` (lowercase): a preview URL, a route's
/// host, or the sign-in host.
fn serves(config: &EdgeConfig, registry: &TunnelRegistry, login: &Login, host: &str) -> bool {
    host == login.host
        || config.routes.serves(host)
        || registry.claimed().serves(host)
        || crate::routing::preview::ServiceRef::from_normalized_host(host, &config.preview_domains)
            .is_ok()
}

/// `rd`, if it is an absolute http(s) address on a host this edge serves
/// (anything else would make the sign-in an open redirect), rebuilt from
/// its parsed parts, without a fragment.
pub fn return_address(rd: &str, serves: impl Fn(&str) -> bool) -> Option<url::Url> {
    let mut url = url::Url::parse(rd).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    let ok = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && serves(&host);
    url.set_fragment(None);
    ok.then_some(url)
}

/// `/.edge/login?rd=…` on the sign-in host: hand over an existing sign-in,
/// or send the browser to the provider.
async fn start(
    req: &RequestHeader,
    ctx: &RequestCtx,
    serves: &(dyn Fn(&str) -> bool + Sync),
    auth: &AuthSettings,
    login: &Login,
    revocations: &Revocations,
) -> Result<Reply, Failure> {
    let rd = param(req, "rd").unwrap_or_else(|| format!("{}/", login.url));
    let rd = return_address(&rd, serves)
        .ok_or_else(|| bad("rd is not an address on a host this edge serves"))?;
    let sessions = &auth.session;
    // The sign-in host's own cookie: signed in already.
    if let Some(existing) = opened(req, ctx, sessions, revocations) {
        return Ok(handover_redirect(
            sessions,
            &existing.session,
            &rd,
            Vec::new(),
        ));
    }
    let now = auth::now();
    let state = LoginState {
        state: sessions.sealer.random_token(),
        nonce: sessions.sealer.random_token(),
        verifier: sessions.sealer.random_token(),
        return_to: rd.to_string(),
        expires: now + session::LOGIN_SECS,
    };
    let location = login
        .provider
        .authorization_url(
            &login.redirect_uri,
            &state.state,
            &state.nonce,
            &state.verifier,
        )
        .await
        .map_err(|e| {
            tracing::warn!(request_id = %ctx.id, error = %e, "identity provider unavailable");
            Failure::new(ErrorKind::IdentityProvider)
        })?;
    let sealed = sessions.sealer.seal(Purpose::Login, &state);
    let login_cookie = cookie(
        &sessions.login_cookie,
        &sealed,
        CALLBACK,
        session::LOGIN_SECS,
        ctx.tls.is_some(),
    );
    Ok(redirect(location, vec![login_cookie]))
}

/// The provider sent the browser back: check it is this browser's sign-in,
/// trade the code for the ID token, set the sign-in host's cookie, hand
/// over to where the visitor was going.
async fn callback(
    req: &RequestHeader,
    ctx: &RequestCtx,
    serves: &(dyn Fn(&str) -> bool + Sync),
    auth: &AuthSettings,
    login: &Login,
) -> Result<Reply, Failure> {
    let sessions = &auth.session;
    let cookies = req.headers.get_all(http::header::COOKIE);
    let state: LoginState =
        match session::cookie(cookies.iter().map(|v| v.as_bytes()), &sessions.login_cookie) {
            CookieValue::One(v) => sessions.sealer.open(Purpose::Login, v).ok(),
            _ => None,
        }
        .ok_or_else(|| bad("no sign-in in progress in this browser: start again from the page"))?;
    let now = auth::now();
    if state.expires < now {
        return Err(bad("the sign-in took too long: start again from the page"));
    }
    let sent_state = param(req, "state").unwrap_or_default();
    if !same(sent_state.as_bytes(), state.state.as_bytes()) {
        return Err(bad("the sign-in's state does not match this browser's"));
    }
    if let Some(error) = param(req, "error") {
        return Err(Failure::with(
            ErrorKind::Forbidden,
            format!("the identity provider refused the sign-in: {error}"),
        ));
    }
    let code = param(req, "code").ok_or_else(|| bad("the provider sent no code"))?;
    let identity = login
        .provider
        .sign_in(&code, &login.redirect_uri, &state.verifier, &state.nonce)
        .await
        .map_err(|e| {
            tracing::warn!(request_id = %ctx.id, error = %e, "sign-in failed");
            Failure::with(
                ErrorKind::IdentityProvider,
                "the sign-in could not be completed",
            )
        })?;
    let claims = (identity.claims.iter())
        .filter(|(k, _)| !TOKEN_CLAIMS.contains(&k.as_str()))
        .cloned()
        .collect();
    let signed_in = session::Session {
        sid: sessions.sealer.random_hex(16),
        host: login.host.clone(),
        iss: identity.issuer.clone(),
        sub: identity.subject.clone(),
        email: identity.email.clone(),
        groups: identity.groups.clone(),
        orgs: identity.organizations.clone(),
        claims,
        expires: now + sessions.lifetime.as_secs(),
        seen: now,
    };
    let own = session_cookie(sessions, &signed_in, ctx.tls.is_some());
    if own.len() > MAX_COOKIE_VALUE {
        return Err(Failure::with(
            ErrorKind::IdentityProvider,
            "the identity is too large for a session cookie (too many groups?)",
        ));
    }
    let done = cookie(&sessions.login_cookie, "", CALLBACK, 0, ctx.tls.is_some());
    let rd = return_address(&state.return_to, serves)
        .ok_or_else(|| bad("the return address is no longer served here"))?;
    Ok(handover_redirect(
        sessions,
        &signed_in,
        &rd,
        vec![own, done],
    ))
}

/// To `rd`: directly when it is on the sign-in host, else through its
/// host's `/.edge/session` with a ticket.
fn handover_redirect(
    sessions: &SessionSettings,
    signed_in: &session::Session,
    rd: &url::Url,
    cookies: Vec<String>,
) -> Reply {
    let host = rd.host_str().unwrap_or_default().to_ascii_lowercase();
    if host == signed_in.host {
        return redirect(rd.to_string(), cookies);
    }
    let path = match rd.query() {
        Some(q) => format!("{}?{q}", rd.path()),
        None => rd.path().to_owned(),
    };
    let ticket = Ticket {
        session: session::Session {
            host,
            ..signed_in.clone()
        },
        path,
        expires: auth::now() + session::TICKET_SECS,
        id: sessions.sealer.random_hex(16),
    };
    let sealed = sessions.sealer.seal(Purpose::Ticket, &ticket);
    let origin = rd.origin().ascii_serialization();
    redirect(format!("{origin}{SESSION}?ticket={sealed}"), cookies)
}

/// `/.edge/session?ticket=…` on a preview host: the ticket becomes this
/// host's cookie, once.
async fn handover(
    req: &RequestHeader,
    ctx: &RequestCtx,
    sessions: &SessionSettings,
    ends: &Ends<'_>,
) -> Result<Reply, Failure> {
    let refused = || bad("the sign-in ticket is not valid here: open the page again");
    let sealed = param(req, "ticket").ok_or_else(refused)?;
    let ticket: Ticket = sessions
        .sealer
        .open(Purpose::Ticket, &sealed)
        .map_err(|_| refused())?;
    let now = auth::now();
    let host = ctx.host.name().map_err(|_| refused())?;
    if ticket.session.host != host
        || ticket.expires < now
        || ends.here.is_ended(&ticket.session.sid, now)
        || !ends.end(&ticket.id, ticket.expires + 1).await
    {
        return Err(refused());
    }
    let own = session_cookie(sessions, &ticket.session, ctx.tls.is_some());
    // Absolute, on this host: a path like `//evil` stays a path.
    let location = format!(
        "{}://{}{}",
        scheme(ctx),
        ctx.host.sent().unwrap_or(host),
        ticket.path
    );
    Ok(redirect(location, vec![own]))
}

/// `/.edge/logout`: ends the sign-in (every host's cookie of it, on
/// every replica) and clears this host's cookie.
async fn logout(
    req: &RequestHeader,
    ctx: &RequestCtx,
    sessions: &SessionSettings,
    ends: &Ends<'_>,
) -> Reply {
    if let Some(opened) = opened(req, ctx, sessions, ends.here) {
        ends.end(&opened.session.sid, opened.session.expires).await;
    }
    Reply {
        status: 200,
        location: None,
        cookies: vec![cookie(&sessions.cookie, "", "/", 0, ctx.tls.is_some())],
        body: Some((
            "text/html; charset=utf-8",
            bytes::Bytes::from_static(
                b"<!doctype html><title>Signed out</title><p>You are signed out of every preview.</p>\n",
            ),
        )),
        cache_control: "no-store",
    }
}

/// Where sign-outs and used tickets are remembered: this replica, and
/// every replica when Redis is configured.
struct Ends<'a> {
    here: &'a Revocations,
    shared: Option<Arc<shared::SharedState>>,
}

impl<'a> Ends<'a> {
    fn new(here: &'a Revocations, shared: &shared::InForce) -> Self {
        Self {
            here,
            shared: shared.load_full(),
        }
    }

    /// Ends `id` until `until`. False if it had ended already, here or,
    /// as Redis knows, anywhere; with Redis away, this replica's answer
    /// counts (`on_failure: open`) or the answer is no (`closed`).
    async fn end(&self, id: &str, until: u64) -> bool {
        let first_here = self.here.end(id, until, auth::now());
        let Some(shared) = &self.shared else {
            return first_here;
        };
        match shared.end(id, until).await {
            Ended::First => first_here,
            Ended::Already => false,
            Ended::Unavailable => first_here && !shared.fail_closed,
        }
    }
}

/// Equal, in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's `Cookie` headers without the edge's own cookies (the
/// service never sees them).
pub fn strip_own_cookies(upstream: &mut RequestHeader, settings: &SessionSettings) {
    let names = [settings.cookie.as_str(), settings.login_cookie.as_str()];
    let rewritten: Vec<Option<String>> = (upstream.headers.get_all(http::header::COOKIE).iter())
        .map(|v| session::without_cookies(v.as_bytes(), &names))
        .collect();
    if rewritten.iter().all(Option::is_none) {
        return;
    }
    let kept: Vec<http::HeaderValue> = (upstream.headers.get_all(http::header::COOKIE).iter())
        .zip(&rewritten)
        .filter_map(|(old, new)| match new {
            None => Some(old.clone()),
            Some(new) if new.is_empty() => None,
            Some(new) => http::HeaderValue::from_str(new).ok(),
        })
        .collect();
    let _ = upstream.remove_header(&http::header::COOKIE);
    for value in kept {
        let _ = upstream.append_header(http::header::COOKIE, value);
    }
}

/// A service's `Set-Cookie` naming one of the edge's cookies is dropped:
/// a preview may not sign its visitors in or out (cookie tossing).
pub fn strip_tossed_cookies(
    response: &mut pingora_http::ResponseHeader,
    settings: &SessionSettings,
) {
    let ours = |v: &http::HeaderValue| {
        let name = v
            .as_bytes()
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default();
        let name = name.trim_ascii();
        name == settings.cookie.as_bytes() || name == settings.login_cookie.as_bytes()
    };
    let set_cookies = response.headers.get_all(http::header::SET_COOKIE);
    if !set_cookies.iter().any(ours) {
        return;
    }
    let kept: Vec<http::HeaderValue> = set_cookies.iter().filter(|v| !ours(v)).cloned().collect();
    let _ = response.remove_header(&http::header::SET_COOKIE);
    for value in kept {
        let _ = response.append_header(http::header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_addresses_stay_on_served_hosts() {
        let serves = |h: &str| h == "a.preview.test" || h.ends_with(".preview.test");
        for good in [
            "https://a.preview.test/page?x=1",
            "http://b.preview.test:8080/",
            "https://A.Preview.Test/#frag",
        ] {
            assert!(return_address(good, serves).is_some(), "{good}");
        }
        for evil in [
            "//evil.com/",
            "/relative",
            "https:evil.com",
            "https:/evil.com",
            "https://evil.com/",
            "https://a.preview.test@evil.com/",
            "https://evil.com\\@a.preview.test/",
            "https%3A%2F%2Fevil.com",
            "javascript:alert(1)",
            "https://a.preview.test.evil.com/",
            "https://user:pw@a.preview.test/",
            "data:text/html,x",
            "",
        ] {
            assert!(return_address(evil, serves).is_none(), "{evil}");
        }
        let url = return_address("https://a.preview.test/p#x", serves).unwrap();
        assert_eq!(url.as_str(), "https://a.preview.test/p");
    }

    #[test]
    fn constant_time_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
