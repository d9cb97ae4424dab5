//! Browser sessions: what the edge keeps in its own cookies and hands
//! between hosts, sealed so that a visitor can neither read nor change it.
//!
//! Three things are sealed, each under its own key (derived from one
//! secret, so a value sealed as one is never accepted as another):
//!
//! - a [`Session`], in the session cookie of one host: who logged in,
//!   which host the cookie is for, when it ends;
//! - a [`Ticket`], in the one redirect that carries a session from the
//!   sign-in host to a preview's host (host-only cookies per preview, the
//!   handover Pomerium uses: see `docs/auth.md`);
//! - a [`LoginState`], in a short-lived cookie while the identity provider
//!   is visited: OAuth `state`, OIDC `nonce`, the PKCE verifier and where
//!   to return.
//!
//! AES-256-GCM with a random nonce per value; the keys are HKDF-SHA256 of
//! the configured secret. Stateless: any replica with the same secret
//! opens any cookie. Logout is remembered in [`Revocations`].

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{service_headers, Identity};

/// Shortest secret accepted: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;
/// A sealed value longer than this is refused before decoding (a browser
/// keeps about 4 KB per cookie).
pub const MAX_SEALED_BYTES: usize = 4096;

/// What a sealed value is for; part of the key and of the authenticated
/// data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Session,
    Ticket,
    Login,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"preview-edge session v1",
            Purpose::Ticket => b"preview-edge ticket v1",
            Purpose::Login => b"preview-edge login v1",
        }
    }
}

/// Why a sealed value was refused. Deliberately vague towards visitors:
/// the edge only says the session is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the value is too long")]
    TooLong,
    #[error("the value is not sealed by this edge")]
    Invalid,
}

/// Seals and opens values under keys derived from one secret.
pub struct Sealer {
    keys: [LessSafeKey; 3],
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// Keys from `secret` (at least [`MIN_SECRET_BYTES`]; checked by the
    /// config).
    pub fn new(secret: &[u8]) -> Self {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"preview-edge sealing");
        let prk = salt.extract(secret);
        let key = |purpose: Purpose| {
            let info = [purpose.label()];
            let okm = prk
                .expand(&info, &AES_256_GCM)
                .expect("an AES-256 key is a valid HKDF length");
            LessSafeKey::new(UnboundKey::from(okm))
        };
        Sealer {
            keys: [
                key(Purpose::Session),
                key(Purpose::Ticket),
                key(Purpose::Login),
            ],
            rng: SystemRandom::new(),
        }
    }

    fn key(&self, purpose: Purpose) -> &LessSafeKey {
        &self.keys[purpose as usize]
    }

    /// `value` as JSON, encrypted and authenticated, in URL-safe base64.
    pub fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = serde_json::to_vec(value).expect("sealed values serialize");
        self.key(purpose)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.label()),
                &mut data,
            )
            .expect("AES-GCM seals any length we write");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The value sealed in `text` for `purpose`.
    pub fn open<T: DeserializeOwned>(&self, purpose: Purpose, text: &str) -> Result<T, SealError> {
        if text.len() > MAX_SEALED_BYTES {
            return Err(SealError::TooLong);
        }
        let mut data = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| SealError::Invalid)?;
        if data.len() < NONCE_LEN {
            return Err(SealError::Invalid);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&data[..NONCE_LEN]).map_err(|_| SealError::Invalid)?;
        let plain = self
            .key(purpose)
            .open_within(nonce, Aad::from(purpose.label()), &mut data, NONCE_LEN..)
            .map_err(|_| SealError::Invalid)?;
        serde_json::from_slice(plain).map_err(|_| SealError::Invalid)
    }

    /// `bytes` random bytes, hex.
    pub fn random_hex(&self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.rng
            .fill(&mut buf)
            .expect("the system's random source works");
        hex::encode(buf)
    }

    /// 32 random bytes, URL-safe base64 (OAuth `state`, OIDC `nonce`, a
    /// PKCE verifier).
    pub fn random_token(&self) -> String {
        let mut buf = [0u8; 32];
        self.rng
            .fill(&mut buf)
            .expect("the system's random source works");
        URL_SAFE_NO_PAD.encode(buf)
    }
}

