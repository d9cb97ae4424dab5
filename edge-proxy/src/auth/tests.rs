//! The bearer-token attack corpus against the verifier, one case each, with
//! keys from `test-support/jwt-keys`.

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const ISS: &str = "https://id.example.test";
const AUD: &str = "preview";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hmac";

fn key_file(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../test-support/jwt-keys/");
    std::fs::read(format!("{path}{name}")).unwrap()
}

fn signing_key(alg: Algorithm, file: &str) -> EncodingKey {
    match alg.family() {
        keys::Family::Rsa => EncodingKey::from_rsa_pem(&key_file(file)).unwrap(),
        keys::Family::Ec => EncodingKey::from_ec_pem(&key_file(file)).unwrap(),
        keys::Family::Ed => EncodingKey::from_ed_pem(&key_file(file)).unwrap(),
        keys::Family::Hmac => EncodingKey::from_secret(SECRET),
    }
}

fn issuer(algorithms: &[Algorithm], keys: Vec<keys::Key>) -> Issuer {
    Issuer {
        issuer: ISS.into(),
        keys: Arc::new(keys::KeyRing::new(keys)),
        remote: false,
        validation: validation(ISS, algorithms.to_vec(), &[AUD.into()], DEFAULT_LEEWAY_SECS),
        email_claim: "email".into(),
        groups_claim: "groups".into(),
        organization_claim: "org".into(),
        required_claims: Vec::new(),
    }
}

/// An issuer trusting the RSA, EC and Ed25519 public keys and the secret.
fn verifier() -> Verifier {
    let mut keys = Vec::new();
    for file in ["rsa.pub", "ec.pub", "ed.pub"] {
        keys.extend(keys::public_keys(&key_file(file)).unwrap());
    }
    keys.push(keys::secret(SECRET).unwrap());
    use Algorithm::*;
    Verifier::new(vec![issuer(
        &[
            RS256, RS384, RS512, PS256, PS384, PS512, ES256, EdDSA, HS256, HS384, HS512,
        ],
        keys,
    )])
}

fn claims() -> Value {
    let now = now();
    json!({ "iss": ISS, "aud": AUD, "sub": "u-1", "email": "a@example.com",
            "groups": ["eng", "ops"], "iat": now, "exp": now + 600 })
}

fn token(alg: Algorithm, file: &str, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &signing_key(alg, file)).unwrap()
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A token with a hand-written header and no valid signature.
fn forged(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

#[test]
fn every_supported_algorithm_verifies_and_yields_the_identity() {
    let v = verifier();
    use Algorithm::*;
    for (alg, file) in [
        (RS256, "rsa.key"),
        (RS384, "rsa.key"),
        (RS512, "rsa.key"),
        (PS256, "rsa.key"),
        (PS384, "rsa.key"),
        (PS512, "rsa.key"),
        (ES256, "ec.key"),
        (EdDSA, "ed.key"),
        (HS256, ""),
        (HS384, ""),
        (HS512, ""),
    ] {
        let who = v
            .verify(&token(alg, file, &claims()))
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(who.subject, "u-1");
        assert_eq!(who.email.as_deref(), Some("a@example.com"));
        assert_eq!(who.groups, ["eng", "ops"]);
        assert!(who.claims.contains(&("sub".into(), "u-1".into())));
    }
}

#[test]
fn alg_none_is_refused_in_every_spelling() {
    let v = verifier();
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        for sig in ["", "e30"] {
            let t = forged(&json!({ "alg": alg, "typ": "JWT" }), &claims(), sig);
            assert_eq!(v.verify(&t), Err(TokenError::Malformed), "{alg:?} {sig:?}");
        }
    }
}

#[test]
fn a_public_key_is_never_an_hmac_secret() {
    // The classic confusion: HS256 keyed with the RSA public key's PEM.
    let rsa_only = Verifier::new(vec![issuer(
        &[Algorithm::RS256],
        keys::public_keys(&key_file("rsa.pub")).unwrap(),
    )]);
    let pem = key_file("rsa.pub");
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_eq!(rsa_only.verify(&t), Err(TokenError::Algorithm));
    // Even an issuer that also accepts HS256 never tries its RSA key for it.
    let both = Verifier::new(vec![issuer(
        &[Algorithm::RS256, Algorithm::HS256],
        keys::public_keys(&key_file("rsa.pub")).unwrap(),
    )]);
    assert_eq!(both.verify(&t), Err(TokenError::UnknownKey));
    // And a public key is refused as a secret file.
    assert!(keys::secret(&pem).is_err());
}

#[test]
fn time_audience_issuer_and_claims_are_checked() {
    let v = verifier();
    let now = now();
    let with = |patch: Value| {
        let mut c = claims();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
        }
        token(Algorithm::ES256, "ec.key", &c)
    };
    assert_eq!(
        v.verify(&with(json!({ "exp": now - 120 }))),
        Err(TokenError::Expired)
    );
    assert!(
        v.verify(&with(json!({ "exp": now - 10 }))).is_ok(),
        "within the leeway"
    );
    assert_eq!(
        v.verify(&with(json!({ "nbf": now + 120 }))),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(
        v.verify(&with(json!({ "aud": "other" }))),
        Err(TokenError::Audience)
    );
    assert_eq!(
        v.verify(&with(json!({ "iss": "https://evil.example" }))),
        Err(TokenError::Issuer)
    );
    for claim in ["exp", "sub", "aud", "iss"] {
        assert_eq!(
            v.verify(&with(json!({ claim: null }))),
            Err(TokenError::MissingClaim(claim.into())),
            "{claim}"
        );
    }
}

