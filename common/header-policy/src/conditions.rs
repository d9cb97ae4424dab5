//! When a rule applies: host, path prefix, method and route, compared
//! without allocating.

use crate::RequestFacts;

/// The compiled `when:` of a rule. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub(crate) hosts: Vec<HostPattern>,
    pub(crate) paths: Vec<String>,
    pub(crate) methods: Vec<String>,
    pub(crate) routes: Vec<String>,
}

impl Conditions {
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        (self.hosts.is_empty() || {
            let host = facts.host_without_port();
            self.hosts.iter().any(|h| h.matches(host))
        }) && (self.paths.is_empty() || self.paths.iter().any(|p| path_matches(p, facts.path)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == facts.method))
            && (self.routes.is_empty()
                || facts
                    .route
                    .is_some_and(|r| self.routes.iter().any(|x| x == r)))
    }
}

/// `app.example.com` (exact) or `*.example.com` (any subdomain, not the
/// apex); compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Subdomains(String),
}

impl HostPattern {
    /// Parses a pattern; the error says why it is not one.
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if is_hostname(suffix) {
                return Ok(Self::Subdomains(format!(".{suffix}")));
            }
        } else if is_hostname(&lower) {
            return Ok(Self::Exact(lower));
        }
        Err(format!(
            "{s:?} is not a host pattern (expected app.example.com or *.example.com)"
        ))
    }

    /// `host` without its port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Subdomains(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Dot-separated labels of letters, digits and `-` (IPv4 addresses pass).
pub(crate) fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether `path` (query ignored) is under `prefix` on whole segments:
/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; a prefix
/// ending in `/` matches what starts with it.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let exact = HostPattern::parse("App.Example.com").unwrap();
        assert!(exact.matches("app.example.COM") && !exact.matches("x.app.example.com"));
        let sub = HostPattern::parse("*.example.com").unwrap();
        assert!(sub.matches("a.example.com") && sub.matches("A.B.Example.Com"));
        assert!(
            !sub.matches("example.com")
                && !sub.matches(".example.com")
                && !sub.matches("aexample.com")
        );
        assert!(!sub.matches("é.example.co") && !sub.matches(""));
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "a_b.com",
            "-a.com",
            "http://a.com",
            "a.com:80",
            "*.*.a.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(HostPattern::parse("10.0.0.1").is_ok());
    }

    #[test]
    fn paths() {
        assert!(path_matches("/", "/") && path_matches("/", "/x?y"));
        assert!(
            path_matches("/api", "/api")
                && path_matches("/api", "/api/v1")
                && path_matches("/api", "/api?x=1")
        );
        assert!(
            !path_matches("/api", "/apix")
                && !path_matches("/api", "/ap")
                && !path_matches("/api", "")
        );
        assert!(path_matches("/api/", "/api/x") && !path_matches("/api/", "/api"));
        assert!(!path_matches("/api", "/x?/api"));
    }

    #[test]
    fn all_conditions_must_hold() {
        let c = Conditions {
            hosts: vec![HostPattern::parse("*.example.com").unwrap()],
            paths: vec!["/api".into()],
            methods: vec!["GET".into(), "POST".into()],
            routes: vec!["api".into()],
        };
        let f = RequestFacts {
            method: "POST",
            host: "a.example.com:8080",
            path: "/api/x",
            route: Some("api"),
            ..Default::default()
        };
        assert!(c.matches(&f));
        assert!(!c.matches(&RequestFacts { route: None, ..f }));
        assert!(!c.matches(&RequestFacts { method: "get", ..f }));
        assert!(!c.matches(&RequestFacts {
            host: "example.com",
            ..f
        }));
        assert!(!c.matches(&RequestFacts { path: "/apix", ..f }));
        assert!(Conditions::default().matches(&RequestFacts::default()));
    }
}
