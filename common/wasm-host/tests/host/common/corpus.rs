//! The differential corpus: several policies and a few hundred generated
//! exchanges (odd header names, repeated headers, empty values, CORS
//! preflights, every condition and placeholder), deterministic from a seed.
//! The same cases run natively, through the filter in our host, and
//! through the filter in Envoy.

use header_policy::{single_value, Decision, HeaderList, Policy, RequestFacts};
use wasm_host::StreamInfo;

use super::Exchange;

/// The policies, as the filter gets them (YAML, and one JSON).
pub const POLICIES: &[&str] = &[
    // 0: the documentation's example.
    r#"
request:
  - set:
      X-Request-Source: edge
      X-User: "{claim.sub}"
      X-Client: "{client_ip} via {route}"
  - when: { host: "*.example.com", path: /api, method: [POST, PUT] }
    remove: [X-Debug]
    rename: { X-Old-Token: X-Token }
    append: { Via: "1.1 preview-edge" }
response:
  - when: { route: web }
    set: { Cache-Control: no-store }
strip:
  request: [X-Internal-*, X-Forwarded-User]
  response: [Server, X-Powered-By]
security_headers:
  hsts: { max_age: 365d, include_subdomains: true }
  content_type_options: true
  referrer_policy: strict-origin-when-cross-origin
  frame_options: deny
  frame_ancestors: ["'self'", "https://*.example.com"]
cors:
  allow_origins: [https://app.example.com, "https://*.preview.example.com"]
  allow_methods: [GET, POST, PUT]
  allow_headers: [Content-Type, Authorization]
  expose_headers: [X-Request-Id]
  allow_credentials: true
  max_age: 10m
"#,
    // 1: every placeholder and condition.
    r#"
request:
  - set:
      X-Seen-Host: "{host}"
      X-Seen-Path: "{path}"
      X-Seen-Method: "{method}"
      X-Rid: "rid={request_id}"
      X-Email: "{claim.email}"
  - when: { method: [GET, HEAD] }
    append: { X-Multi: appended, Cookie: "edge=1" }
  - when: { route: api }
    remove: [X-Multi]
    set: { X-Api: "yes" }
  - when: { host: [shop.example.com, "*.preview.example.com"], path: [/admin, /static] }
    rename: { X-Odd_Name: X-Renamed }
response:
  - set: { X-Route: "{route}", X-Resp-Rid: "{request_id}" }
  - when: { path: /api }
    remove: [Set-Cookie]
    append: { Vary: Accept }
strip:
  response: [x-upstream-*]
"#,
    // 2: CORS for any origin, every recommended security header.
    r#"
cors:
  allow_origins: ["*"]
  allow_headers: ["*"]
  expose_headers: [x-multi, x-request-id]
security_headers:
  hsts: true
  content_type_options: true
  referrer_policy: true
  frame_options: true
  frame_ancestors: true
"#,
    // 3: JSON, strip lists by prefix, a rename on the response.
    r#"{"strip": {"request": ["Cookie", "x-*"], "response": ["set-cookie", "vary"]},
        "request": [{"set": {"X-Stripped": "1"}}],
        "response": [{"rename": {"content-type": "x-original-content-type"}}]}"#,
    // 4: the empty policy: odd headers pass untouched.
    "",
];

/// Exchanges per policy.
pub const CASES_PER_POLICY: usize = 100;

/// The visitor's address in every case (Envoy sees the test's loopback
/// client).
pub const CLIENT_IP: &str = "127.0.0.1";

#[derive(Debug, Clone)]
pub struct Case {
    pub id: usize,
    pub policy: usize,
    pub method: &'static str,
    /// The `Host` header.
    pub host: &'static str,
    /// The request target, with the case id in the query.
    pub path: String,
    /// The route Envoy's config and the edge would pick: `api` under
    /// `/api`, else `web`.
    pub route: &'static str,
    /// Request headers as the visitor sends them (names as written), `Host`
    /// not included.
    pub request: Vec<(String, String)>,
    /// What the upstream answers with.
    pub response: Vec<(String, String)>,
    pub claims: Vec<(String, String)>,
}

/// SplitMix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "POST", "PUT", "DELETE", "OPTIONS", "OPTIONS", "PATCH", "HEAD",
];
const HOSTS: &[&str] = &[
    "shop.example.com",
    "pr-7.preview.example.com",
    "example.com",
    "api.example.com:8080",
    "other.test",
];
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/v1/items",
    "/apix",
    "/admin/panel",
    "/static/a.css",
    "/api/",
];
const ORIGINS: &[&str] = &[
    "https://app.example.com",
    "https://pr-1.preview.example.com",
    "https://evil.example.org",
    "https://app.example.com:8443",
    "null",
];
const VALUES: &[&str] = &[
    "plain",
    "with spaces inside",
    "comma, separated, list",
    "\"quoted\"",
    "",
    "a=b; c=d",
    "1",
    "UPPER lower",
    "tab\tinside",
];
const ODD_NAMES: &[&str] = &[
    "X-Odd_Name",
    "x-!#$%&'*+.^`|~",
    "X-UPPER-CASE",
    "x-9digits",
    "X-a.b",
    "x-empty",
];

pub fn cases() -> Vec<Case> {
    let mut rng = Rng(0x5eed_2121);
    let mut out = Vec::new();
    for policy in 0..POLICIES.len() {
        for _ in 0..CASES_PER_POLICY {
            out.push(case(&mut rng, out.len(), policy));
        }
    }
    out
}

