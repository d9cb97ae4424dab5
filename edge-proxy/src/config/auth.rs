//! `auth:` and `routes[].access:` → the verifier and the access rules.
//! With `auth:` configured nothing is public unless the YAML says so.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::assertion::{Assertions, SigningKey};
use crate::auth::session::Sealer;
use crate::auth::{self, keys, Access, Allow, Issuer, Level, Verifier};
use crate::idp::{self, Provider, RemoteKeys};

/// Browser sign-in, validated.
#[derive(Debug)]
pub struct Login {
    pub provider: Arc<Provider>,
    /// The sign-in host's URL (scheme, host, port; no path).
    pub url: String,
    /// Its host name, normalized.
    pub host: String,
    /// `<url>/.edge/callback`, as registered with the provider.
    pub redirect_uri: String,
}

/// The edge's own cookies.
#[derive(Debug)]
pub struct SessionSettings {
    pub sealer: Sealer,
    pub lifetime: Duration,
    pub idle: Duration,
    pub cookie: String,
    /// The cookie that holds a sign-in in progress.
    pub login_cookie: String,
    /// Cookies already opened, until they lapse.
    pub cache: auth::cache::Cache<Arc<auth::session::Opened>>,
}

pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
pub const DEFAULT_SESSION_COOKIE: &str = "_preview_session";

