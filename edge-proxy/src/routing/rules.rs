//! Custom-domain routing rules: host (exact or `*.suffix`) + path prefix →
//! a service. Ordered, first match wins.
//!
//! Lookup is not a scan over all rules: rules are indexed by exact host and
//! by wildcard suffix, so a request looks at the rules for its own host and
//! its parent domains only, and picks the earliest that matches its path.

use std::sync::Arc;
use std::time::Duration;

use header_policy::Policy;
use wasm_host::FilterPool;

use crate::auth::Access;
use crate::limits::{Limit, RateLimit};

use crate::routing::preview::ServiceRef;
use crate::routing::upstream::Protocol;

/// A host pattern: `app.example.com` or `*.example.com` (any subdomain of
/// example.com, not example.com itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Wildcard(String),
}

impl HostPattern {
    /// The exact host, or the wildcard's parent domain.
    pub fn name(&self) -> &str {
        match self {
            HostPattern::Exact(name) | HostPattern::Wildcard(name) => name,
        }
    }

    /// Whether `host` (lowercase, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(parent) => host.split_once('.').is_some_and(|(_, p)| p == parent),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// One validated routing rule.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub host: HostPattern,
    /// Path prefix, matched on segment boundaries (`/api` matches `/api`
    /// and `/api/x`, not `/apix`).
    pub path: String,
    /// Match `path` exactly, not as a prefix (an Ingress `pathType: Exact`).
    pub exact_path: bool,
    /// A sidecar claimed the rule (an Ingress); the YAML did not write it.
    pub claimed: bool,
    pub strip_prefix: bool,
    pub target: ServiceRef,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    /// Overrides the protocol the sidecar registered for the service.
    pub protocol: Option<Protocol>,
    /// `routes[].name`: what header policies match `when.route` against.
    pub name: Option<Arc<str>>,
    /// The header policy requests through this rule get: the edge's
    /// default followed by the rule's own (`None`: nothing to do).
    pub policy: Option<Arc<Policy>>,
    /// `routes[].wasm_filter:`, run after the policy (or instead of it,
    /// when `policy` is `None` for that reason).
    pub wasm: Option<Arc<FilterPool>>,
    /// `routes[].access:` (`None`: the environment's or the default).
    pub access: Option<Arc<Access>>,
    /// `routes[].limits:` (`None`: `limits.route`).
    pub limits: Option<Arc<Limit>>,
    /// `routes[].max_body_size` (`None`: `visitors.max_body_size`).
    pub max_body_size: Option<u64>,
    /// The rule's host and path: what names it in shared limits.
    pub limit_id: Arc<str>,
    /// What the rule's requests count under for per-route limits: its
    /// host and path, so the count follows the rule across reloads.
    pub limit_key: u64,
}

impl RouteRule {
    /// A rule a sidecar claimed (an Ingress's), named by where it came
    /// from; counted for per-route limits under its host and path.
    pub fn claimed(
        host: HostPattern,
        path: String,
        exact_path: bool,
        target: ServiceRef,
        source: String,
    ) -> Self {
        let limit_id: Arc<str> = format!("{host}{path}").into();
        Self {
            exact_path,
            claimed: true,
            limit_key: crate::limits::key(&limit_id),
            limit_id,
            name: Some(source.into()),
            ..Self::new(host, path, target)
        }
    }

    /// A rule to `target` with nothing else set.
    pub fn new(host: HostPattern, path: String, target: ServiceRef) -> Self {
        Self {
            host,
            path,
            exact_path: false,
            claimed: false,
            strip_prefix: false,
            target,
            connect_timeout: None,
            read_timeout: None,
            protocol: None,
            name: None,
            policy: None,
            wasm: None,
            access: None,
            limits: None,
            max_body_size: None,
            limit_id: "".into(),
            limit_key: 0,
        }
    }

    /// The path the service sees for a request path.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix || self.path == "/" {
            return path.into();
        }
        match path.strip_prefix(self.path.trim_end_matches('/')) {
            Some(rest) if rest.starts_with('/') => rest.into(),
            Some(rest) => format!("/{rest}").into(),
            None => path.into(),
        }
    }
}

/// Rules indexed for lookup.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    rules: Vec<RouteRule>,
    // foldhash: looked up on every request (keys come from the config).
    exact: foldhash::HashMap<String, Vec<usize>>,
    wildcard: foldhash::HashMap<String, Vec<usize>>,
}

