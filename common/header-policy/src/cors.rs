//! Cross-origin resource sharing for configured origins: preflights are
//! answered locally, actual responses get `Access-Control-Allow-Origin` and
//! `Vary: Origin`. When CORS is configured the policy owns these headers: the
//! service's own `Access-Control-Allow-*` and `-Expose-Headers` are replaced.

use crate::conditions::is_hostname;
use crate::headers::{is_token, Headers};
use crate::{LocalResponse, RequestFacts};

/// Methods allowed when `allow_methods` is not given.
pub const DEFAULT_ALLOW_METHODS: &[&str] = &["GET", "HEAD", "POST"];

/// Response headers the policy owns when CORS is on.
const OWNED: &[&str] = &[
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub(crate) origins: Vec<OriginPattern>,
    /// `*` in `allow_origins` (never with credentials).
    pub(crate) any_origin: bool,
    pub(crate) methods: Vec<String>,
    /// Lowercase names; `*` alone means any (never with credentials).
    pub(crate) headers: Vec<String>,
    pub(crate) expose: Vec<String>,
    pub(crate) credentials: bool,
    pub(crate) max_age: Option<u64>,
    // Precomputed response values.
    pub(crate) methods_value: String,
    pub(crate) headers_value: String,
    pub(crate) expose_value: String,
    pub(crate) max_age_value: String,
}

/// `https://app.example.com[:port]` or `https://*.example.com[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OriginPattern {
    scheme: String,
    /// Exact host, or the suffix with its dot when `subdomains`.
    host: String,
    subdomains: bool,
    port: Option<String>,
}

impl OriginPattern {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{s:?} is not an origin ({why}; expected https://app.example.com or https://*.example.com)")
        };
        let lower = s.to_ascii_lowercase();
        let (scheme, rest) = lower.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("scheme must be http or https"));
        }
        if rest.contains('/') {
            return Err(bad("an origin has no path, not even a trailing /"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p))
                if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (h, Some(p.to_owned()))
            }
            Some(_) => return Err(bad("bad port")),
            None => (rest, None),
        };
        let (host, subdomains) = match host.strip_prefix("*.") {
            Some(suffix) => (format!(".{suffix}"), true),
            None => (host.to_owned(), false),
        };
        if !is_hostname(host.trim_start_matches('.')) {
            return Err(bad("bad host"));
        }
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
            subdomains,
            port,
        })
    }

    fn matches(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(&self.scheme) {
            return false;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if port != self.port.as_deref() {
            return false;
        }
        if self.subdomains {
            let Some(label_end) = host.len().checked_sub(self.host.len()) else {
                return false;
            };
            label_end > 0
                && host.is_char_boundary(label_end)
                && host[label_end..].eq_ignore_ascii_case(&self.host)
                && is_hostname(&host[..label_end])
        } else {
            host.eq_ignore_ascii_case(&self.host)
        }
    }
}

impl Cors {
    /// Whether `facts.origin` may read responses.
    fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.matches(origin))
    }

    /// The `Access-Control-Allow-Origin` value for an allowed origin.
    fn allow_origin_value<'a>(&self, origin: &'a str) -> &'a str {
        if self.any_origin {
            "*"
        } else {
            origin
        }
    }

    /// A CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`. Answered locally: 204 with the
    /// allowed methods and headers, or 403 without CORS headers when the
    /// origin, method or a requested header is not allowed.
    pub(crate) fn preflight(
        &self,
        facts: &RequestFacts<'_>,
        headers: &impl Headers,
    ) -> Option<LocalResponse> {
        if facts.method != "OPTIONS" {
            return None;
        }
        let origin = facts.origin?;
        let requested_method = headers.get("access-control-request-method")?;
        let mut vary = Vec::new();
        if !self.any_origin {
            vary.push(("vary", "Origin".to_owned()));
        }
        let method_ok = self
            .methods
            .iter()
            .any(|m| m.as_bytes() == requested_method)
            || DEFAULT_ALLOW_METHODS
                .iter()
                .any(|m| m.as_bytes() == requested_method);
        let any_header = self.headers.iter().any(|h| h == "*") && !self.credentials;
        let headers_ok = any_header
            || headers
                .get_all("access-control-request-headers")
                .flat_map(|v| v.split(|&b| b == b','))
                .map(|h| h.trim_ascii())
                .filter(|h| !h.is_empty())
                .all(|h| {
                    self.headers
                        .iter()
                        .any(|a| a.as_bytes().eq_ignore_ascii_case(h))
                });
        if !(self.allows(origin) && method_ok && headers_ok) {
            return Some(LocalResponse {
                status: 403,
                headers: vary,
            });
        }
        let mut out = vec![
            (
                "access-control-allow-origin",
                self.allow_origin_value(origin).to_owned(),
            ),
            ("access-control-allow-methods", self.methods_value.clone()),
        ];
        if !self.headers_value.is_empty() {
            out.push(("access-control-allow-headers", self.headers_value.clone()));
        }
        if self.credentials {
            out.push(("access-control-allow-credentials", "true".to_owned()));
        }
        if self.max_age.is_some() {
            out.push(("access-control-max-age", self.max_age_value.clone()));
        }
        out.extend(vary);
        Some(LocalResponse {
            status: 204,
            headers: out,
        })
    }

    /// CORS headers on an actual response.
    pub(crate) fn on_response(&self, facts: &RequestFacts<'_>, headers: &mut impl Headers) {
        for name in OWNED {
            if headers.contains(name) {
                headers.remove(name);
            }
        }
        if let Some(origin) = facts.origin.filter(|o| self.allows(o)) {
            headers.set(
                "access-control-allow-origin",
                self.allow_origin_value(origin).as_bytes(),
            );
            if self.credentials {
                headers.set("access-control-allow-credentials", b"true");
            }
            if !self.expose_value.is_empty() {
                headers.set(
                    "access-control-expose-headers",
                    self.expose_value.as_bytes(),
                );
            }
        }
        if !self.any_origin && !varies_by_origin(headers) {
            headers.append("vary", b"Origin");
        }
    }
}