/// The YAML as written.
pub mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Auth {
        #[serde(default)]
        pub issuers: Vec<Issuer>,
        pub login: Option<Login>,
        #[serde(default)]
        pub session: Session,
        pub identity_token: Option<IdentityToken>,
        #[serde(default)]
        pub access: AccessTable,
        /// Who passes the `shared` and `personal` levels anyway.
        pub admins: Option<AccessRule>,
    }

    /// `false`, or settings for the token the edge signs for services.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum IdentityToken {
        Switch(bool),
        Settings(IdentityTokenSettings),
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct IdentityTokenSettings {
        pub header: Option<String>,
        pub issuer: Option<String>,
        pub lifetime: Option<String>,
        /// PKCS#8 P-256 private keys (PEM): the first signs, all are
        /// published.
        #[serde(default)]
        pub keys: Vec<String>,
    }

    /// Browser sign-in with an OpenID provider.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Login {
        /// The provider's issuer URL (discovery at
        /// `<issuer>/.well-known/openid-configuration`).
        pub issuer: String,
        pub client_id: String,
        /// Without one, a public client (PKCE alone).
        pub client_secret_file: Option<String>,
        /// The sign-in host's public URL (`https://auth.preview.example.com`):
        /// the callback is `<url>/.edge/callback`.
        pub url: String,
        pub scopes: Option<Vec<String>>,
        #[serde(default)]
        pub claims: Claims,
        /// Extra CA certificates to trust for the provider (PEM).
        pub ca_file: Option<String>,
        pub leeway: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Session {
        /// At least 32 random bytes, the same on every replica. Without
        /// one, a secret made at start (sign-ins end with the process).
        pub secret_file: Option<String>,
        /// A sign-in ends this long after it began.
        pub lifetime: Option<String>,
        /// ... or this long after its last use.
        pub idle: Option<String>,
        pub cookie: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Issuer {
        /// `iss` as the tokens carry it.
        pub issuer: String,
        pub algorithms: Vec<String>,
        /// Public-key files: PEM, a JWK or a JWK set.
        #[serde(default)]
        pub keys: Vec<String>,
        /// A JWK set fetched by URL (refreshed; served stale when the
        /// issuer is down).
        pub jwks_url: Option<String>,
        pub jwks_refresh: Option<String>,
        /// An HMAC secret's file (HS256/384/512).
        pub secret_file: Option<String>,
        #[serde(default)]
        pub audiences: Vec<String>,
        /// Claims every token must carry (beyond exp, iss, sub).
        #[serde(default)]
        pub required_claims: Vec<String>,
        pub leeway: Option<String>,
        #[serde(default)]
        pub claims: Claims,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Claims {
        pub email: Option<String>,
        pub groups: Option<String>,
        /// For the `shared` level (default `org`; a string or a list).
        pub organization: Option<String>,
    }

    impl Claims {
        /// The claim names, defaults filled in (issuers and sign-in alike).
        pub fn email(&self) -> String {
            self.email.clone().unwrap_or_else(|| "email".into())
        }

        pub fn groups(&self) -> String {
            self.groups.clone().unwrap_or_else(|| "groups".into())
        }

        pub fn organization(&self) -> String {
            self.organization.clone().unwrap_or_else(|| "org".into())
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AccessTable {
        pub default: Option<Access>,
        /// Per preview domain (or any parent domain of a request's host).
        #[serde(default)]
        pub domains: std::collections::BTreeMap<String, Access>,
        #[serde(default)]
        pub clusters: std::collections::BTreeMap<String, Access>,
        #[serde(default)]
        pub environments: std::collections::BTreeMap<String, Access>,
    }

    /// `public`, `authenticated`, or a mapping with allow rules.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Access {
        Level(String),
        Rule(AccessRule),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AccessRule {
        pub level: Option<String>,
        #[serde(default)]
        pub subjects: Vec<String>,
        #[serde(default)]
        pub emails: Vec<String>,
        #[serde(default)]
        pub email_domains: Vec<String>,
        #[serde(default)]
        pub groups: Vec<String>,
        #[serde(default)]
        pub pass_authorization: bool,
        /// With `level: personal`: the owner's subject or email.
        pub owner: Option<String>,
    }
}

/// Visitor authentication, validated.
#[derive(Debug)]
pub struct AuthSettings {
    pub verifier: Verifier,
    /// The issuers' JWK sets fetched by URL.
    pub remote_keys: Vec<Arc<RemoteKeys>>,
    /// For providers' JWK sets, discovery and code exchanges.
    pub http: reqwest::Client,
    /// Browser sign-in (`None`: bearer tokens only).
    pub login: Option<Login>,
    pub session: SessionSettings,
    /// The identity token services receive (`None`: turned off).
    pub assertions: Option<Arc<Assertions>>,
    /// For requests no more specific rule covers.
    pub default: Arc<Access>,
    pub environments: HashMap<String, Arc<Access>>,
    pub clusters: HashMap<String, Arc<Access>>,
    /// Domain → rule, longest first.
    pub domains: Vec<(String, Arc<Access>)>,
    /// Each environment's organization (its cluster's).
    pub organizations: HashMap<String, String>,
    /// Who passes the shared and personal levels anyway.
    pub admins: Allow,
}

impl AuthSettings {
    /// The rule for the longest configured domain `host` is or is under.
    pub fn domain_rule(&self, host: &str) -> Option<&Arc<Access>> {
        (self.domains.iter())
            .find(|(d, _)| {
                host.strip_suffix(d.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
            })
            .map(|(_, rule)| rule)
    }
}

/// `auth:` → settings, or problems.
pub fn validate(
    raw: &raw::Auth,
    owner_of_env: &HashMap<String, String>,
    organizations: HashMap<String, String>,
    base: &Path,
    problems: &mut Vec<String>,
) -> Arc<AuthSettings> {
    let environments: Vec<&str> = owner_of_env.keys().map(String::as_str).collect();
    if raw.issuers.is_empty() && raw.login.is_none() {
        problems.push("auth: give issuers (bearer tokens), login (browser sign-in) or both".into());
    }
    let ca = raw
        .login
        .as_ref()
        .and_then(|l| l.ca_file.as_ref())
        .and_then(|file| {
            std::fs::read(base.join(file))
                .map_err(|e| problems.push(format!("auth.login.ca_file: cannot read {file}: {e}")))
                .ok()
        });
    let http = idp::client(ca.as_deref()).unwrap_or_else(|e| {
        problems.push(format!("auth.login.ca_file: {e}"));
        reqwest::Client::new()
    });
    let mut remote_keys = Vec::new();
    let issuers = (raw.issuers.iter().enumerate())
        .filter_map(|(i, r)| {
            issuer(
                r,
                &format!("auth.issuers[{i}]"),
                base,
                &mut remote_keys,
                problems,
            )
        })
        .collect();
    let session = session(&raw.session, base, problems);
    let login = (raw.login.as_ref()).and_then(|l| login(l, base, http.clone(), problems));
    let assertions = identity_token(raw.identity_token.as_ref(), login.as_ref(), base, problems);
    let default = match &raw.access.default {
        Some(a) => access(a, "auth.access.default", problems),
        None => Access {
            level: Level::Authenticated,
            allow: Allow::default(),
            pass_authorization: false,
            owner: None,
        },
    };
    let without_org: Vec<&str> = (environments.iter().copied())
        .filter(|e| !organizations.contains_key(*e))
        .collect();
    if default.level == Level::Shared && !without_org.is_empty() {
        problems.push(format!(
            "auth.access.default: shared needs an organization on every cluster; none for {without_org:?} (clusters[].organization)"
        ));
    }
    let admins = match &raw.admins {
        Some(rule) => {
            let admins = allow(rule);
            if admins.is_empty() || rule.level.is_some() || rule.owner.is_some() {
                problems.push("auth.admins: give subjects, emails, email_domains or groups (no level or owner)".into());
            }
            admins
        }
        None => Allow::default(),
    };
    let mut by_env = HashMap::new();
    for (env, a) in &raw.access.environments {
        let path = format!("auth.access.environments.{env}");
        if !environments.contains(&env.as_str()) {
            problems.push(format!(
                "{path}: {env:?} is not listed in any clusters[].environments"
            ));
        }
        let rule = access(a, &path, problems);
        if rule.level == Level::Shared && !organizations.contains_key(env) {
            problems.push(format!(
                "{path}: shared needs the cluster's organization (clusters[].organization)"
            ));
        }
        by_env.insert(env.clone(), Arc::new(rule));
    }
    let mut by_cluster = HashMap::new();
    for (cluster, a) in &raw.access.clusters {
        let path = format!("auth.access.clusters.{cluster}");
        let envs: Vec<&String> = (owner_of_env.iter())
            .filter(|(_, c)| *c == cluster)
            .map(|(e, _)| e)
            .collect();
        if envs.is_empty() {
            problems.push(format!("{path}: no cluster {cluster:?} with environments"));
        }
        let rule = access(a, &path, problems);
        if rule.level == Level::Shared && envs.iter().any(|e| !organizations.contains_key(*e)) {
            problems.push(format!(
                "{path}: shared needs the cluster's organization (clusters[].organization)"
            ));
        }
        by_cluster.insert(cluster.clone(), Arc::new(rule));
    }
    let mut domains = Vec::new();
    for (domain, a) in &raw.access.domains {
        let path = format!("auth.access.domains.{domain}");
        let name = domain.trim_start_matches("*.").to_ascii_lowercase();
        if name.is_empty() || name.starts_with('.') || name.contains(['/', ':', ' ']) {
            problems.push(format!("{path}: {domain:?} is not a domain name"));
        }
        let rule = access(a, &path, problems);
        if rule.level == Level::Shared && !without_org.is_empty() {
            problems.push(format!(
                "{path}: shared needs an organization on every cluster; none for {without_org:?}"
            ));
        }
        domains.push((name, Arc::new(rule)));
    }
    // The longest domain first: the most specific wins.
    domains.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
    Arc::new(AuthSettings {
        verifier: Verifier::new(issuers),
        remote_keys,
        http,
        login,
        session,
        assertions,
        default: Arc::new(default),
        environments: by_env,
        clusters: by_cluster,
        domains,
        organizations,
        admins,
    })
}

fn issuer(
    raw: &raw::Issuer,
    path: &str,
    base: &Path,
    remote_keys: &mut Vec<Arc<RemoteKeys>>,
    problems: &mut Vec<String>,
) -> Option<Issuer> {
    let before = problems.len();
    if raw.issuer.trim().is_empty() {
        problems.push(format!("{path}.issuer: must not be empty"));
    }
    let mut algorithms = Vec::new();
    for (i, name) in raw.algorithms.iter().enumerate() {
        match jsonwebtoken::Algorithm::from_str(name) {
            Ok(a) if !algorithms.contains(&a) => algorithms.push(a),
            Ok(_) => problems.push(format!("{path}.algorithms[{i}]: {name:?} is listed twice")),
            Err(_) => problems.push(format!(
                "{path}.algorithms[{i}]: {name:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
            )),
        }
    }
    if raw.algorithms.is_empty() {
        problems.push(format!(
            "{path}.algorithms: give the algorithms its tokens use (e.g. [RS256])"
        ));
    }
    let mut keys = Vec::new();
    for (i, file) in raw.keys.iter().enumerate() {
        let at = format!("{path}.keys[{i}]");
        match std::fs::read(base.join(file)) {
            Ok(bytes) => match keys::public_keys(&bytes) {
                Ok(k) => keys.extend(k),
                Err(e) => problems.push(format!("{at}: {file}: {e}")),
            },
            Err(e) => problems.push(format!("{at}: cannot read {file}: {e}")),
        }
    }
    if let Some(file) = &raw.secret_file {
        let at = format!("{path}.secret_file");
        match std::fs::read(base.join(file)) {
            Ok(bytes) => match keys::secret(&bytes) {
                Ok(k) => keys.push(k),
                Err(e) => problems.push(format!("{at}: {file}: {e}")),
            },
            Err(e) => problems.push(format!("{at}: cannot read {file}: {e}")),
        }
    }
    let remote = raw.jwks_url.as_ref().map(|url| {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            problems.push(format!("{path}.jwks_url: {url:?} is not an http(s) URL"));
        }
        let refresh = yaml_config::duration(
            &raw.jwks_refresh,
            &format!("{path}.jwks_refresh"),
            idp::DEFAULT_JWKS_REFRESH,
            problems,
        );
        if refresh < Duration::from_secs(1) {
            problems.push(format!("{path}.jwks_refresh: at least 1s"));
        }
        // Refetches for unknown keys: at most one per 10 s (or per
        // refresh period, when that is shorter).
        let floor = refresh.min(idp::MIN_JWKS_INTERVAL);
        Arc::new(RemoteKeys::new(Some(url.clone()), refresh, floor))
    });
    if raw.keys.is_empty() && raw.secret_file.is_none() && remote.is_none() {
        problems.push(format!(
            "{path}: give keys (public-key files), jwks_url or secret_file"
        ));
    }
    if remote.is_some() && !(raw.keys.is_empty() && raw.secret_file.is_none()) {
        problems.push(format!(
            "{path}: jwks_url replaces keys and secret_file: give one source"
        ));
    }
    // Every algorithm needs a key of its family, and every key an
    // algorithm: an HMAC algorithm beside only public keys would be the
    // classic confusion, and is refused here as well as at verification.
    // (A fetched set is checked per token: its keys come and go.)
    for a in &algorithms {
        if remote.is_some() && a.family() == keys::Family::Hmac {
            problems.push(format!(
                "{path}.algorithms: {a:?} needs a secret_file, never keys from a URL"
            ));
        }
        if !keys.is_empty() && !keys.iter().any(|k| k.fits(*a)) {
            problems.push(format!(
                "{path}.algorithms: {a:?} has no key of its family among the issuer's keys"
            ));
        }
    }
    let leeway = yaml_config::duration(
        &raw.leeway,
        &format!("{path}.leeway"),
        Duration::from_secs(auth::DEFAULT_LEEWAY_SECS),
        problems,
    );
    if leeway.as_secs() > auth::MAX_LEEWAY_SECS {
        problems.push(format!(
            "{path}.leeway: {leeway:?} is more than the {}s allowed",
            auth::MAX_LEEWAY_SECS
        ));
    }
    if problems.len() > before || algorithms.is_empty() {
        return None;
    }
    let ring = match &remote {
        Some(r) => r.ring.clone(),
        None => Arc::new(keys::KeyRing::new(keys)),
    };
    remote_keys.extend(remote.iter().cloned());
    Some(Issuer {
        issuer: raw.issuer.clone(),
        keys: ring,
        remote: remote.is_some(),
        validation: auth::validation(&raw.issuer, algorithms, &raw.audiences, leeway.as_secs()),
        email_claim: raw.claims.email(),
        groups_claim: raw.claims.groups(),
        organization_claim: raw.claims.organization(),
        required_claims: raw.required_claims.clone(),
    })
}

/// `auth.login:` → the provider and the sign-in host.
fn login(
    raw: &raw::Login,
    base: &Path,
    http: reqwest::Client,
    problems: &mut Vec<String>,
) -> Option<Login> {
    let before = problems.len();
    let path = "auth.login";
    let issuer = raw.issuer.trim_end_matches('/').to_owned();
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        problems.push(format!("{path}.issuer: {issuer:?} is not an http(s) URL"));
    }
    if raw.client_id.is_empty() {
        problems.push(format!("{path}.client_id: must not be empty"));
    }
    let secret = raw.client_secret_file.as_ref().and_then(|file| {
        match std::fs::read_to_string(base.join(file)) {
            Ok(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Ok(_) => {
                problems.push(format!("{path}.client_secret_file: {file} is empty"));
                None
            }
            Err(e) => {
                problems.push(format!(
                    "{path}.client_secret_file: cannot read {file}: {e}"
                ));
                None
            }
        }
    });
    let url = raw.url.trim_end_matches('/').to_owned();
    let host = match url::Url::parse(&url) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https") && u.path() == "/" && u.query().is_none() =>
        {
            u.host_str().map(str::to_ascii_lowercase)
        }
        _ => None,
    };
    if host.is_none() {
        problems.push(format!(
            "{path}.url: {url:?} is not a sign-in host's URL (https://auth.preview.example.com)"
        ));
    }
    let scopes = raw
        .scopes
        .clone()
        .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
    if !scopes.iter().any(|s| s == "openid") {
        problems.push(format!("{path}.scopes: must include openid"));
    }
    let leeway = yaml_config::duration(
        &raw.leeway,
        &format!("{path}.leeway"),
        Duration::from_secs(auth::DEFAULT_LEEWAY_SECS),
        problems,
    );
    if problems.len() > before {
        return None;
    }
    let keys = Arc::new(RemoteKeys::new(
        None,
        idp::DEFAULT_JWKS_REFRESH,
        idp::MIN_JWKS_INTERVAL,
    ));
    // ID tokens: signed with the provider's published keys (never HMAC),
    // for this client.
    let algorithms = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .iter()
    .map(|a| jsonwebtoken::Algorithm::from_str(a).expect("known algorithm"))
    .collect();
    let id_tokens = Issuer {
        issuer: issuer.clone(),
        keys: keys.ring.clone(),
        remote: true,
        validation: auth::validation(
            &issuer,
            algorithms,
            std::slice::from_ref(&raw.client_id),
            leeway.as_secs().min(auth::MAX_LEEWAY_SECS),
        ),
        email_claim: raw.claims.email(),
        groups_claim: raw.claims.groups(),
        organization_claim: raw.claims.organization(),
        required_claims: Vec::new(),
    };
    let provider = Provider::new(
        issuer,
        raw.client_id.clone(),
        secret,
        scopes.join(" "),
        id_tokens,
        keys,
        http,
    );
    Some(Login {
        provider: Arc::new(provider),
        redirect_uri: format!("{url}/.edge/callback"),
        url,
        host: host?,
    })
}

pub const DEFAULT_IDENTITY_HEADER: &str = "x-preview-jwt-assertion";
pub const DEFAULT_IDENTITY_LIFETIME: Duration = Duration::from_secs(300);

/// `auth.identity_token:` → the signer (on unless `false`).
fn identity_token(
    raw: Option<&raw::IdentityToken>,
    login: Option<&Login>,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<Arc<Assertions>> {
    let path = "auth.identity_token";
    let default = raw::IdentityTokenSettings::default();
    let settings = match raw {
        Some(raw::IdentityToken::Switch(false)) => return None,
        Some(raw::IdentityToken::Switch(true)) | None => &default,
        Some(raw::IdentityToken::Settings(s)) => s,
    };
    let header = settings
        .header
        .as_deref()
        .unwrap_or(DEFAULT_IDENTITY_HEADER);
    let header = match http::HeaderName::from_bytes(header.as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            problems.push(format!("{path}.header: {header:?} is not a header name"));
            return None;
        }
    };
    let lifetime = yaml_config::duration(
        &settings.lifetime,
        &format!("{path}.lifetime"),
        DEFAULT_IDENTITY_LIFETIME,
        problems,
    );
    if lifetime < Duration::from_secs(10) || lifetime > Duration::from_secs(3600) {
        problems.push(format!("{path}.lifetime: between 10s and 1h"));
    }
    let mut keys = Vec::new();
    for (i, file) in settings.keys.iter().enumerate() {
        match std::fs::read_to_string(base.join(file)) {
            Ok(text) => match SigningKey::from_pem(&text) {
                Ok(k) => keys.push(Arc::new(k)),
                Err(e) => problems.push(format!("{path}.keys[{i}]: {file}: {e}")),
            },
            Err(e) => problems.push(format!("{path}.keys[{i}]: cannot read {file}: {e}")),
        }
    }
    if settings.keys.is_empty() {
        keys.push(SigningKey::generated());
    }
    let issuer = (settings.issuer.clone())
        .or_else(|| login.map(|l| l.url.clone()))
        .unwrap_or_else(|| "preview-edge".into());
    (!keys.is_empty()).then(|| Arc::new(Assertions::new(header, issuer, lifetime.as_secs(), keys)))
}

/// A secret made once per process, for sessions when none is configured
/// (a config reload keeps everyone signed in).
fn generated_secret() -> &'static [u8; 32] {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("the system's random source works");
        secret
    })
}

