//! Security headers on responses: HSTS, `X-Content-Type-Options`,
//! `Referrer-Policy`, `X-Frame-Options` and CSP `frame-ancestors`. Each is
//! added only when the response does not carry that header already (the
//! service's own value wins; a response `set` rule forces one).

use crate::config::{RawSecurityHeaders, Switch};
use crate::headers::{Name, Value};
use crate::validate::seconds;

/// HSTS `max-age` when not given: one year.
pub const DEFAULT_HSTS_MAX_AGE: u64 = 365 * 24 * 3600;
/// `referrer_policy: true`.
pub const RECOMMENDED_REFERRER_POLICY: &str = "strict-origin-when-cross-origin";
/// `frame_options: true`.
pub const RECOMMENDED_FRAME_OPTIONS: &str = "DENY";
/// `frame_ancestors: true`.
pub const RECOMMENDED_FRAME_ANCESTORS: &str = "'none'";

const REFERRER_POLICIES: &[&str] = &[
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

/// One header as a layer of policy states it: not mentioned (inherit), off,
/// or this value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Setting {
    #[default]
    Inherit,
    Off,
    Value(String),
}

impl Setting {
    fn over(&self, below: &Setting) -> Setting {
        match self {
            Setting::Inherit => below.clone(),
            other => other.clone(),
        }
    }
}

/// The five settings, in the order their headers are added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecurityHeaders {
    settings: [Setting; 5],
}

const NAMES: [&str; 5] = [
    "strict-transport-security",
    "x-content-type-options",
    "referrer-policy",
    "x-frame-options",
    "content-security-policy",
];

impl SecurityHeaders {
    /// This layer over `below`, field by field.
    pub(crate) fn over(&self, below: &SecurityHeaders) -> SecurityHeaders {
        let mut settings = self.settings.clone();
        for (s, b) in settings.iter_mut().zip(&below.settings) {
            *s = s.over(b);
        }
        SecurityHeaders { settings }
    }

    /// The headers to add when absent.
    pub(crate) fn headers(&self) -> Vec<(Name, Value)> {
        NAMES
            .iter()
            .zip(&self.settings)
            .filter_map(|(name, s)| match s {
                Setting::Value(v) => Some((Name::new(*name), Value::new(v.as_str()))),
                _ => None,
            })
            .collect()
    }
}

pub(crate) fn compile(
    raw: &RawSecurityHeaders,
    path: &str,
    problems: &mut Vec<String>,
) -> SecurityHeaders {
    let hsts = match &raw.hsts {
        None => Setting::Inherit,
        Some(Switch::Off) => Setting::Off,
        Some(Switch::Recommended) => Setting::Value(format!("max-age={DEFAULT_HSTS_MAX_AGE}")),
        Some(Switch::On(h)) => {
            let max_age = h
                .max_age
                .as_ref()
                .and_then(|s| seconds(s, &format!("{path}.hsts.max_age"), problems))
                .unwrap_or(DEFAULT_HSTS_MAX_AGE);
            if h.preload && (!h.include_subdomains || max_age < DEFAULT_HSTS_MAX_AGE) {
                problems.push(format!(
                    "{path}.hsts.preload: needs include_subdomains: true and max_age of at least a year (hstspreload.org rules)"
                ));
            }
            let mut v = format!("max-age={max_age}");
            if h.include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if h.preload {
                v.push_str("; preload");
            }
            Setting::Value(v)
        }
    };
    let content_type = match &raw.content_type_options {
        None => Setting::Inherit,
        Some(Switch::Off) => Setting::Off,
        Some(Switch::Recommended) => Setting::Value("nosniff".into()),
        Some(Switch::On(v)) if v.eq_ignore_ascii_case("nosniff") => {
            Setting::Value("nosniff".into())
        }
        Some(Switch::On(v)) => {
            problems.push(format!(
                "{path}.content_type_options: {v:?} is not valid (true, false or nosniff)"
            ));
            Setting::Off
        }
    };
    let referrer = match &raw.referrer_policy {
        None => Setting::Inherit,
        Some(Switch::Off) => Setting::Off,
        Some(Switch::Recommended) => Setting::Value(RECOMMENDED_REFERRER_POLICY.into()),
        Some(Switch::On(v)) => {
            let lower = v.to_ascii_lowercase();
            if REFERRER_POLICIES.contains(&lower.as_str()) {
                Setting::Value(lower)
            } else {
                problems.push(format!(
                    "{path}.referrer_policy: {v:?} is not a referrer policy (one of {})",
                    REFERRER_POLICIES.join(", ")
                ));
                Setting::Off
            }
        }
    };
    let frame_options = match &raw.frame_options {
        None => Setting::Inherit,
        Some(Switch::Off) => Setting::Off,
        Some(Switch::Recommended) => Setting::Value(RECOMMENDED_FRAME_OPTIONS.into()),
        Some(Switch::On(v)) => match v.to_ascii_lowercase().as_str() {
            "deny" => Setting::Value("DENY".into()),
            "sameorigin" => Setting::Value("SAMEORIGIN".into()),
            _ => {
                problems.push(format!(
                    "{path}.frame_options: {v:?} is not valid (deny or sameorigin; use frame_ancestors for a list of sites)"
                ));
                Setting::Off
            }
        },
    };
    let frame_ancestors = match &raw.frame_ancestors {
        None => Setting::Inherit,
        Some(Switch::Off) => Setting::Off,
        Some(Switch::Recommended) => {
            Setting::Value(format!("frame-ancestors {RECOMMENDED_FRAME_ANCESTORS}"))
        }
        Some(Switch::On(sources)) => {
            if sources.is_empty() {
                problems.push(format!(
                    "{path}.frame_ancestors: must not be empty (use ['none'] to forbid framing, or false)"
                ));
            }
            for (i, s) in sources.iter().enumerate() {
                if !is_frame_source(s) {
                    problems.push(format!(
                        "{path}.frame_ancestors[{i}]: {s:?} is not a CSP source ('self', 'none', https:, https://a.example.com, https://*.example.com)"
                    ));
                }
            }
            if sources.len() > 1 && sources.iter().any(|s| s == "'none'") {
                problems.push(format!(
                    "{path}.frame_ancestors: 'none' must be the only source"
                ));
            }
            Setting::Value(format!("frame-ancestors {}", sources.join(" ")))
        }
    };
    SecurityHeaders {
        settings: [hsts, content_type, referrer, frame_options, frame_ancestors],
    }
}

/// A CSP source expression fit for `frame-ancestors`: a keyword, a scheme,
/// or a host source with an optional scheme, `*.` prefix, port and path.
fn is_frame_source(s: &str) -> bool {
    if s == "'self'" || s == "'none'" || s == "*" {
        return true;
    }
    if let Some(scheme) = s.strip_suffix(':') {
        return !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    }
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b':' | b'/' | b'_' | b'~')
        })
}
