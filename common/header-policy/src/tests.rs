//! Behaviour of whole policies: parsing, validation messages, rules,
//! strip lists, security headers, CORS and layering.

use std::collections::BTreeMap;

use crate::*;

const EXAMPLE: &str = r#"
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
"#;

fn policy(text: &str) -> Policy {
    from_text(text).unwrap_or_else(|p| panic!("{p:#?}"))
}

fn problems(text: &str) -> Vec<String> {
    match from_text(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(p) => p,
    }
}

fn claims() -> BTreeMap<String, String> {
    BTreeMap::from([("sub".to_string(), "u-1".to_string())])
}

fn facts<'a>(claims: &'a BTreeMap<String, String>) -> RequestFacts<'a> {
    RequestFacts {
        method: "POST",
        host: "shop.example.com",
        path: "/api/cart?x=1",
        route: Some("web"),
        request_id: Some("req-9"),
        client_ip: Some("203.0.113.5"),
        origin: None,
        claims: Some(claims),
    }
}

fn list(pairs: &[(&str, &str)]) -> HeaderList {
    HeaderList::from_pairs(pairs.iter().copied())
}

fn values<'a>(h: &'a HeaderList, name: &'a str) -> Vec<&'a str> {
    h.get_all(name)
        .map(|v| std::str::from_utf8(v).unwrap())
        .collect()
}

#[test]
fn example_request() {
    let p = policy(EXAMPLE);
    let c = claims();
    let mut h = list(&[
        ("X-Internal-Auth", "secret"),
        ("x-internal-trace", "1"),
        ("X-Forwarded-User", "forged"),
        ("X-Debug", "1"),
        ("X-Old-Token", "a"),
        ("x-old-token", "b"),
        ("X-Token", "stale"),
        ("Via", "1.1 cdn"),
        ("Accept", "*/*"),
    ]);
    assert_eq!(p.on_request(&facts(&c), &mut h), Decision::Continue);
    assert_eq!(
        h.grouped(),
        list(&[
            ("accept", "*/*"),
            ("via", "1.1 cdn"),
            ("via", "1.1 preview-edge"),
            ("x-token", "a"),
            ("x-token", "b"),
            ("x-request-source", "edge"),
            ("x-user", "u-1"),
            ("x-client", "203.0.113.5 via web"),
        ])
        .grouped()
    );
}

#[test]
fn conditions_gate_rules() {
    let p = policy(EXAMPLE);
    let c = claims();
    for f in [
        RequestFacts {
            method: "GET",
            ..facts(&c)
        },
        RequestFacts {
            host: "example.com",
            ..facts(&c)
        },
        RequestFacts {
            path: "/apix",
            ..facts(&c)
        },
    ] {
        let mut h = list(&[("X-Debug", "1")]);
        p.on_request(&f, &mut h);
        assert_eq!(values(&h, "x-debug"), ["1"], "{f:?}");
    }
}

#[test]
fn missing_placeholder_skips_only_that_header() {
    let p = policy(EXAMPLE);
    let none = BTreeMap::new();
    let f = RequestFacts {
        claims: None,
        route: None,
        ..facts(&none)
    };
    let mut h = HeaderList::new();
    p.on_request(&f, &mut h);
    assert_eq!(values(&h, "x-request-source"), ["edge"]);
    assert!(!h.contains("x-user") && !h.contains("x-client"));
}

#[test]
fn example_response() {
    let p = policy(EXAMPLE);
    let c = claims();
    let f = RequestFacts {
        origin: Some("https://pr-7.preview.example.com"),
        ..facts(&c)
    };
    let mut h = list(&[
        ("Server", "gunicorn"),
        ("X-Powered-By", "PHP"),
        ("Content-Type", "text/html"),
        ("Referrer-Policy", "no-referrer"),
        ("Access-Control-Allow-Origin", "*"),
        ("Vary", "Accept-Encoding"),
    ]);
    p.on_response(&f, &mut h);
    assert_eq!(
        h.grouped(),
        list(&[
            ("content-type", "text/html"),
            ("cache-control", "no-store"),
            ("referrer-policy", "no-referrer"),
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains"
            ),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            (
                "content-security-policy",
                "frame-ancestors 'self' https://*.example.com"
            ),
            (
                "access-control-allow-origin",
                "https://pr-7.preview.example.com"
            ),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-request-id"),
            ("vary", "Accept-Encoding"),
            ("vary", "Origin"),
        ])
        .grouped()
    );
}