impl RouteTable {
    pub fn new(rules: Vec<RouteRule>) -> Self {
        let mut table = Self {
            rules,
            ..Default::default()
        };
        for (i, rule) in table.rules.iter().enumerate() {
            let index = match &rule.host {
                HostPattern::Exact(h) => table.exact.entry(h.clone()),
                HostPattern::Wildcard(suffix) => table.wildcard.entry(suffix.clone()),
            };
            index.or_default().push(i);
        }
        table
    }

    /// The rules' own rate limits, to take over a previous config's state
    /// (only while this table is not shared yet: see `EdgeConfig::adopt`).
    pub fn rate_limits_mut(&mut self) -> impl Iterator<Item = &mut RateLimit> {
        self.rules
            .iter_mut()
            .filter_map(|r| Arc::get_mut(r.limits.as_mut()?)?.rate.as_mut())
    }

    pub fn rate_limits(&self) -> impl Iterator<Item = &RateLimit> {
        self.rules
            .iter()
            .filter_map(|r| r.limits.as_ref()?.rate.as_ref())
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule names `host` (lowercase, no port), whatever the
    /// path.
    pub fn serves(&self, host: &str) -> bool {
        self.exact.contains_key(host) || self.wildcard_parents(host).next().is_some()
    }

    /// The wildcard entries for `host`'s parent domains, nearest first:
    /// `a.b.example.com` looks up `b.example.com`, `example.com`, `com`.
    /// Nothing is scanned when there are no wildcards (most tables).
    fn wildcard_parents<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Vec<usize>> {
        let dots = match self.wildcard.is_empty() {
            true => None,
            false => Some(host.bytes().enumerate().filter(|&(_, b)| b == b'.')),
        };
        dots.into_iter()
            .flatten()
            .filter_map(|(i, _)| self.wildcard.get(&host[i + 1..]))
    }

    /// The first rule (in file order) matching `host` (lowercase, no port)
    /// and `path`.
    pub fn resolve(&self, host: &str, path: &str) -> Option<&RouteRule> {
        if self.rules.is_empty() {
            return None; // sidecars claimed nothing (looked up on every miss)
        }
        let mut best: Option<usize> = None;
        let mut consider = |indexes: Option<&Vec<usize>>| {
            for &i in indexes.into_iter().flatten() {
                if best.is_some_and(|b| b < i) {
                    break; // indexes are ascending
                }
                let rule = &self.rules[i];
                if path_matches(&rule.path, rule.exact_path, path) {
                    best = Some(i);
                    break;
                }
            }
        };
        consider(self.exact.get(host));
        for indexes in self.wildcard_parents(host) {
            consider(Some(indexes));
        }
        best.map(|i| &self.rules[i])
    }
}

/// A request path (with its query) with dot segments removed (RFC 3986
/// §5.2.4), as routing and the service see it.
#[derive(Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    pub path: std::borrow::Cow<'a, str>,
    /// The path has percent-encoded dots, slashes or backslashes: what it
    /// names depends on who decodes it.
    pub encoded_separators: bool,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathEscapes;

/// [`NormalPath`] for `path_and_query`; a path whose `..` segments climb
/// above the root is refused. Borrowed (no work beyond a scan) when there
/// is nothing to remove.
pub fn normalize_path(path_and_query: &str) -> Result<NormalPath<'_>, PathEscapes> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let encoded_separators = path.contains('%') && {
        let lower = path.to_ascii_lowercase();
        ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
    };
    let dotted = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !dotted {
        return Ok(NormalPath {
            path: path_and_query.into(),
            encoded_separators,
        });
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathEscapes);
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(path_and_query.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    if let Some(query) = query {
        normal.push('?');
        normal.push_str(query);
    }
    Ok(NormalPath {
        path: normal.into(),
        encoded_separators,
    })
}

