//! The edge as a client of identity providers: a JWKS fetched by URL and
//! kept fresh ([`RemoteKeys`]), and the OpenID Connect relying party that
//! signs browsers in ([`Provider`]: discovery, the authorization-code
//! exchange with PKCE, the ID token's checks).
//!
//! The one room that talks to the network on a visitor's behalf; every
//! call is bounded in time and size.
//!
//! Uses `auth`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::keys::{self, KeyRing};
use crate::auth::{Identity, Issuer, TokenError, Verifier};

/// Each call to a provider ends within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest document read from a provider.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Why talking to the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("the provider's metadata names issuer {found:?}, not {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("the provider refused the code: {0}")]
    Exchange(String),
    #[error("the ID token was refused: {0}")]
    IdToken(String),
}

/// The HTTP client the edge uses for providers: rustls with the system's
/// roots, plus a CA file when one is configured.
pub fn client(ca: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CALL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("preview-edge/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no certificate in the CA file".into());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// A bounded GET or POST, its body read up to [`MAX_DOCUMENT_BYTES`].
async fn fetch(request: reqwest::RequestBuilder, url: &str) -> Result<(u16, Vec<u8>), IdpError> {
    let failed = |message: String| IdpError::Fetch {
        url: url.to_owned(),
        message,
    };
    let mut response = request.send().await.map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(failed(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, IdpError> {
    let (status, body) = fetch(http.get(url), url).await?;
    let failed = |message: String| IdpError::Fetch {
        url: url.to_owned(),
        message,
    };
    if status != 200 {
        return Err(failed(format!("status {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| failed(format!("not the JSON expected: {e}")))
}

/// A JWKS fetched by URL into a [`KeyRing`]: on first use, when older
/// than `refresh`, and when a token names a key it lacks, but never more
/// often than `min_interval`. A failed fetch keeps the keys it had
/// (tokens keep verifying while the provider is down).
#[derive(Debug)]
pub struct RemoteKeys {
    /// `None`: learned from the provider's discovery document.
    url: Mutex<Option<String>>,
    pub ring: Arc<KeyRing>,
    refresh: Duration,
    min_interval: Duration,
    fetched: Mutex<Fetched>,
    /// One fetch at a time.
    busy: tokio::sync::Mutex<()>,
    /// A scheduled refetch is under way (requests meanwhile start none).
    refreshing: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Fetched {
    attempted: Option<Instant>,
    succeeded: Option<Instant>,
}

/// Default time between scheduled refetches of a JWKS.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// The floor on refetches, whatever tokens ask for.
pub const MIN_JWKS_INTERVAL: Duration = Duration::from_secs(10);

impl RemoteKeys {
    pub fn new(url: Option<String>, refresh: Duration, min_interval: Duration) -> Self {
        RemoteKeys {
            url: Mutex::new(url),
            ring: Arc::new(KeyRing::default()),
            refresh,
            min_interval,
            fetched: Mutex::new(Fetched::default()),
            busy: tokio::sync::Mutex::new(()),
            refreshing: Default::default(),
        }
    }

    fn fetched(&self) -> Fetched {
        *self.fetched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a scheduled refetch is due and none is under way (claims
    /// it: the caller starts the one refetch).
    fn claim_refresh(&self) -> bool {
        let due = (self.fetched().succeeded).is_none_or(|t| t.elapsed() >= self.refresh);
        due && !self
            .refreshing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Fetches the set again unless the floor says not yet. Returns
    /// whether the keys were replaced.
    pub async fn refetch(&self, http: &reqwest::Client) -> bool {
        let _one = self.busy.lock().await;
        if self
            .fetched()
            .attempted
            .is_some_and(|t| t.elapsed() < self.min_interval)
        {
            return false;
        }
        let Some(url) = self.url.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return false;
        };
        self.fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attempted = Some(Instant::now());
        let result = async {
            let (status, body) = fetch(http.get(&url), &url)
                .await
                .map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("{url}: status {status}"));
            }
            keys::public_keys(&body).map_err(|e| format!("{url}: {e}"))
        }
        .await;
        match result {
            Ok(keys) => {
                tracing::info!(url, keys = keys.len(), "fetched signing keys");
                self.ring.replace(keys);
                self.fetched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .succeeded = Some(Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "signing keys not refreshed (the previous ones stay)");
                false
            }
        }
    }

    fn set_url(&self, url: &str) {
        let mut slot = self.url.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_deref() != Some(url) {
            *slot = Some(url.to_owned());
        }
    }
}

/// Verifies a bearer token, fetching an issuer's JWKS first when it has
/// none yet or lacks the token's key, and refreshing stale sets in the
/// background.
pub async fn verify(
    verifier: &Verifier,
    remote: &[Arc<RemoteKeys>],
    http: &reqwest::Client,
    token: &str,
) -> Result<Arc<Identity>, TokenError> {
    match verifier.verify(token) {
        Err(TokenError::UnknownKey) if !remote.is_empty() => {
            let mut changed = false;
            for r in remote {
                changed |= r.refetch(http).await;
            }
            if changed {
                verifier.verify(token)
            } else {
                Err(TokenError::UnknownKey)
            }
        }
        result => {
            for r in remote.iter().filter(|r| r.claim_refresh()) {
                let (r, http) = (r.clone(), http.clone());
                tokio::spawn(async move {
                    r.refetch(&http).await;
                    r.refreshing
                        .store(false, std::sync::atomic::Ordering::Release);
                });
            }
            result
        }
    }
}

/// What an OpenID provider's discovery document says (the parts used).
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// Signing browsers in with one OpenID provider.
#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: String,
    /// The identity rules for ID tokens (claims, leeway, the audience =
    /// the client id).
    pub id_tokens: Issuer,
    pub keys: Arc<RemoteKeys>,
    pub http: reqwest::Client,
    metadata: Mutex<Option<(Arc<Metadata>, Instant)>>,
}

/// How long a discovery document is used before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

impl Provider {
    pub fn new(
        issuer: String,
        client_id: String,
        client_secret: Option<String>,
        scopes: String,
        id_tokens: Issuer,
        keys: Arc<RemoteKeys>,
        http: reqwest::Client,
    ) -> Self {
        Provider {
            issuer,
            client_id,
            client_secret,
            scopes,
            id_tokens,
            keys,
            http,
            metadata: Mutex::new(None),
        }
    }

    /// The discovery document, read when first needed and hourly after.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, IdpError> {
        let cached = self
            .metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((m, at)) = &cached {
            if at.elapsed() < METADATA_TTL {
                return Ok(m.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let fresh: Metadata = match fetch_json(&self.http, &url).await {
            Ok(m) => m,
            // A provider that is down keeps its last known endpoints.
            Err(e) => return cached.map(|(m, _)| m).ok_or(e),
        };
        if fresh.issuer != self.issuer {
            return Err(IdpError::IssuerMismatch {
                expected: self.issuer.clone(),
                found: fresh.issuer,
            });
        }
        self.keys.set_url(&fresh.jwks_uri);
        let fresh = Arc::new(fresh);
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((fresh.clone(), Instant::now()));
        Ok(fresh)
    }

    /// Where to send a browser to sign in.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, IdpError> {
        let metadata = self.metadata().await?;
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if metadata.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!("{}{sep}{query}", metadata.authorization_endpoint))
    }

    /// Trades an authorization code for the identity in its ID token,
    /// checked: signature by the provider's keys, `iss`, `aud` (this
    /// client), `azp` when present, expiry, and the `nonce` this sign-in
    /// sent.
    pub async fn sign_in(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, IdpError> {
        let metadata = self.metadata().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&metadata.token_endpoint);
        match &self.client_secret {
            Some(secret) => {
                // client_secret_basic: both parts form-encoded first (RFC 6749 §2.3.1).
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                request = request.basic_auth(enc(&self.client_id), Some(enc(secret)));
            }
            None => form.push(("client_id", &self.client_id)),
        }
        let (status, body) = fetch(request.form(&form), &metadata.token_endpoint).await?;
        let reply: Value = serde_json::from_slice(&body)
            .map_err(|_| IdpError::Exchange(format!("status {status}, not JSON")))?;
        if status != 200 {
            let error = reply["error"].as_str().unwrap_or("unknown error");
            return Err(IdpError::Exchange(format!("status {status}: {error}")));
        }
        let id_token = (reply["id_token"].as_str())
            .ok_or_else(|| IdpError::Exchange("the reply has no id_token".into()))?;
        let verifier = Verifier::new(vec![self.id_tokens.clone()]);
        let identity = match verifier.verify(id_token) {
            Err(TokenError::UnknownKey) => {
                self.keys.refetch(&self.http).await;
                verifier.verify(id_token)
            }
            other => other,
        }
        .map_err(|e| IdpError::IdToken(e.to_string()))?;
        let claim = |name: &str| {
            (identity.claims.iter())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if claim("nonce") != Some(nonce) {
            return Err(IdpError::IdToken("the nonce is not this sign-in's".into()));
        }
        if let Some(azp) = claim("azp") {
            if azp != self.client_id {
                return Err(IdpError::IdToken(format!(
                    "issued to {azp:?}, not this edge"
                )));
            }
        }
        Ok((*identity).clone())
    }
}
