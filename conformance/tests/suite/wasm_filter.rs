//! A route's proxy-wasm filter (`routes[].wasm_filter:`) in the real edge
//! binary: the header-policy module built from `wasm-filter/` edits what
//! reaches the service and the visitor, after the native policy or
//! instead of it, and answers CORS preflights itself; modules that trap,
//! loop or grow fail only their own requests with 500 `FILTER_FAILED`;
//! modules that cannot load are refused by `check-config` and by a reload.

use std::path::Path;
use std::time::Duration;

use conformance::{check_config, edge_yaml, exchange, header, Stack};

fn policy_module() -> String {
    test_support::wasm::header_policy_wasm()
        .display()
        .to_string()
}

/// Writes a WAT module as a `.wasm` file in `dir`; its path.
fn write_wat(dir: &Path, name: &str, wat: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(wat).expect("valid WAT")).unwrap();
    path.display().to_string()
}

fn routes(module: &str) -> String {
    format!(
        r#"header_policy:
  request:
    - set: {{ x-native: "1", x-order: native }}
routes:
  - name: filtered
    host: filtered.example.test
    target: demo/hello:8080
    wasm_filter:
      module: {module}
      configuration:
        request:
          - set: {{ x-wasm-route: "{{route}}", x-order: wasm, x-forwarded-port: "8443" }}
          - rename: {{ x-native: x-native-seen-by-wasm }}
        response:
          - set: {{ x-wasm-response: "yes" }}
        strip:
          request: [x-internal-*]
        security_headers: {{ content_type_options: true }}
        cors:
          allow_origins: [https://app.example.test]
          allow_methods: [GET, POST]
  - name: alone
    host: alone.example.test
    target: demo/hello:8080
    wasm_filter:
      module: {module}
      replaces_policy: true
      configuration: |
        request:
          - set: {{ x-wasm-route: "{{route}}" }}
  - name: plain
    host: plain.example.test
    target: demo/hello:8080
"#
    )
}

#[test]
fn a_routes_filter_runs_after_the_native_policy_on_both_sides() {
    let stack = Stack::start_with_edge_yaml(&routes(&policy_module()));
    let (status, headers, body) = exchange(
        &stack,
        "filtered.example.test",
        "/headers",
        &["-H", "X-Internal-Secret: smuggled"],
    );
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-wasm-route"], "filtered", "{seen}");
    assert_eq!(seen["x-order"], "wasm", "the filter runs last: {seen}");
    assert_eq!(
        seen["x-native-seen-by-wasm"], "1",
        "the filter sees the native edits: {seen}"
    );
    assert!(seen.get("x-native").is_none(), "{seen}");
    assert!(seen.get("x-internal-secret").is_none(), "{seen}");
    // The edge's forwarding headers are set, and the filter's edit of one
    // stands (as the native policy's does, and as in Envoy).
    assert_eq!(seen["x-forwarded-host"], "filtered.example.test", "{seen}");
    assert_eq!(seen["x-forwarded-port"], "8443", "{seen}");
    assert_eq!(header(&headers, "x-wasm-response"), Some("yes"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert!(header(&headers, "x-request-id").is_some());

    // Instead of the native policy: only the filter's edits.
    let (status, _, body) = exchange(&stack, "alone.example.test", "/headers", &[]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-wasm-route"], "alone", "{seen}");
    assert!(seen.get("x-native").is_none(), "replaced: {seen}");

    // A route without a filter: the native policy alone.
    let (_, headers, body) = exchange(&stack, "plain.example.test", "/headers", &[]);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-order"], "native", "{seen}");
    assert!(seen.get("x-wasm-route").is_none(), "{seen}");
    assert_eq!(header(&headers, "x-wasm-response"), None);
}

#[test]
fn the_filter_answers_a_cors_preflight_itself() {
    let stack = Stack::start_with_edge_yaml(&routes(&policy_module()));
    let (status, headers, body) = exchange(
        &stack,
        "filtered.example.test",
        "/headers",
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://app.example.test",
            "-H",
            "Access-Control-Request-Method: POST",
        ],
    );
    assert_eq!(status, 204, "{headers:?} {body}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.test")
    );
    assert!(header(&headers, "x-request-id").is_some());
    // Never reached the service: its answer has a JSON body of headers.
    assert!(body.is_empty(), "{body}");
    // A refused origin is not answered: the request goes on to the service.
    let (status, headers, _) = exchange(
        &stack,
        "filtered.example.test",
        "/headers",
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://evil.example",
            "-H",
            "Access-Control-Request-Method: POST",
        ],
    );
    assert_ne!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
}

#[test]
fn misbehaving_filters_fail_only_their_own_requests() {
    let dir = tempfile::tempdir().unwrap();
    let switched = write_wat(
        dir.path(),
        "switched.wasm",
        include_str!("../../../common/wasm-host/tests/host/modules/switched.wat"),
    );
    let yaml = format!(
        r#"routes:
  - name: wild
    host: wild.example.test
    target: demo/hello:8080
    wasm_filter:
      module: {switched}
      memory_limit_mib: 4
      call_timeout: 50ms
  - name: calm
    host: calm.example.test
    target: demo/hello:8080
"#
    );
    let stack = Stack::start_with_edge_yaml(&yaml);
    let (status, _, body) = exchange(&stack, "wild.example.test", "/headers", &[]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-seen"], "1", "the filter ran: {seen}");

    for switch in ["x-crash", "x-loop", "x-grow", "x-pause"] {
        for _ in 0..3 {
            let (status, headers, body) = exchange(
                &stack,
                "wild.example.test",
                "/headers",
                &["-H", &format!("{switch}: 1")],
            );
            assert_eq!(status, 500, "{switch}: {body}");
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(error["error"]["code"], "FILTER_FAILED", "{switch}: {body}");
            assert_eq!(
                Some(error["error"]["request_id"].as_str().unwrap()),
                header(&headers, "x-request-id")
            );
            // Another route, and the same route's next request, are served.
            let (status, _, body) = exchange(&stack, "calm.example.test", "/headers", &[]);
            assert_eq!(status, 200, "after {switch}: {body}");
            let (status, _, body) = exchange(&stack, "wild.example.test", "/headers", &[]);
            assert_eq!(status, 200, "a fresh instance after {switch}: {body}");
        }
    }
    let log = stack.edge.output();
    assert!(log.contains("wasm filter crashed"), "{log}");
    assert!(
        !log.contains("panicked"),
        "the edge never panics on a filter: {log}"
    );
}

/// The exports every module needs; the rest is the test's.
const MINIMAL_EXPORTS: &str = r#"
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
"#;

fn route_with(module: &str, extra: &str) -> String {
    format!(
        "routes:\n  - name: r\n    host: r.example.test\n    target: demo/hello:8080\n    wasm_filter:\n      module: {module}\n{extra}"
    )
}

#[test]
fn modules_that_cannot_run_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = write_wat(
        dir.path(),
        "missing.wasm",
        &format!(
            r#"(module (import "env" "proxy_open_door" (func (param i32) (result i32))) {MINIMAL_EXPORTS})"#
        ),
    );
    let (ok, err) = check_config(dir.path(), &route_with(&missing, ""));
    assert!(!ok);
    assert!(
        err.contains("routes[0].wasm_filter.module") && err.contains("env.proxy_open_door"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a module").unwrap();
    let (ok, err) = check_config(dir.path(), &route_with(garbage.to_str().unwrap(), ""));
    assert!(!ok);
    assert!(err.contains("not a valid WebAssembly module"), "{err}");

    let (ok, err) = check_config(dir.path(), &route_with("nowhere.wasm", ""));
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");

    // The real filter with a policy it refuses: its own words come back.
    let (ok, err) = check_config(
        dir.path(),
        &route_with(
            &policy_module(),
            "      configuration: { request: [{ set: { \"bad name\": x } }] }\n",
        ),
    );
    assert!(!ok);
    assert!(
        err.contains("routes[0].wasm_filter") && err.contains("refused its configuration"),
        "{err}"
    );
    assert!(err.contains("bad name"), "the filter's own reason: {err}");

    let (ok, err) = check_config(
        dir.path(),
        &route_with(
            &policy_module(),
            "      memory_limit_mib: 0\n      call_timeout: soon\n",
        ),
    );
    assert!(!ok);
    assert!(
        err.contains("memory_limit_mib") && err.contains("call_timeout"),
        "{err}"
    );

    let (ok, out) = check_config(dir.path(), &route_with(&policy_module(), ""));
    assert!(ok, "{out}");
}

#[test]
fn a_reload_with_a_module_that_cannot_load_keeps_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = write_wat(
        dir.path(),
        "missing.wasm",
        &format!(r#"(module (import "env" "proxy_open_door" (func)) {MINIMAL_EXPORTS})"#),
    );
    let stack = Stack::start_with_edge_yaml(&routes(&policy_module()));
    stack.write_edge_yaml(&edge_yaml(&route_with(&missing, "")));
    stack
        .edge
        .wait_line("proxy_open_door", Duration::from_secs(10));
    let (status, _, body) = exchange(&stack, "filtered.example.test", "/headers", &[]);
    assert_eq!(status, 200, "the old config still serves: {body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-wasm-route"], "filtered", "{seen}");
}
