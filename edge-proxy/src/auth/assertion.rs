//! The identity the edge vouches for, as a short-lived JWT the service can
//! verify (Pomerium's `X-Pomerium-Jwt-Assertion` is the model): ES256,
//! signed by the edge's key, published with the keys still valid at
//! `/.well-known/jwks.json`.
//!
//! Its audience is the host the visitor asked for, so a token a service
//! receives is worth nothing at another preview. Signatures are remembered
//! per identity and host for half the token's lifetime: a busy visitor
//! costs one signature a few minutes, not one per request.
//!
//! Keys: PKCS#8 P-256 private keys from files, the first signing and every
//! one published (rotation: put the new key first and keep the old one
//! listed until its tokens have expired), or a key made when the process
//! starts (one replica; kept across config reloads).

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::Identity;

/// Audiences an identity keeps signed tokens for (a visitor moving
/// between more previews than this re-signs now and then).
const SIGNED_PER_IDENTITY: usize = 4;

/// An identity's signed tokens: (audience, token, good until). Not part of
/// the identity's value: clones start empty and all compare equal.
#[derive(Default)]
pub struct Signed(std::sync::Mutex<Vec<(Box<str>, http::HeaderValue, u64)>>);

impl Clone for Signed {
    fn clone(&self) -> Self {
        Signed::default()
    }
}

impl PartialEq for Signed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Signed {}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signed")
    }
}

/// One signing key and what is published for it.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    /// RFC 7638 thumbprint.
    pub kid: String,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// From PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|e| format!("not a PKCS#8 P-256 private key ({e})"))?;
        // The public key: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        );
        // RFC 7638: the required members, in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        Ok(SigningKey { pair, kid, jwk })
    }

    /// From a PEM file's text (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        if !text.contains("-----BEGIN PRIVATE KEY-----") {
            return Err("not a PKCS#8 PEM private key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)".into());
        }
        let body: String = (text.lines())
            .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let der = STANDARD
            .decode(body.trim())
            .map_err(|_| "the PEM is not base64".to_owned())?;
        Self::from_pkcs8(&der)
    }

    /// A key made for this process, the same across config reloads.
    pub fn generated() -> Arc<SigningKey> {
        static KEY: OnceLock<Arc<SigningKey>> = OnceLock::new();
        KEY.get_or_init(|| {
            let rng = SystemRandom::new();
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("the system's random source works");
            Arc::new(Self::from_pkcs8(der.as_ref()).expect("a key ring just made"))
        })
        .clone()
    }
}

/// Signs identity tokens and publishes their keys.
#[derive(Debug)]
pub struct Assertions {
    /// The request header the service receives the token in.
    pub header: http::HeaderName,
    /// `iss` of the tokens.
    pub issuer: String,
    pub lifetime_secs: u64,
    /// The first signs; all are published.
    keys: Vec<Arc<SigningKey>>,
    /// `/.well-known/jwks.json`, made once.
    pub jwks: bytes::Bytes,
}

impl Assertions {
    pub fn new(
        header: http::HeaderName,
        issuer: String,
        lifetime_secs: u64,
        keys: Vec<Arc<SigningKey>>,
    ) -> Self {
        assert!(!keys.is_empty(), "at least one signing key");
        let jwks =
            serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        Assertions {
            header,
            issuer,
            lifetime_secs,
            keys,
            jwks: jwks.to_string().into(),
        }
    }

    /// The token for `who` visiting `audience` (the request's host), at
    /// `now`: one the identity already holds for half its lifetime, else a
    /// new one.
    pub fn token(&self, who: &Identity, audience: &str, now: u64) -> http::HeaderValue {
        let mut signed = who.assertions.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, token, _)) =
            (signed.iter()).find(|(a, _, until)| &**a == audience && *until >= now)
        {
            return token.clone();
        }
        let token = self.sign(who, audience, now);
        signed.retain(|(a, _, until)| &**a != audience && *until >= now);
        if signed.len() >= SIGNED_PER_IDENTITY {
            signed.remove(0);
        }
        signed.push((audience.into(), token.clone(), now + self.lifetime_secs / 2));
        token
    }

    fn sign(&self, who: &Identity, audience: &str, now: u64) -> http::HeaderValue {
        let signer = &self.keys[0];
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": signer.kid });
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": who.subject,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_secs,
            "idp": who.issuer,
        });
        if let Some(email) = &who.email {
            claims["email"] = email.as_str().into();
        }
        if !who.groups.is_empty() {
            claims["groups"] = who.groups.clone().into();
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = signer
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("ECDSA signing does not fail with a working random source");
        let token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        );
        let mut value =
            http::HeaderValue::from_str(&token).expect("base64url is a valid header value");
        value.set_sensitive(true);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    fn who() -> Identity {
        Identity {
            issuer: "https://idp".into(),
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["eng".into()],
            organizations: vec![],
            claims: vec![],
            assertions: Default::default(),
            headers: vec![],
        }
    }

    #[test]
    fn tokens_verify_with_the_published_key_for_their_audience_only() {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../test-support/jwt-keys/ec.key"
        ))
        .unwrap();
        let key = Arc::new(SigningKey::from_pem(&pem).unwrap());
        let old = SigningKey::generated();
        let a = Assertions::new(
            http::HeaderName::from_static("x-preview-jwt-assertion"),
            "https://edge".into(),
            300,
            vec![key.clone(), old.clone()],
        );
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&a.jwks).unwrap();
        assert_eq!(jwks.keys.len(), 2, "the old key stays published");
        let now = super::super::now();
        let alice = who();
        let token = a.token(&alice, "a.preview.test", now);
        assert_eq!(a.token(&alice, "a.preview.test", now), token, "kept");
        assert_ne!(
            a.token(&who(), "a.preview.test", now),
            token,
            "another identity's own"
        );
        let token = token.to_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
        let jwk = jwks.find(&key.kid).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["a.preview.test"]);
        v.set_issuer(&["https://edge"]);
        let claims = decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["groups"][0], "eng");
        v.set_audience(&["b.preview.test"]);
        assert!(
            decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).is_err()
        );
        assert!(SigningKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
    }
}