/// `auth.session:` → the sealer and the cookie's lifetimes.
fn session(raw: &raw::Session, base: &Path, problems: &mut Vec<String>) -> SessionSettings {
    let path = "auth.session";
    let secret = match &raw.secret_file {
        Some(file) => match std::fs::read(base.join(file)) {
            Ok(bytes) => {
                let trimmed = bytes.trim_ascii();
                if trimmed.len() < auth::session::MIN_SECRET_BYTES {
                    problems.push(format!(
                        "{path}.secret_file: {file} holds {} bytes; give at least {} random bytes (openssl rand -hex 32)",
                        trimmed.len(),
                        auth::session::MIN_SECRET_BYTES
                    ));
                }
                trimmed.to_vec()
            }
            Err(e) => {
                problems.push(format!("{path}.secret_file: cannot read {file}: {e}"));
                Vec::new()
            }
        },
        None => generated_secret().to_vec(),
    };
    let lifetime = yaml_config::duration(
        &raw.lifetime,
        &format!("{path}.lifetime"),
        DEFAULT_SESSION_LIFETIME,
        problems,
    );
    let idle = yaml_config::duration(
        &raw.idle,
        &format!("{path}.idle"),
        DEFAULT_SESSION_IDLE.min(lifetime),
        problems,
    );
    if idle.is_zero() || lifetime.is_zero() {
        problems.push(format!("{path}: lifetime and idle must be more than zero"));
    }
    let cookie = raw
        .cookie
        .clone()
        .unwrap_or_else(|| DEFAULT_SESSION_COOKIE.into());
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if cookie.is_empty() || !cookie.chars().all(token_char) {
        problems.push(format!("{path}.cookie: {cookie:?} is not a cookie name"));
    }
    SessionSettings {
        sealer: Sealer::new(&secret),
        lifetime,
        idle,
        login_cookie: format!("{cookie}_login"),
        cookie,
        cache: Default::default(),
    }
}