#[test]
fn cors_disallowed_origin_gets_no_grant_but_vary() {
    let p = policy(EXAMPLE);
    let c = claims();
    for origin in [Some("https://evil.com"), None] {
        let f = RequestFacts {
            origin,
            ..facts(&c)
        };
        let mut h = list(&[
            ("access-control-allow-origin", "https://evil.com"),
            ("access-control-allow-credentials", "true"),
            ("vary", "origin, accept"),
        ]);
        p.on_response(&f, &mut h);
        assert!(!h.contains("access-control-allow-origin"));
        assert!(!h.contains("access-control-allow-credentials"));
        assert_eq!(
            values(&h, "vary"),
            ["origin, accept"],
            "Vary already lists Origin"
        );
    }
}

#[test]
fn preflights() {
    let p = policy(EXAMPLE);
    let c = claims();
    let pre = |origin: &'static str, method: &str, req_headers: Option<&str>| {
        let f = RequestFacts {
            method: "OPTIONS",
            origin: Some(origin),
            ..facts(&c)
        };
        let mut h = list(&[("access-control-request-method", method)]);
        if let Some(r) = req_headers {
            h.append("access-control-request-headers", r.as_bytes());
        }
        h.append("x-internal-auth", b"kept: a preflight goes nowhere");
        let before = h.clone();
        let d = p.on_request(&f, &mut h);
        assert_eq!(h, before);
        d
    };
    let Decision::Respond(ok) = pre(
        "https://app.example.com",
        "PUT",
        Some("content-type, authorization"),
    ) else {
        panic!("not answered")
    };
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.headers,
        [
            (
                "access-control-allow-origin",
                "https://app.example.com".to_string()
            ),
            ("access-control-allow-methods", "GET, POST, PUT".into()),
            (
                "access-control-allow-headers",
                "content-type, authorization".into()
            ),
            ("access-control-allow-credentials", "true".into()),
            ("access-control-max-age", "600".into()),
            ("vary", "Origin".into()),
        ]
    );
    // HEAD is CORS-safelisted: allowed even though not listed.
    assert!(
        matches!(pre("https://app.example.com", "HEAD", None), Decision::Respond(r) if r.status == 204)
    );
    for (origin, method, hdrs) in [
        ("https://evil.com", "GET", None),
        ("https://app.example.com", "DELETE", None),
        ("https://app.example.com", "PUT", Some("x-custom")),
        ("https://app.example.com:444", "GET", None),
    ] {
        let Decision::Respond(no) = pre(origin, method, hdrs) else {
            panic!("not answered")
        };
        assert_eq!(
            (no.status, no.headers),
            (403, vec![("vary", "Origin".into())]),
            "{origin} {method}"
        );
    }
    // OPTIONS without Access-Control-Request-Method is an ordinary request.
    let f = RequestFacts {
        method: "OPTIONS",
        origin: Some("https://app.example.com"),
        ..facts(&c)
    };
    assert_eq!(p.on_request(&f, &mut HeaderList::new()), Decision::Continue);
}

