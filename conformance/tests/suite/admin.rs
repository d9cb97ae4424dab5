//! The admin listener: `GET /metrics`, read as Prometheus reads it (the
//! exposition is parsed by the Prometheus client library's strict
//! OpenMetrics parser, `TEST_PYTHON`, set up by `scripts/test`), and the
//! admin API with its token.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use conformance::{curl, http_status, Stack};
use serde_json::Value;

/// One sample: name, labels, value.
type Sample = (String, serde_json::Map<String, Value>, f64);

/// `(name, labels, value)` of every sample in `text`, as the OpenMetrics
/// parser reads them (it refuses anything malformed).
fn parse(text: &str) -> Vec<Sample> {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        print(json.dumps([[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))\n";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (scripts/test sets TEST_PYTHON)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Sample> = serde_json::from_slice(&out.stdout).unwrap();
    samples
}

fn scrape(stack: &Stack) -> (String, Vec<Sample>) {
    let admin = stack.admin_addr.clone().expect("an admin listener");
    let out = curl(&["-s", "-f", &format!("http://{admin}/metrics")]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let samples = parse(&text);
    (text, samples)
}

/// The value of the sample `name` whose labels include `labels` (0 when
/// there is none).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Requests by route, status class and failing hop; latency histograms;
/// tunnels per environment; refusals by code; reloads by outcome. The
/// exposition passes the strict OpenMetrics parser.
#[test]
fn metrics_count_what_the_edge_did() {
    let stack = Stack::start_with_admin("");
    let url = stack.url("hello-8080", "/");
    for _ in 0..3 {
        assert_eq!(http_status(&[&url]), "200");
    }
    // Not registered by the sidecar: the edge answers ROUTE_NOT_FOUND itself.
    assert_eq!(http_status(&[&stack.url("nothing-1", "/")]), "404");

    let (text, samples) = scrape(&stack);
    let route = [("environment", "demo"), ("route", "hello-8080")];
    let ok = [route[0], route[1], ("status", "2xx"), ("hop", "")];
    assert_eq!(value(&samples, "edge_requests_total", &ok), 3.0, "{text}");
    assert_eq!(
        value(&samples, "edge_request_duration_seconds_count", &route),
        3.0
    );
    assert_eq!(
        value(&samples, "edge_upstream_duration_seconds_count", &route),
        3.0
    );
    assert!(value(&samples, "edge_response_body_bytes_total", &route) > 0.0);
    assert_eq!(
        value(
            &samples,
            "edge_requests_total",
            &[("status", "4xx"), ("hop", "edge"), ("route", "")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "edge_refusals_total",
            &[("code", "ROUTE_NOT_FOUND")]
        ),
        1.0
    );
    // The sidecar's two sessions.
    assert_eq!(
        value(
            &samples,
            "edge_tunnel_sessions",
            &[("environment", "demo"), ("cluster", "conformance")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(value(&samples, "edge_draining", &[]), 0.0);
    // No `admin:` section: the API is off, and says how to turn it on.
    let admin = stack.admin_addr.clone().unwrap();
    let off = curl(&[
        "-s",
        "-w",
        "%{http_code}",
        &format!("http://{admin}/api/tunnels"),
    ]);
    let off = String::from_utf8_lossy(&off.stdout).into_owned();
    assert!(
        off.ends_with("404") && off.contains("admin.token_sha256"),
        "{off}"
    );

    // A config that does not load is counted as refused, then a good one
    // as applied.
    let good = std::fs::read_to_string(stack.dir.path().join("edge.yaml")).unwrap();
    stack.write_edge_yaml("listen: [\n");
    stack
        .edge
        .wait_line("config reload refused", Duration::from_secs(10));
    stack.write_edge_yaml(&format!("{good}\n# touched\n"));
    stack
        .edge
        .wait_line("config reloaded", Duration::from_secs(10));
    let (_, samples) = scrape(&stack);
    for outcome in ["refused", "applied"] {
        assert_eq!(
            value(
                &samples,
                "edge_config_reloads_total",
                &[("outcome", outcome)]
            ),
            1.0,
            "{outcome}"
        );
    }
}

const ADMIN_TOKEN: &str = "an-admin-token-for-the-tests";

/// `curl` against the admin API, with `token`; returns (status, JSON body).
fn api(stack: &Stack, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let admin = stack.admin_addr.clone().unwrap();
    let url = format!("http://{admin}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-s", "-X", method, "-w", "\n%{http_code}", &url];
    if let Some(auth) = &auth {
        args.extend(["-H", auth.as_str()]);
    }
    let out = String::from_utf8(curl(&args).stdout).unwrap();
    let (body, status) = out.rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The admin API, with a token from `admin.token_sha256`: the tunnels
/// (with the sidecar's version), the routes and where they came from, the
/// config version in force, and an operator's drain of one tunnel (its
/// sidecar moves the work to a new session at once).
#[test]
fn the_admin_api_lists_tunnels_and_routes_and_drains_a_tunnel() {
    let hash = test_support::harness::token_hash(ADMIN_TOKEN);
    let stack = Stack::start_with_admin(&format!("admin:\n  token_sha256: \"{hash}\"\n"));
    let (status, _) = api(&stack, "GET", "/api/tunnels", None);
    assert_eq!(status, 401);
    let (status, _) = api(&stack, "GET", "/api/tunnels", Some("not-the-token"));
    assert_eq!(status, 401);

    let (status, body) = api(&stack, "GET", "/api/tunnels", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{body}");
    let tunnels = body["tunnels"].as_array().unwrap().clone();
    assert_eq!(tunnels.len(), 2, "{body}");
    for t in &tunnels {
        assert_eq!(t["environment"], "demo");
        assert_eq!(t["cluster"], "conformance");
        assert_eq!(t["sidecar_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(t["services"], serde_json::json!(["hello:8080"]));
        assert_eq!(t["draining"], false);
    }

    let (_, body) = api(&stack, "GET", "/api/routes", Some(ADMIN_TOKEN));
    let routes = body["routes"].as_array().unwrap();
    assert!(
        routes.iter().any(|r| r["source"] == "sidecar"
            && r["host"] == "hello-8080-demo.preview.localhost"
            && r["port"] == 8080),
        "{body}"
    );

    let yaml = std::fs::read(stack.dir.path().join("edge.yaml")).unwrap();
    let digest = sha2_hex(&yaml);
    let (_, body) = api(&stack, "GET", "/api/config", Some(ADMIN_TOKEN));
    assert_eq!(body["version"].as_str(), Some(&digest[..16]), "{body}");

    let drained = tunnels[0]["id"].as_str().unwrap().to_owned();
    let (status, body) = api(
        &stack,
        "POST",
        &format!("/api/tunnels/{drained}/drain"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 202, "{body}");
    let sidecar = stack.sidecar.as_ref().unwrap();
    sidecar.wait_line("drained by an operator", Duration::from_secs(10));
    // Two sessions again, the drained one gone.
    sidecar.wait_lines("tunnel up", 3, Duration::from_secs(10));
    test_support::wait::until_blocking("the drained session to go", || {
        let (_, body) = api(&stack, "GET", "/api/tunnels", Some(ADMIN_TOKEN));
        let ids: Vec<&str> = body["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        ids.len() == 2 && !ids.contains(&drained.as_str())
    });
    assert_eq!(http_status(&[&stack.url("hello-8080", "/")]), "200");
    let (status, _) = api(&stack, "POST", "/api/tunnels/nope/drain", Some(ADMIN_TOKEN));
    assert_eq!(status, 404);
}

fn sha2_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The sidecar's own admin listener (`admin:` in its YAML): ready while a
/// session is up, and its stream counters as Prometheus reads them.
#[test]
fn the_sidecar_serves_probes_and_metrics() {
    let mut stack = Stack::start();
    stack.sidecar.take().unwrap().kill();
    stack
        .edge
        .wait_lines("tunnel down", 2, Duration::from_secs(15));
    let yaml = std::fs::read_to_string(stack.sidecar_yaml()).unwrap();
    let path = stack.dir.path().join("sidecar-admin.yaml");
    std::fs::write(&path, format!("{yaml}admin: 127.0.0.1:0\n")).unwrap();
    let sidecar = conformance::Proc::spawn("sidecar", &["run", "--config", path.to_str().unwrap()]);
    let line = sidecar.wait_line("admin listener up", Duration::from_secs(10));
    let admin = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("address="))
        .expect("the admin address in the line")
        .to_owned();
    sidecar.wait_lines("tunnel up", 2, Duration::from_secs(10));
    assert_eq!(http_status(&[&format!("http://{admin}/healthz")]), "200");
    assert_eq!(http_status(&[&format!("http://{admin}/readyz")]), "200");
    for _ in 0..3 {
        assert_eq!(http_status(&[&stack.url("hello-8080", "/")]), "200");
    }

    let out = curl(&["-s", "-f", &format!("http://{admin}/metrics")]);
    let text = String::from_utf8(out.stdout).unwrap();
    let samples = parse(&text);
    assert_eq!(
        value(&samples, "sidecar_sessions_connected", &[]),
        2.0,
        "{text}"
    );
    assert!(
        value(&samples, "sidecar_streams_opened_total", &[]) >= 1.0,
        "{text}"
    );
    assert!(value(&samples, "sidecar_service_received_bytes_total", &[]) > 0.0);
    assert_eq!(value(&samples, "sidecar_streams_failed_total", &[]), 0.0);
    assert_eq!(value(&samples, "sidecar_draining", &[]), 0.0);
    assert_eq!(value(&samples, "sidecar_edge_replicas", &[]), 1.0);
}
