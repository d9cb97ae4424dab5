//! An issuer's verification keys, from files: a PEM public key (RSA, EC or
//! Ed25519), a JWK or a JWK set (JSON), or an HMAC secret. Each key knows
//! its family and only ever verifies that family's algorithms.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

pub use jsonwebtoken::AlgorithmFamily as Family;

/// One verification key.
#[derive(Clone)]
pub struct Key {
    /// The key id tokens name in `kid` (JWKs carry one; PEM keys have none
    /// and verify tokens with or without a `kid`).
    pub kid: Option<String>,
    pub family: Family,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish()
    }
}

impl Key {
    /// Whether this key may verify `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        alg.family() == self.family
    }
}

/// The keys in a public-key file: PEM, or JSON (one JWK or a set).
pub fn public_keys(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "neither PEM nor JSON".to_owned())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return jwk_keys(trimmed);
    }
    if !trimmed.starts_with("-----BEGIN") {
        return Err("neither a PEM public key nor a JWK (set)".into());
    }
    if trimmed.contains("PRIVATE KEY") {
        return Err("a private key: give the public key (the edge only verifies)".into());
    }
    let pem = text.as_bytes();
    let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (Family::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (Family::Ec, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (Family::Ed, k)
    } else {
        return Err("not an RSA, EC or Ed25519 public key".into());
    };
    Ok(vec![Key {
        kid: None,
        family: key.0,
        key: key.1,
    }])
}

fn jwk_keys(text: &str) -> Result<Vec<Key>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let jwks: Vec<Jwk> = if value.get("keys").is_some() {
        serde_json::from_value::<JwkSet>(value)
            .map_err(|e| format!("not a JWK set: {e}"))?
            .keys
    } else {
        vec![serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?]
    };
    let mut keys = Vec::new();
    for (i, jwk) in jwks.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
        let family = key.family();
        if family == Family::Hmac {
            return Err(format!(
                "key {i}: a symmetric key: give HMAC secrets with secret_file"
            ));
        }
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            family,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the JWK set has no keys".into());
    }
    Ok(keys)
}

/// An HMAC secret (the file's bytes, a trailing newline aside).
pub fn secret(bytes: &[u8]) -> Result<Key, String> {
    let secret = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if secret.len() < 32 {
        return Err(format!(
            "{} bytes: an HMAC secret needs at least 32 (256 bits)",
            secret.len()
        ));
    }
    if secret.starts_with(b"-----BEGIN") || secret.starts_with(b"{") {
        return Err("looks like a public key: public keys go under keys, never as secrets".into());
    }
    Ok(Key {
        kid: None,
        family: Family::Hmac,
        key: DecodingKey::from_secret(secret),
    })
}

/// An issuer's current keys: fixed (from files), or replaced as a JWKS
/// fetched by URL changes (by the `idp` room; a failed fetch keeps the
/// keys it had).
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: arc_swap::ArcSwap<Vec<Key>>,
}

impl KeyRing {
    pub fn new(keys: Vec<Key>) -> Self {
        KeyRing {
            keys: arc_swap::ArcSwap::from_pointee(keys),
        }
    }

    pub fn current(&self) -> arc_swap::Guard<std::sync::Arc<Vec<Key>>> {
        self.keys.load()
    }

    pub fn replace(&self, keys: Vec<Key>) {
        self.keys.store(std::sync::Arc::new(keys));
    }
}