#[test]
fn cors_any_origin() {
    let p = policy("cors: { allow_origins: ['*'], allow_headers: ['*'] }");
    let f = RequestFacts {
        method: "OPTIONS",
        origin: Some("https://whoever.net"),
        ..Default::default()
    };
    let mut h = list(&[
        ("access-control-request-method", "PATCH"),
        ("access-control-request-headers", "x-anything"),
    ]);
    // PATCH is neither listed nor safelisted.
    assert!(
        matches!(p.on_request(&f, &mut h), Decision::Respond(r) if r.status == 403 && r.headers.is_empty())
    );
    h.set("access-control-request-method", b"GET");
    let Decision::Respond(r) = p.on_request(&f, &mut h) else {
        panic!()
    };
    assert_eq!(r.status, 204);
    assert_eq!(r.headers[0], ("access-control-allow-origin", "*".into()));
    assert_eq!(r.headers[2], ("access-control-allow-headers", "*".into()));
    let mut resp = HeaderList::new();
    p.on_response(&RequestFacts { method: "GET", ..f }, &mut resp);
    assert_eq!(resp, list(&[("access-control-allow-origin", "*")]));
}

#[test]
fn security_headers_respect_the_service() {
    let p = policy("security_headers: { hsts: true, content_type_options: true, referrer_policy: true, frame_options: true, frame_ancestors: true }");
    let mut h = list(&[("X-Frame-Options", "SAMEORIGIN")]);
    p.on_response(&RequestFacts::default(), &mut h);
    assert_eq!(
        h.grouped(),
        list(&[
            ("x-frame-options", "SAMEORIGIN"),
            ("strict-transport-security", "max-age=31536000"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "strict-origin-when-cross-origin"),
            ("content-security-policy", "frame-ancestors 'none'"),
        ])
        .grouped()
    );
}

#[test]
fn route_layers_over_default() {
    let default = policy(EXAMPLE);
    let route = policy(
        r#"
request:
  - set: { X-Request-Source: route }
strip:
  response: [Via]
security_headers:
  hsts: false
  frame_options: sameorigin
cors: false
"#,
    );
    let p = default.then(&route);
    let c = claims();
    let mut req = HeaderList::new();
    p.on_request(&facts(&c), &mut req);
    assert_eq!(
        values(&req, "x-request-source"),
        ["route"],
        "the route's rule runs last"
    );
    assert_eq!(
        values(&req, "x-user"),
        ["u-1"],
        "the default's rules still run"
    );
    let f = RequestFacts {
        origin: Some("https://app.example.com"),
        ..facts(&c)
    };
    let mut resp = list(&[("Server", "x"), ("Via", "y")]);
    p.on_response(&f, &mut resp);
    assert!(!resp.contains("server") && !resp.contains("via"));
    assert!(!resp.contains("strict-transport-security"));
    assert_eq!(values(&resp, "x-frame-options"), ["SAMEORIGIN"]);
    assert_eq!(
        values(&resp, "x-content-type-options"),
        ["nosniff"],
        "inherited"
    );
    assert!(!resp.contains("access-control-allow-origin") && !resp.contains("vary"));
    // A route without cors keeps the default's; one with cors replaces it.
    assert!(default.then(&Policy::default()).needs().origin);
    let other = policy("cors: { allow_origins: [https://other.example.com] }");
    let mut resp = HeaderList::new();
    default.then(&other).on_response(&f, &mut resp);
    assert!(!resp.contains("access-control-allow-origin"));
    assert_eq!(default.then(&Policy::default()), default);
}

#[test]
fn rule_actions_run_remove_rename_set_append() {
    let p = policy(
        r#"
request:
  - remove: [a]
    rename: { b: a }
    set: { b: "new-b" }
    append: { a: "{method}", c: "{host}{path}" }
"#,
    );
    let mut h = list(&[("A", "old-a"), ("B", "1"), ("b", "2"), ("C", "0")]);
    let f = RequestFacts {
        method: "GET",
        host: "Shop.Example.com:8080",
        path: "/p",
        ..Default::default()
    };
    p.on_request(&f, &mut h);
    assert_eq!(values(&h, "a"), ["1", "2", "GET"]);
    assert_eq!(values(&h, "b"), ["new-b"]);
    assert_eq!(values(&h, "c"), ["0", "shop.example.com/p"]);
    assert_eq!(
        p.needs(),
        &Needs {
            method: true,
            host: true,
            path: true,
            ..Default::default()
        }
    );
}