/// Whether a `Vary` value already lists `Origin` (or `*`).
fn varies_by_origin(headers: &impl Headers) -> bool {
    headers
        .get_all("vary")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|v| v.trim_ascii())
        .any(|v| v == b"*" || v.eq_ignore_ascii_case(b"origin"))
}

/// Compiles the `cors:` block; problems are pushed with their paths.
pub(crate) fn compile(
    raw: &crate::config::RawCors,
    path: &str,
    problems: &mut Vec<String>,
) -> Cors {
    let mut origins = Vec::new();
    let mut any_origin = false;
    if raw.allow_origins.is_empty() {
        problems.push(format!(
            "{path}.allow_origins: at least one origin is required"
        ));
    }
    for (i, o) in raw.allow_origins.iter().enumerate() {
        if o == "*" {
            any_origin = true;
            if raw.allow_credentials {
                problems.push(format!(
                    "{path}.allow_origins[{i}]: \"*\" cannot be combined with allow_credentials: true (browsers refuse it); list the origins"
                ));
            }
        } else if o == "null" {
            problems.push(format!(
                "{path}.allow_origins[{i}]: \"null\" would admit sandboxed and file: pages; not allowed"
            ));
        } else {
            match OriginPattern::parse(o) {
                Ok(p) => origins.push(p),
                Err(e) => problems.push(format!("{path}.allow_origins[{i}]: {e}")),
            }
        }
    }
    let methods: Vec<String> = match &raw.allow_methods {
        Some(m) => m.clone(),
        None => DEFAULT_ALLOW_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect(),
    };
    for (i, m) in methods.iter().enumerate() {
        if !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
            problems.push(format!(
                "{path}.allow_methods[{i}]: {m:?} is not a method (uppercase token, e.g. PUT)"
            ));
        }
    }
    if raw.allow_methods.as_ref().is_some_and(Vec::is_empty) {
        problems.push(format!(
            "{path}.allow_methods: must not be empty (omit it for GET, HEAD, POST)"
        ));
    }
    let names = |list: &[String], field: &str, problems: &mut Vec<String>| -> Vec<String> {
        let mut out = Vec::new();
        for (i, h) in list.iter().enumerate() {
            if h == "*" {
                if raw.allow_credentials {
                    problems.push(format!(
                        "{path}.{field}[{i}]: \"*\" is not a wildcard with allow_credentials: true; list the headers"
                    ));
                }
            } else if !is_token(h) {
                problems.push(format!(
                    "{path}.{field}[{i}]: {h:?} is not a valid header name"
                ));
            }
            out.push(h.to_ascii_lowercase());
        }
        out
    };
    let headers = names(&raw.allow_headers, "allow_headers", problems);
    let expose = names(&raw.expose_headers, "expose_headers", problems);
    let max_age = raw
        .max_age
        .as_ref()
        .and_then(|s| crate::validate::seconds(s, &format!("{path}.max_age"), problems));
    Cors {
        origins,
        any_origin,
        methods_value: methods.join(", "),
        headers_value: headers.join(", "),
        expose_value: expose.join(", "),
        max_age_value: max_age.map(|s| s.to_string()).unwrap_or_default(),
        methods,
        headers,
        expose,
        credentials: raw.allow_credentials,
        max_age,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_patterns() {
        let exact = OriginPattern::parse("https://App.example.com").unwrap();
        assert!(
            exact.matches("https://app.example.com") && exact.matches("HTTPS://APP.EXAMPLE.COM")
        );
        assert!(
            !exact.matches("http://app.example.com")
                && !exact.matches("https://app.example.com:8443")
        );
        let sub = OriginPattern::parse("https://*.example.com:8443").unwrap();
        assert!(
            sub.matches("https://a.example.com:8443")
                && sub.matches("https://a.b.example.com:8443")
        );
        assert!(!sub.matches("https://example.com:8443") && !sub.matches("https://a.example.com"));
        assert!(
            !sub.matches("https://evil.com/.example.com:8443")
                && !sub.matches("https://a@b.example.com:8443")
        );
        assert!(!sub.matches("null") && !sub.matches(""));
        for bad in [
            "app.example.com",
            "ftp://a.com",
            "https://a.com/",
            "https://a.com:x",
            "https://a_b.com",
            "https://*.",
            "https://",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
