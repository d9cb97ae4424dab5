//! The header policy applied natively by the edge (`header_policy:` and
//! `routes[].header_policy:`), through the real binaries: what reaches the
//! service, what reaches the visitor, CORS preflights answered at the edge,
//! and a bad policy refused with its YAML path.

use conformance::{check_config, curl, exchange, header, Stack};

const POLICY: &str = r#"header_policy:
  strip:
    request: [x-internal-*]
  request:
    - set: { x-edge-policy: default, x-seen-route: "{route}" }
    - when: { host: api.example.test }
      set: { x-api-host: "yes" }
  security_headers: { content_type_options: true, referrer_policy: true }
routes:
  - name: api
    host: api.example.test
    target: demo/hello:8080
    header_policy:
      request:
        - set: { x-seen-route: "{route}", x-client: "{client_ip}" }
        - when: { method: [PUT, DELETE] }
          set: { x-never: "set" }
      security_headers: { frame_options: deny, referrer_policy: false }
      cors:
        allow_origins: [https://app.example.test]
        allow_methods: [GET, POST]
        allow_headers: [content-type]
"#;

#[test]
fn the_default_policy_edits_preview_requests_and_responses() {
    let stack = Stack::start_with_edge_yaml(POLICY);
    let (status, headers, body) = exchange(
        &stack,
        &stack.preview_host(),
        "/headers",
        &["-H", "X-Internal-Secret: smuggled", "-H", "X-Kept: 1"],
    );
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-edge-policy"], "default");
    assert!(seen.get("x-internal-secret").is_none(), "stripped: {seen}");
    assert_eq!(seen["x-kept"], "1");
    // No route name for a preview URL: that header is left alone; and the
    // rule for another host does not apply.
    assert!(seen.get("x-seen-route").is_none(), "{seen}");
    assert!(seen.get("x-api-host").is_none(), "{seen}");
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&headers, "referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(header(&headers, "x-frame-options"), None);
    assert!(header(&headers, "x-request-id").is_some());
}

#[test]
fn a_routes_policy_runs_after_the_default_with_its_name_and_the_client() {
    let stack = Stack::start_with_edge_yaml(POLICY);
    let (status, headers, body) = exchange(&stack, "api.example.test", "/headers", &[]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-edge-policy"], "default", "inherited");
    assert_eq!(seen["x-seen-route"], "api");
    assert_eq!(seen["x-client"], "127.0.0.1");
    assert_eq!(seen["x-api-host"], "yes");
    assert!(seen.get("x-never").is_none(), "a GET: {seen}");
    assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));
    assert_eq!(
        header(&headers, "referrer-policy"),
        None,
        "turned off by the route"
    );
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
}

#[test]
fn cors_preflights_are_answered_at_the_edge_and_responses_carry_cors() {
    let stack = Stack::start_with_edge_yaml(POLICY);
    let stats = |stack: &Stack| -> u64 {
        let url = format!("http://127.0.0.1:{}/stats", stack.http_port);
        let out = curl(&["-H", "Host: api.example.test", &url]).stdout;
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()["requests"]
            .as_u64()
            .unwrap()
    };
    let before = stats(&stack);
    let preflight = |origin: &str| {
        exchange(
            &stack,
            "api.example.test",
            "/headers",
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: POST",
                "-H",
                "Access-Control-Request-Headers: content-type",
            ],
        )
    };
    let (status, headers, _) = preflight("https://app.example.test");
    assert_eq!(status, 204);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.test")
    );
    assert!(header(&headers, "access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    assert!(header(&headers, "x-request-id").is_some());
    let (status, headers, _) = preflight("https://evil.example.test");
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    // Neither preflight reached the service: the one request it saw since
    // is the second /stats.
    assert_eq!(stats(&stack), before + 1);

    let (_, headers, _) = exchange(
        &stack,
        "api.example.test",
        "/headers",
        &["-H", "Origin: https://app.example.test"],
    );
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.test")
    );
}

#[test]
fn a_bad_policy_is_refused_with_its_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = POLICY
        .replace("x-edge-policy: default", "\"x bad\": default")
        .replace("name: api", "name: api\n    path: /x")
        + "  - { name: api, host: other.example.test, target: demo/hello:8080 }\n";
    let (ok, err) = check_config(dir.path(), &bad);
    assert!(!ok);
    assert!(
        err.contains("header_policy.request[0].set[\"x bad\"]"),
        "{err}"
    );
    assert!(
        err.contains("routes[1].name: \"api\" is also routes[0]'s name"),
        "{err}"
    );
}