#[test]
fn json_and_yaml_read_the_same() {
    let json = r#"{"request":[{"when":{"path":"/x"},"set":{"X-A":"1"}}],
                   "security_headers":{"hsts":{"max_age":60}},"cors":false}"#;
    let yaml = "request: [{when: {path: [/x]}, set: {X-A: 1}}]\nsecurity_headers: {hsts: {max_age: 1m}}\ncors: false\n";
    assert_eq!(policy(json), policy(yaml));
    // Istio hands a protobuf Struct over as JSON, whole numbers as floats.
    let from_struct = r#"{"request":[{"when":{"path":"/x"},"set":{"X-A":"1"}}],"security_headers":{"hsts":{"max_age":60.0}},"cors":false}"#;
    assert_eq!(policy(from_struct), policy(yaml));
    assert!(problems(r#"{"cors":{"allow_origins":["*"],"max_age":1.5}}"#)[0].contains("whole"));
    assert!(policy("").is_noop() && policy("  \n").is_noop() && policy("{}").is_noop());
    assert!(!policy(EXAMPLE).is_noop());
}

#[test]
fn every_problem_with_its_path() {
    let p = problems(
        r#"
request:
  - set: { "x bad": v, X-Ok: "{nope}", x-ok: dup, Content-Length: "1" }
  - when: { host: ["ok.com", "*.bad_host"], path: api, method: get, route: [] }
    remove: [Host]
  - {}
  - rename: { x-a: X-A, x-b: "bad name" }
response:
  - append: { X-Val: "a\nb" }
strip:
  request: ["*", "x-*-y*"]
  response: [Connection]
security_headers:
  hsts: { max_age: soon, preload: true }
  content_type_options: sniff
  referrer_policy: everywhere
  frame_options: allow
  frame_ancestors: ["'none'", "http://a b"]
cors:
  allow_origins: ["*", "null", "https://a.com/", app.example.com]
  allow_methods: [get]
  allow_headers: ["*", "x y"]
  allow_credentials: true
  max_age: later
"#,
    );
    let want = [
        r#"strip.request[0]: "*" would remove every header"#,
        r#"strip.request[1]: "x-*-y*" is not a header name or a prefix ending in *"#,
        r#"strip.response[0]: "Connection": connection is managed by the proxy"#,
        r#"request[0].set["x bad"]: not a valid header name"#,
        r#"request[0].set["x-ok"]: listed twice (also as "X-Ok""#,
        r#"request[0].set["X-Ok"]: "{nope}": unknown placeholder {nope}"#,
        r#"request[0].set["Content-Length"]: content-length is managed by the proxy"#,
        r#"request[1].when.host[1]: "*.bad_host" is not a host pattern"#,
        r#"request[1].when.path: "api" is not a path prefix"#,
        r#"request[1].when.method: "get" is not a method"#,
        r#"request[1].when.route: must not be empty"#,
        r#"request[1].remove[0]: "Host": host is managed by the proxy"#,
        r#"request[2]: the rule does nothing"#,
        r#"request[3].rename["x-a"]: renames a header to itself"#,
        r#"request[3].rename["x-b"]: "bad name": not a valid header name"#,
        r#"response[0].append["X-Val"]: "a\nb": not a valid header value"#,
        r#"security_headers.hsts.max_age: "soon" is not a duration"#,
        r#"security_headers.hsts.preload: needs include_subdomains: true"#,
        r#"security_headers.content_type_options: "sniff" is not valid"#,
        r#"security_headers.referrer_policy: "everywhere" is not a referrer policy"#,
        r#"security_headers.frame_options: "allow" is not valid"#,
        r#"security_headers.frame_ancestors[1]: "http://a b" is not a CSP source"#,
        r#"security_headers.frame_ancestors: 'none' must be the only source"#,
        r#"cors.allow_origins[0]: "*" cannot be combined with allow_credentials: true"#,
        r#"cors.allow_origins[1]: "null" would admit"#,
        r#"cors.allow_origins[2]: "https://a.com/" is not an origin (an origin has no path"#,
        r#"cors.allow_origins[3]: "app.example.com" is not an origin (no scheme"#,
        r#"cors.allow_methods[0]: "get" is not a method"#,
        r#"cors.allow_headers[0]: "*" is not a wildcard with allow_credentials: true"#,
        r#"cors.allow_headers[1]: "x y" is not a valid header name"#,
        r#"cors.max_age: "later" is not a duration"#,
    ];
    for w in want {
        assert!(
            p.iter().any(|x| x.starts_with(w)),
            "missing {w:?} in {p:#?}"
        );
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
}

#[test]
fn paths_are_prefixed_where_the_policy_sits() {
    let raw = parse("response: [{set: {'x y': v}}]").unwrap();
    assert_eq!(
        raw.validate("routes[3].header_policy").unwrap_err(),
        [r#"routes[3].header_policy.response[0].set["x y"]: not a valid header name"#]
    );
}

#[test]
fn syntax_errors_name_the_field() {
    let p = problems("request: [{sett: {a: b}}]");
    assert!(p.len() == 1 && p[0].contains("sett"), "{p:?}");
    let p = problems("{\"cors\": {\"allow_origin\": []}}");
    assert!(
        p[0].starts_with("JSON:") && p[0].contains("allow_origin"),
        "{p:?}"
    );
    let p = problems("cors: true");
    assert!(p[0].starts_with("cors: true is not enough"), "{p:?}");
    let p = problems("security_headers: {hsts: [1]}");
    assert!(p[0].starts_with("YAML:"), "{p:?}");
}

#[test]
fn facts_host_without_port() {
    for (host, want) in [
        ("a.com", "a.com"),
        ("a.com:8080", "a.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("", ""),
    ] {
        let f = RequestFacts {
            host,
            ..Default::default()
        };
        assert_eq!(f.host_without_port(), want);
    }
}

#[test]
fn claims_from_several_shapes() {
    let pairs: &[(&str, &str)] = &[("sub", "a")];
    let map: std::collections::HashMap<String, String> = [("sub".into(), "b".into())].into();
    let owned = vec![("sub".to_string(), "c".to_string())];
    assert_eq!(pairs.claim("sub"), Some("a"));
    assert_eq!(owned.claim("sub"), Some("c"));
    let as_facts = RequestFacts {
        claims: Some(&pairs),
        ..Default::default()
    };
    assert_eq!(as_facts.claims.unwrap().claim("sub"), Some("a"));
    assert_eq!(map.claim("sub"), Some("b"));
    assert_eq!(map.claim("email"), None);
}

#[test]
fn switches_take_one_shape() {
    for bad in [
        "security_headers: {hsts: [1]}",
        "security_headers: {hsts: 1y}",
        "security_headers: {frame_ancestors: x}",
        "security_headers: {referrer_policy: [a]}",
        "cors: [https://a.com]",
    ] {
        let p = problems(bad);
        assert!(
            p[0].starts_with("YAML:") && p[0].contains("false, true, or"),
            "{bad}: {p:?}"
        );
    }
}

#[test]
fn prefix_strips_pass_over_managed_names() {
    let p = policy("strip: { request: [x-*, h*] }");
    let mut h = list(&[
        ("Host", "a.com"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "192.0.2.1"),
        ("X-A", "1"),
        ("Hop", "1"),
    ]);
    p.on_request(&RequestFacts::default(), &mut h);
    assert_eq!(
        h.grouped(),
        list(&[("host", "a.com"), ("x-forwarded-proto", "https")]).grouped()
    );
    let p = problems("request: [{remove: [X-Forwarded-Proto]}]");
    assert!(
        p[0].contains("x-forwarded-proto is managed by the proxy"),
        "{p:?}"
    );
}