#[test]
fn signatures_are_checked() {
    let v = verifier();
    let good = token(Algorithm::RS256, "rsa.key", &claims());
    let (head, sig) = good.rsplit_once('.').unwrap();
    // A flipped signature byte, a stripped signature, a foreign key.
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    bytes[10] ^= 1;
    assert_eq!(
        v.verify(&format!("{head}.{}", b64(&bytes))),
        Err(TokenError::Signature)
    );
    assert!(v.verify(&format!("{head}.")).is_err());
    assert!(v.verify(head).is_err());
    let foreign = token(Algorithm::RS256, "other-rsa.key", &claims());
    assert_eq!(v.verify(&foreign), Err(TokenError::Signature));
    // A changed payload under the original signature.
    let mut c = claims();
    c["sub"] = json!("admin");
    let (_, payload_sig) = good.split_once('.').unwrap();
    let (_, sig) = payload_sig.split_once('.').unwrap();
    let swapped = format!(
        "{}.{}.{sig}",
        good.split('.').next().unwrap(),
        b64(c.to_string().as_bytes())
    );
    assert_eq!(v.verify(&swapped), Err(TokenError::Signature));
}

#[test]
fn keys_come_from_configuration_never_from_the_token() {
    let v = verifier();
    let attacker = EncodingKey::from_rsa_pem(&key_file("other-rsa.key")).unwrap();
    let attacker_jwk = Jwk::from_encoding_key(&attacker, Algorithm::RS256).unwrap();
    for field in ["jwk", "jku", "x5u"] {
        let mut h = Header::new(Algorithm::RS256);
        match field {
            "jwk" => h.jwk = Some(attacker_jwk.clone()),
            "jku" => h.jku = Some("https://evil.example/jwks.json".into()),
            _ => h.x5u = Some("https://evil.example/cert.pem".into()),
        }
        let t = encode(&h, &claims(), &attacker).unwrap();
        assert_eq!(v.verify(&t), Err(TokenError::Signature), "{field}");
    }
}

#[test]
fn key_ids_select_keys_and_tricks_find_none() {
    let signing = EncodingKey::from_ec_pem(&key_file("ec.key")).unwrap();
    let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let set = serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap();
    let v = Verifier::new(vec![issuer(
        &[Algorithm::ES256],
        keys::public_keys(&set).unwrap(),
    )]);
    let with_kid = |kid: &str| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        encode(&h, &claims(), &signing).unwrap()
    };
    assert!(v.verify(&with_kid("k1")).is_ok());
    for kid in ["k2", "../../etc/passwd", "' OR 1=1 --", "k1\0", ""] {
        assert_eq!(
            v.verify(&with_kid(kid)),
            Err(TokenError::UnknownKey),
            "{kid:?}"
        );
    }
}

#[test]
fn oversized_and_garbage_tokens_are_refused_cheaply() {
    let v = verifier();
    let huge = format!("eyJ{}", "A".repeat(100 << 10));
    assert_eq!(v.verify(&huge), Err(TokenError::TooLarge));
    for junk in [
        "",
        "a",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        "😀.😀.😀",
    ] {
        assert!(v.verify(junk).is_err(), "{junk:?}");
    }
}

#[test]
fn the_cache_is_bounded_and_keeps_identities() {
    let v = verifier();
    let t = token(Algorithm::EdDSA, "ed.key", &claims());
    let first = v.verify(&t).unwrap();
    let again = v.verify(&t).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the second verification is the cached one"
    );
    let key = signing_key(Algorithm::HS256, "");
    for i in 0..cache::CACHE_ENTRIES + 10 {
        let mut c = claims();
        c["sub"] = json!(format!("u-{i}"));
        v.verify(&encode(&Header::new(Algorithm::HS256), &c, &key).unwrap())
            .unwrap();
    }
    assert!(v.cache.entries() <= cache::CACHE_ENTRIES);
}

#[test]
fn key_files_are_checked_at_load() {
    assert!(keys::public_keys(&key_file("rsa.key"))
        .unwrap_err()
        .contains("private key"));
    assert!(keys::public_keys(b"hello").is_err());
    assert!(keys::public_keys(b"{\"keys\": []}").is_err());
    assert!(keys::secret(b"short").unwrap_err().contains("at least 32"));
    assert_eq!(
        keys::public_keys(&key_file("ec.pub")).unwrap()[0].family,
        keys::Family::Ec
    );
}

#[test]
fn required_claims_must_be_present() {
    let mut issuer = issuer(
        &[Algorithm::ES256],
        keys::public_keys(&key_file("ec.pub")).unwrap(),
    );
    issuer.required_claims = vec!["tenant".into()];
    let v = Verifier::new(vec![issuer]);
    let without = token(Algorithm::ES256, "ec.key", &claims());
    assert_eq!(
        v.verify(&without),
        Err(TokenError::MissingClaim("tenant".into()))
    );
    let mut with = claims();
    with["tenant"] = json!("acme");
    assert!(v.verify(&token(Algorithm::ES256, "ec.key", &with)).is_ok());
    with["tenant"] = json!(null);
    assert!(v.verify(&token(Algorithm::ES256, "ec.key", &with)).is_err());
}