/// A signed-in visitor, as one host's session cookie holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Shared by every cookie of one sign-in: logout revokes them all.
    pub sid: String,
    /// The only host this cookie is accepted on.
    pub host: String,
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orgs: Vec<String>,
    /// Other string claims of the ID token worth keeping (name,
    /// preferred_username, an organization), for access rules and
    /// header templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<(String, String)>,
    /// The sign-in ends at this time, whatever happens (unix seconds).
    pub expires: u64,
    /// Last time the cookie was written: it lapses `idle` seconds later
    /// unless used, and is rewritten when used past half of that.
    pub seen: u64,
}

/// A session cookie, opened: the session and the identity it proves.
#[derive(Debug)]
pub struct Opened {
    pub session: Session,
    pub identity: std::sync::Arc<Identity>,
}

/// What a session needs at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Valid; write the cookie again (sliding expiry).
    Refresh,
    Expired,
}

impl Session {
    /// Whether the session still holds at `now`, with `idle` seconds
    /// allowed between uses.
    pub fn freshness(&self, now: u64, idle: u64) -> Freshness {
        let idle_until = self.seen.saturating_add(idle);
        if now >= self.expires || now >= idle_until {
            Freshness::Expired
        } else if now.saturating_sub(self.seen) > idle / 2 {
            Freshness::Refresh
        } else {
            Freshness::Fresh
        }
    }

    /// The identity this session proves.
    pub fn identity(&self) -> Identity {
        let mut claims = self.claims.clone();
        claims.push(("sub".into(), self.sub.clone()));
        claims.push(("iss".into(), self.iss.clone()));
        if let Some(email) = &self.email {
            claims.push(("email".into(), email.clone()));
        }
        Identity {
            issuer: self.iss.clone(),
            headers: service_headers(&self.sub, self.email.as_deref(), &self.groups),
            subject: self.sub.clone(),
            email: self.email.clone(),
            groups: self.groups.clone(),
            organizations: self.orgs.clone(),
            claims,
            assertions: Default::default(),
        }
    }
}

/// A session on its way from the sign-in host to one preview's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// For this host only (the session's `host` is set to it).
    pub session: Session,
    /// Path and query to land on.
    pub path: String,
    /// A ticket is good for a minute, and once.
    pub expires: u64,
    /// Its one-time mark.
    pub id: String,
}

/// How long a ticket is accepted after it is made.
pub const TICKET_SECS: u64 = 60;
/// How long a visitor may spend at the identity provider.
pub const LOGIN_SECS: u64 = 600;

/// A sign-in in progress, kept in a cookie on the sign-in host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// The address to return to, already checked.
    pub return_to: String,
    pub expires: u64,
}

/// Sign-ins ended by logout before their cookies expire, and tickets
/// already used: remembered until the cookie or ticket would have lapsed
/// anyway. Per process (shared through Redis once the edge has it).
#[derive(Debug, Default)]
pub struct Revocations {
    ended: Mutex<HashMap<String, u64>>,
}

/// Entries kept at most; beyond it the ones already lapsed go first, then
/// new entries evict the soonest to lapse.
const MAX_REVOCATIONS: usize = 100_000;

impl Revocations {
    /// Remembers `id` as ended until `until` (unix seconds). Returns false
    /// if it already was.
    pub fn end(&self, id: &str, until: u64, now: u64) -> bool {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if ended.get(id).is_some_and(|&u| u > now) {
            return false;
        }
        if ended.len() >= MAX_REVOCATIONS {
            ended.retain(|_, &mut u| u > now);
            if ended.len() >= MAX_REVOCATIONS {
                if let Some(soonest) = ended.iter().min_by_key(|(_, &u)| u).map(|(k, _)| k.clone())
                {
                    ended.remove(&soonest);
                }
            }
        }
        ended.insert(id.to_owned(), until);
        true
    }

    pub fn is_ended(&self, id: &str, now: u64) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.get(id).is_some_and(|&u| u > now)
    }
}

/// The value of cookie `name` in a request's `Cookie` headers, if it is
/// there exactly once (two cookies of one name, as a sibling host can
/// plant with a `Domain` attribute, are refused rather than guessed at).
pub fn cookie<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &str) -> CookieValue<'a> {
    let mut found = CookieValue::Absent;
    for header in headers {
        let Ok(header) = std::str::from_utf8(header) else {
            continue;
        };
        for pair in header.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if k.trim() == name {
                found = match found {
                    CookieValue::Absent => CookieValue::One(v.trim().trim_matches('"')),
                    _ => CookieValue::Several,
                };
            }
        }
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieValue<'a> {
    Absent,
    One(&'a str),
    Several,
}

