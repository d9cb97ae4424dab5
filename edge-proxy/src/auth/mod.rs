//! Visitor authentication: who sent a request ([`Verifier`]: bearer JWTs
//! from the configured issuers, verified tokens cached until they expire)
//! and whether they may reach what it routes to ([`access`]).
//!
//! Pure but for the clock: no I/O at request time. Keys are loaded from
//! files when the config is validated ([`keys`]); a key never comes from
//! the token itself (`jku`, `x5u`, an embedded `jwk` are ignored), `alg:
//! none` never parses, and a key only verifies the algorithm family it is
//! (an RSA public key is never an HMAC secret).
//!
//! The bottom room: uses no other.

pub mod access;
pub mod assertion;
pub mod cache;
pub mod keys;
pub mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

pub use access::{Access, Allow, Level};

/// Bearer tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;
/// Clock skew allowed on `exp` and `nbf` when an issuer sets none.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The most an issuer may allow.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// A visitor, as a token from a trusted issuer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// The organizations the identity belongs to (its organization claim),
    /// for the `shared` level.
    pub organizations: Vec<String>,
    /// Every claim with a string value, for header templates
    /// (`{claim.<name>}`).
    pub claims: Vec<(String, String)>,
    /// What the service is told ([`service_headers`]), made once per
    /// token rather than per request.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The edge's identity tokens for this identity, by audience (kept
    /// with the identity, which lives as long as its credential is
    /// cached).
    pub assertions: assertion::Signed,
}

/// Identity headers the service receives (oauth2-proxy's names).
pub const X_AUTH_REQUEST_USER: http::HeaderName =
    http::HeaderName::from_static("x-auth-request-user");
pub const X_AUTH_REQUEST_EMAIL: http::HeaderName =
    http::HeaderName::from_static("x-auth-request-email");
pub const X_AUTH_REQUEST_GROUPS: http::HeaderName =
    http::HeaderName::from_static("x-auth-request-groups");

/// `X-Auth-Request-User`, `-Email`, `-Groups` for an identity (a value
/// that is not a valid header value is left out).
pub(crate) fn service_headers(
    subject: &str,
    email: Option<&str>,
    groups: &[String],
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let groups = groups.join(",");
    [
        (X_AUTH_REQUEST_USER, Some(subject)),
        (X_AUTH_REQUEST_EMAIL, email),
        (
            X_AUTH_REQUEST_GROUPS,
            Some(groups.as_str()).filter(|g| !g.is_empty()),
        ),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, http::HeaderValue::from_str(value?).ok()?)))
    .collect()
}

/// One trusted issuer: its keys and what its tokens must say.
#[derive(Clone)]
pub struct Issuer {
    /// `iss` as the tokens carry it.
    pub issuer: String,
    pub keys: Arc<keys::KeyRing>,
    /// The keys come from a JWKS URL (refreshed by the `idp` room).
    pub remote: bool,
    pub validation: Validation,
    /// Claim names for the identity.
    pub email_claim: String,
    pub groups_claim: String,
    pub organization_claim: String,
    /// Claims a token must carry beyond `exp`, `iss` and `sub`.
    pub required_claims: Vec<String>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.current().len())
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

/// Why a token was not accepted: what the visitor is told (in
/// `WWW-Authenticate`'s `error_description` and the error body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a JWT this edge accepts")]
    Malformed,
    #[error("no trusted issuer signs with this algorithm")]
    Algorithm,
    #[error("no trusted key has this key id")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    Audience,
    #[error("the token is from an untrusted issuer")]
    Issuer,
    #[error("the token lacks a required claim: {0}")]
    MissingClaim(String),
}

/// Verifies bearer tokens against the configured issuers and remembers
/// the ones that verified until they expire.
#[derive(Debug)]
pub struct Verifier {
    issuers: Vec<Issuer>,
    /// Verified tokens, until `exp` plus the leeway.
    cache: cache::Cache<Arc<Identity>>,
}

/// Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    pub fn new(issuers: Vec<Issuer>) -> Self {
        Verifier {
            issuers,
            cache: cache::Cache::default(),
        }
    }

    /// The identity a bearer token proves.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let now = now();
        if let Some(hit) = self.cache.get(token, now) {
            return Ok(hit);
        }
        let (identity, until) = self.verify_uncached(token)?;
        let identity = Arc::new(identity);
        self.cache.insert(token, identity.clone(), until, now);
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Identity, u64), TokenError> {
        // `alg: none` (any spelling) and unknown algorithms fail here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let candidates: Vec<&Issuer> = (self.issuers.iter())
            .filter(|i| i.validation.algorithms.contains(&header.alg))
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::Algorithm);
        }
        let mut last = TokenError::UnknownKey;
        for issuer in candidates {
            // jsonwebtoken wants every algorithm of a validation in the
            // key's family: this token's alone (allowed, checked above).
            let mut validation = issuer.validation.clone();
            validation.algorithms = vec![header.alg];
            let ring = issuer.keys.current();
            let keys = ring.iter().filter(|k| k.fits(header.alg));
            for key in keys.filter(|k| header.kid.is_none() || k.kid == header.kid) {
                match decode(token, &key.key, &validation) {
                    Ok(claims) => return issuer.identity(claims),
                    Err(e) => last = worse(last, e),
                }
            }
        }
        Err(last)
    }
}

/// Between two reasons for one token, the one that says more.
fn worse(a: TokenError, b: TokenError) -> TokenError {
    match (&a, &b) {
        (TokenError::UnknownKey, _) => b,
        (_, TokenError::UnknownKey) => a,
        (TokenError::Signature | TokenError::Issuer, _) => b,
        _ => a,
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Value, TokenError> {
    use jsonwebtoken::errors::ErrorKind as K;
    jsonwebtoken::decode::<Value>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.into_kind() {
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidAudience => TokenError::Audience,
            K::InvalidIssuer => TokenError::Issuer,
            K::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
            K::InvalidSignature | K::InvalidAlgorithm => TokenError::Signature,
            _ => TokenError::Malformed,
        })
}

impl Issuer {
    /// The identity in verified claims, and until when it holds.
    fn identity(&self, claims: Value) -> Result<(Identity, u64), TokenError> {
        let Value::Object(map) = claims else {
            return Err(TokenError::Malformed);
        };
        let text = |name: &str| map.get(name).and_then(Value::as_str).map(str::to_owned);
        let subject = text("sub").ok_or_else(|| TokenError::MissingClaim("sub".into()))?;
        if let Some(missing) =
            (self.required_claims.iter()).find(|c| map.get(*c).is_none_or(Value::is_null))
        {
            return Err(TokenError::MissingClaim(missing.clone()));
        }
        let exp = (map.get("exp").and_then(Value::as_u64))
            .ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
        let list = |name: &str| match map.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(g)) => g
                .split([',', ' '])
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let groups = list(&self.groups_claim);
        let organizations = list(&self.organization_claim);
        let claims = (map.iter())
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect();
        let email = text(&self.email_claim);
        Ok((
            Identity {
                issuer: self.issuer.clone(),
                headers: service_headers(&subject, email.as_deref(), &groups),
                email,
                subject,
                groups,
                organizations,
                claims,
                assertions: Default::default(),
            },
            exp.saturating_add(self.validation.leeway),
        ))
    }
}

/// The validation every token of an issuer gets: its algorithms, `iss`,
/// the audience when one is configured, `exp` always, `nbf` when present,
/// and `sub`.
pub fn validation(
    issuer: &str,
    algorithms: Vec<Algorithm>,
    audiences: &[String],
    leeway_secs: u64,
) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms;
    v.leeway = leeway_secs;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    let mut required = vec!["exp", "iss", "sub"];
    if audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}