fn allow(r: &raw::AccessRule) -> Allow {
    Allow {
        subjects: r.subjects.clone(),
        emails: r.emails.clone(),
        email_domains: r.email_domains.clone(),
        groups: r.groups.clone(),
    }
}

/// An `access:` value at `path`.
pub fn access(raw: &raw::Access, path: &str, problems: &mut Vec<String>) -> Access {
    let level = |name: &str, problems: &mut Vec<String>| {
        Level::parse(name).unwrap_or_else(|| {
            problems.push(format!(
                "{path}: {name:?} is not an access level (public, authenticated, shared or personal)"
            ));
            Level::Authenticated
        })
    };
    match raw {
        raw::Access::Level(name) => Access {
            level: level(name, problems),
            allow: Allow::default(),
            pass_authorization: false,
            owner: None,
        },
        raw::Access::Rule(r) => {
            let allow = allow(r);
            let level = level(r.level.as_deref().unwrap_or("authenticated"), problems);
            if level == Level::Public && !allow.is_empty() {
                problems.push(format!(
                    "{path}: allow rules on a public level would never apply"
                ));
            }
            if r.owner.is_some() && level != Level::Personal {
                problems.push(format!("{path}.owner: only with level: personal"));
            }
            Access {
                level,
                allow,
                pass_authorization: r.pass_authorization,
                owner: r.owner.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_domain_rule_wins_on_label_boundaries() {
        let mut problems = Vec::new();
        let raw: raw::Auth = serde_json::from_value(serde_json::json!({
            "issuers": [{ "issuer": "https://i", "algorithms": ["HS256"], "secret_file": "/nonexistent" }],
            "access": { "domains": { "preview.example.com": "public", "internal.preview.example.com": "personal" } },
        }))
        .unwrap();
        let settings = validate(
            &raw,
            &HashMap::new(),
            HashMap::new(),
            Path::new("/"),
            &mut problems,
        );
        let level = |host: &str| settings.domain_rule(host).map(|r| r.level);
        assert_eq!(level("a-1-x.preview.example.com"), Some(Level::Public));
        assert_eq!(
            level("a-1-x.internal.preview.example.com"),
            Some(Level::Personal)
        );
        assert_eq!(level("preview.example.com"), Some(Level::Public));
        assert_eq!(level("evilpreview.example.com"), None);
        assert_eq!(level("preview.example.com.evil"), None);
    }
}