/// A `Cookie` header without the cookies named in `names` (`None`: there
/// was none of them; `Some("")`: nothing else was left).
pub fn without_cookies(header: &[u8], names: &[&str]) -> Option<String> {
    let header = std::str::from_utf8(header).ok()?;
    let mut removed = false;
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k).trim();
            let ours = names.contains(&name);
            removed |= ours;
            !ours && !pair.is_empty()
        })
        .collect();
    removed.then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            sid: "s1".into(),
            host: "a.preview.test".into(),
            iss: "https://idp".into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["eng".into()],
            orgs: vec!["acme".into()],
            claims: vec![("name".into(), "Alice".into())],
            expires: 2_000,
            seen: 1_000,
        }
    }

    #[test]
    fn sealed_values_open_only_for_their_purpose_and_secret() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal(Purpose::Session, &session());
        assert_eq!(
            sealer.open::<Session>(Purpose::Session, &sealed),
            Ok(session())
        );
        assert_eq!(
            sealer.open::<Session>(Purpose::Ticket, &sealed),
            Err(SealError::Invalid)
        );
        let other = Sealer::new(&[8; 32]);
        assert_eq!(
            other.open::<Session>(Purpose::Session, &sealed),
            Err(SealError::Invalid)
        );
        // Two seals of one value differ (random nonce).
        assert_ne!(sealed, sealer.seal(Purpose::Session, &session()));
    }

    #[test]
    fn tampered_truncated_and_oversized_values_are_refused() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal(Purpose::Session, &session());
        let open = |s: &str| sealer.open::<Session>(Purpose::Session, s);
        for i in [0, 5, 20, sealed.len() / 2, sealed.len() - 1] {
            let mut bytes = sealed.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(open(&tampered), Err(SealError::Invalid), "byte {i}");
        }
        for len in [0, 1, 10, 16, sealed.len() - 1] {
            assert_eq!(open(&sealed[..len]), Err(SealError::Invalid), "len {len}");
        }
        assert_eq!(open("not base64 !"), Err(SealError::Invalid));
        assert_eq!(open(&"A".repeat(5000)), Err(SealError::TooLong));
    }

    #[test]
    fn sessions_slide_and_lapse() {
        let s = session(); // seen 1000, expires 2000
        assert_eq!(s.freshness(1_100, 600), Freshness::Fresh);
        assert_eq!(s.freshness(1_400, 600), Freshness::Refresh);
        assert_eq!(s.freshness(1_600, 600), Freshness::Expired);
        assert_eq!(s.freshness(2_000, 10_000), Freshness::Expired);
        let id = s.identity();
        assert_eq!(id.subject, "alice");
        assert!(id.claims.contains(&("name".into(), "Alice".into())));
        assert!(id
            .claims
            .contains(&("email".into(), "alice@example.com".into())));
    }

    #[test]
    fn revocations_are_remembered_until_they_lapse() {
        let r = Revocations::default();
        assert!(r.end("s1", 100, 10));
        assert!(!r.end("s1", 100, 20));
        assert!(r.is_ended("s1", 99));
        assert!(!r.is_ended("s1", 100));
        assert!(!r.is_ended("s2", 10));
    }

    #[test]
    fn cookies_are_found_once_and_removed() {
        let one = [b"a=1; _s=xyz; b=2".as_slice()];
        assert_eq!(cookie(one, "_s"), CookieValue::One("xyz"));
        assert_eq!(cookie(one, "s"), CookieValue::Absent);
        let twice = [b"_s=1".as_slice(), b"b=2; _s=2".as_slice()];
        assert_eq!(cookie(twice, "_s"), CookieValue::Several);
        assert_eq!(
            without_cookies(b"a=1; _s=xyz;b=2", &["_s"]),
            Some("a=1; b=2".into())
        );
        assert_eq!(without_cookies(b"_s=xyz", &["_s"]), Some(String::new()));
        assert_eq!(without_cookies(b"a=1; b=2", &["_s"]), None);
    }
}