fn case(rng: &mut Rng, id: usize, policy: usize) -> Case {
    let method = rng.pick(METHODS);
    let host = rng.pick(HOSTS);
    let base = rng.pick(PATHS);
    let path = format!(
        "{base}{}case={id}",
        if base.contains('?') { '&' } else { '?' }
    );
    let route = if header_policy::conditions::path_matches("/api", base) {
        "api"
    } else {
        "web"
    };
    let mut request: Vec<(String, String)> = Vec::new();
    let mut add = |n: &str, v: &str| request.push((n.to_owned(), v.to_owned()));
    if rng.chance(85) {
        add("X-Request-Id", &format!("req-{id}"));
    }
    let origin = rng.chance(55).then(|| rng.pick(ORIGINS));
    if let Some(o) = origin {
        add("Origin", o);
        if method == "OPTIONS" && rng.chance(85) {
            add(
                "Access-Control-Request-Method",
                rng.pick(&["GET", "PUT", "DELETE", "PATCH", "POST"]),
            );
            if rng.chance(50) {
                add(
                    "Access-Control-Request-Headers",
                    rng.pick(&[
                        "content-type",
                        "Content-Type, Authorization",
                        "x-custom",
                        "authorization,content-type",
                    ]),
                );
            }
        }
    }
    let pool: &[(&str, &str)] = &[
        ("X-Internal-Auth", "secret"),
        ("x-internal-trace", "1"),
        ("X-Forwarded-User", "forged"),
        ("X-Debug", "1"),
        ("X-Old-Token", "t1"),
        ("X-Token", "stale"),
        ("Via", "1.1 cdn"),
        ("Accept", "*/*"),
        ("Cookie", "a=1"),
        ("User-Agent", "corpus/1"),
        ("X-Multi", "m"),
    ];
    for _ in 0..2 + rng.below(6) {
        let (n, v) = rng.pick(pool);
        let v = if rng.chance(30) { rng.pick(VALUES) } else { v };
        add(n, v);
        if rng.chance(25) {
            // The same name again: repeated headers.
            add(n, rng.pick(VALUES));
        }
    }
    for _ in 0..rng.below(3) {
        add(rng.pick(ODD_NAMES), rng.pick(VALUES));
    }
    let mut response: Vec<(String, String)> = Vec::new();
    let mut resp = |n: &str, v: &str| response.push((n.to_owned(), v.to_owned()));
    for (percent, name, values) in [
        (80, "Content-Type", &["text/html", "application/json"][..]),
        (70, "Server", &["upstream/1.0"]),
        (40, "X-Powered-By", &["PHP/8"]),
        (40, "Set-Cookie", &["s=1; Path=/", "t=2; HttpOnly"]),
        (30, "Vary", &["Accept-Encoding", "Origin", "origin, accept"]),
        (20, "Access-Control-Allow-Origin", &["*"]),
        (20, "X-Frame-Options", &["SAMEORIGIN"]),
        (15, "Strict-Transport-Security", &["max-age=1"]),
        (30, "Cache-Control", &["max-age=60"]),
        (30, "x-upstream-odd_name", &VALUES[..4]),
        (30, "x-empty-resp", &[""]),
        (30, "X-Multi", &["r1", "r2"]),
        (10, "Content-Security-Policy", &["default-src 'self'"]),
    ] {
        if rng.chance(percent) {
            resp(name, rng.pick(values));
            if rng.chance(20) {
                resp(name, rng.pick(values));
            }
        }
    }
    let claims = if rng.chance(60) {
        vec![
            ("sub".to_owned(), format!("u-{id}")),
            ("email".to_owned(), format!("user{id}@example.com")),
        ]
    } else {
        Vec::new()
    };
    Case {
        id,
        policy,
        method,
        host,
        path,
        route,
        request,
        response,
        claims,
    }
}

impl Case {
    /// The request headers as a proxy holds them: `host` included, names
    /// lowercase.
    pub fn request_list(&self) -> HeaderList {
        HeaderList::from_pairs(
            std::iter::once(("host", self.host))
                .chain(self.request.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        )
    }

    pub fn response_list(&self) -> HeaderList {
        HeaderList::from_pairs(self.response.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| v.as_str())
    }

    pub fn claim_pairs(&self) -> Vec<(&str, &str)> {
        self.claims
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// What our host tells the filter about this request.
    pub fn stream_info<'a>(&'a self, claims: &'a [(&'a str, &'a str)]) -> StreamInfo<'a> {
        StreamInfo {
            method: self.method,
            authority: self.host,
            path: &self.path,
            scheme: "http",
            protocol: "HTTP/1.1",
            request_id: self.request_id(),
            source: Some(format!("{CLIENT_IP}:40000").parse().unwrap()),
            route_name: Some(self.route),
            claims,
            ..Default::default()
        }
    }
}

/// The case through the policy crate directly, as the edge applies it.
/// Without `claims` the visitor has no identity (as in Envoy).
pub fn native(policy: &Policy, case: &Case, claims: bool) -> Exchange {
    let request = case.request_list();
    let claim_list = case.claims.clone();
    let facts = RequestFacts {
        method: case.method,
        host: case.host,
        path: &case.path,
        route: Some(case.route),
        request_id: case.request_id(),
        client_ip: Some(CLIENT_IP),
        origin: single_value(&request, "origin"),
        claims: if claims { Some(&claim_list) } else { None },
    };
    let mut upstream = request.clone();
    match policy.on_request(&facts, &mut upstream) {
        Decision::Continue => {
            let mut visitor = case.response_list();
            policy.on_response(&facts, &mut visitor);
            Exchange::Proxied { upstream, visitor }
        }
        Decision::Respond(answer) => Exchange::Local {
            status: answer.status,
            headers: HeaderList::from_pairs(answer.headers),
        },
    }
}

/// Every policy, validated.
pub fn policies() -> Vec<Policy> {
    POLICIES
        .iter()
        .map(|p| header_policy::from_text(p).unwrap_or_else(|e| panic!("{e:#?}")))
        .collect()
}