fn path_matches(prefix: &str, exact: bool, path: &str) -> bool {
    if exact {
        return path.split_once('?').map_or(path, |(p, _)| p) == prefix;
    }
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_and_escapes_refused() {
        let normal =
            |p: &str| normalize_path(p).map(|n| (n.path.into_owned(), n.encoded_separators));
        assert_eq!(normal("/a/b?x=../y"), Ok(("/a/b?x=../y".into(), false)));
        assert_eq!(normal("/api/../admin"), Ok(("/admin".into(), false)));
        assert_eq!(normal("/a/./b/."), Ok(("/a/b/".into(), false)));
        assert_eq!(normal("/a/b/.."), Ok(("/a/".into(), false)));
        assert_eq!(normal("/a/..?q"), Ok(("/?q".into(), false)));
        assert_eq!(normal("/../etc/passwd"), Err(PathEscapes));
        assert_eq!(normal("/a/../../b"), Err(PathEscapes));
        assert_eq!(
            normal("/api/%2e%2e/admin"),
            Ok(("/api/%2e%2e/admin".into(), true))
        );
        assert_eq!(normal("/api/a%2Fb"), Ok(("/api/a%2Fb".into(), true)));
        assert_eq!(normal("/a%20b"), Ok(("/a%20b".into(), false)));
        assert!(matches!(
            normalize_path("/plain/path").unwrap().path,
            std::borrow::Cow::Borrowed(_)
        ));
    }

    fn rule(host: &str, path: &str, service: &str) -> RouteRule {
        RouteRule::new(
            match host.strip_prefix("*.") {
                Some(s) => HostPattern::Wildcard(s.into()),
                None => HostPattern::Exact(host.into()),
            },
            path.into(),
            ServiceRef {
                service: service.into(),
                port: 80,
                environment: "prod".into(),
            },
        )
    }

    fn pick<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        t.resolve(host, path).map(|r| r.target.service.as_str())
    }

    #[test]
    fn first_match_wins_across_exact_and_wildcard_rules() {
        let t = RouteTable::new(vec![
            rule("api.example.com", "/v1", "v1"),
            rule("*.example.com", "/", "wild"),
            rule("api.example.com", "/", "api"), // shadowed by the wildcard above
            rule("shop.example.com", "/", "shop"),
        ]);
        assert_eq!(pick(&t, "api.example.com", "/v1/users"), Some("v1"));
        assert_eq!(pick(&t, "api.example.com", "/v2"), Some("wild"));
        assert_eq!(pick(&t, "shop.example.com", "/"), Some("wild"));
        assert_eq!(pick(&t, "deep.sub.example.com", "/"), Some("wild"));
        assert_eq!(
            pick(&t, "example.com", "/"),
            None,
            "a wildcard does not match its own apex"
        );
        assert_eq!(pick(&t, "example.org", "/"), None);
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        let t = RouteTable::new(vec![
            rule("a.com", "/api", "api"),
            rule("a.com", "/", "root"),
        ]);
        assert_eq!(pick(&t, "a.com", "/api"), Some("api"));
        assert_eq!(pick(&t, "a.com", "/api/x"), Some("api"));
        assert_eq!(pick(&t, "a.com", "/api?q=1"), Some("api"));
        assert_eq!(pick(&t, "a.com", "/apix"), Some("root"));
        let exact = RouteRule {
            exact_path: true,
            ..rule("b.com", "/login", "login")
        };
        let t = RouteTable::new(vec![exact, rule("b.com", "/", "root")]);
        assert_eq!(pick(&t, "b.com", "/login"), Some("login"));
        assert_eq!(pick(&t, "b.com", "/login?next=/"), Some("login"));
        assert_eq!(pick(&t, "b.com", "/login/x"), Some("root"));
    }

    #[test]
    fn strip_prefix_rewrites_the_path() {
        let mut r = rule("a.com", "/api/", "api");
        r.strip_prefix = true;
        assert_eq!(r.upstream_path("/api/users?x=1"), "/users?x=1");
        assert_eq!(r.upstream_path("/api"), "/");
        assert_eq!(r.upstream_path("/api?x"), "/?x");
    }

    #[test]
    fn lookup_among_ten_thousand_rules_touches_only_its_host() {
        let mut rules: Vec<_> = (0..10_000)
            .map(|i| rule(&format!("app{i}.example.com"), "/", &format!("s{i}")))
            .collect();
        rules.push(rule("*.tenant.example.net", "/", "tenant"));
        let t = RouteTable::new(rules);
        assert_eq!(pick(&t, "app9999.example.com", "/"), Some("s9999"));
        assert_eq!(pick(&t, "x.tenant.example.net", "/"), Some("tenant"));
        assert_eq!(t.len(), 10_001);
    }
}
