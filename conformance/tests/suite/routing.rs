//! Custom-domain routes from YAML and hot reload, through the real binaries.

use std::time::Duration;

use conformance::{curl, edge_yaml, http_status, signal, Stack};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const APP_ROUTE: &str = "routes:\n  - host: app.example.test\n    target: demo/hello:8080\n";
const API_ROUTE: &str =
    "routes:\n  - host: '*.example.test'\n    path: /api\n    strip_prefix: true\n    target: demo/hello:8080\n";

fn status(stack: &Stack, host: &str, path: &str) -> String {
    let url = format!("http://127.0.0.1:{}{path}", stack.http_port);
    http_status(&["-H", &format!("Host: {host}"), &url])
}

fn body(stack: &Stack, host: &str, path: &str) -> String {
    let url = format!("http://127.0.0.1:{}{path}", stack.http_port);
    String::from_utf8_lossy(&curl(&["-H", &format!("Host: {host}"), &url]).stdout).into_owned()
}

/// The edge looks at its file once a second and logs what it did.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

#[test]
fn custom_domain_routes_with_path_prefix_and_strip() {
    let stack = Stack::start_with_edge_yaml(API_ROUTE);
    // /api/headers on any subdomain reaches the service as /headers.
    let seen: serde_json::Value =
        serde_json::from_str(&body(&stack, "shop.example.test", "/api/headers")).unwrap();
    assert_eq!(seen["host"], "shop.example.test");
    assert_eq!(status(&stack, "shop.example.test", "/other"), "404");
    assert_eq!(
        status(&stack, "example.test", "/api"),
        "404",
        "a wildcard does not match its apex"
    );
}

#[test]
fn a_changed_file_is_applied_and_a_bad_one_refused() {
    let stack = Stack::start();
    assert_eq!(status(&stack, "app.example.test", "/"), "404");

    stack.write_edge_yaml(&edge_yaml(APP_ROUTE));
    stack.edge.wait_line("config reloaded", RELOAD_WAIT);
    assert_eq!(status(&stack, "app.example.test", "/"), "200");

    // Broken YAML: refused, with file, line and field; the old routes keep serving.
    stack.write_edge_yaml(&edge_yaml(&format!("{APP_ROUTE}    tiemout: 1s\n")));
    // The refusal is one log event over several lines (the problems follow
    // the message): wait for the line that names the problem.
    stack.edge.wait_line("config reload refused", RELOAD_WAIT);
    let problem = stack.edge.wait_line("tiemout", RELOAD_WAIT);
    assert!(stack.edge.output().contains("edge.yaml"), "{problem}");
    assert_eq!(status(&stack, "app.example.test", "/"), "200");

    // An invalid value is refused the same way.
    stack.write_edge_yaml(&edge_yaml(
        "routes:\n  - host: 'bad host'\n    target: demo/hello:8080\n",
    ));
    stack
        .edge
        .wait_lines("config reload refused", 2, RELOAD_WAIT);
    stack.edge.wait_line("routes[0].host", RELOAD_WAIT);
    assert_eq!(status(&stack, "app.example.test", "/"), "200");
}

#[test]
fn a_reload_applies_h2c_and_names_the_keys_that_wait_for_a_restart() {
    let stack = Stack::start();
    let url = stack.url("hello-8080", "/");
    let prior_knowledge = || {
        let out = curl(&[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &url,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_ne!(prior_knowledge(), "2");
    stack.write_edge_yaml(&edge_yaml(
        "visitors:\n  h2c: true\n  keepalive_timeout: 30s\nupstream:\n  keepalive_pool_size: 8\n",
    ));
    stack
        .edge
        .wait_line("config reloaded", std::time::Duration::from_secs(10));
    let edge_lines = |needle: &str| {
        stack
            .edge
            .output()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    // visitors.h2c is read per connection: new ones speak it at once.
    assert_eq!(prior_knowledge(), "2");
    assert_eq!(edge_lines("visitors.h2c"), 0, "{}", stack.edge.output());
    for key in [
        "visitors.keepalive_timeout changed",
        "upstream.keepalive_pool_size changed",
    ] {
        assert_eq!(edge_lines(key), 1, "{key}:\n{}", stack.edge.output());
    }
}

#[test]
fn sighup_reloads() {
    let stack = Stack::start();
    signal(stack.edge.pid(), "HUP");
    stack.edge.wait_line("trigger=\"SIGHUP\"", RELOAD_WAIT);
    assert!(stack
        .edge
        .output()
        .lines()
        .any(|l| l.contains("config reloaded") && l.contains("SIGHUP")));
    // Still serving.
    assert_eq!(
        status(
            &stack,
            &format!("hello-8080-demo.preview.localhost:{}", stack.http_port),
            "/"
        ),
        "200"
    );
}

#[tokio::test]
async fn requests_and_websockets_in_flight_survive_a_reload() {
    let stack = Stack::start();
    let slow_url = stack.url("hello-8080", "/slow?ms=2500");
    let slow = tokio::task::spawn_blocking(move || {
        String::from_utf8_lossy(&curl(&[&slow_url]).stdout).into_owned()
    });
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let ws_url = stack.url("hello-8080", "/ws").replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url, tcp).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("welcome"));

    stack.write_edge_yaml(&edge_yaml(APP_ROUTE));
    // Nothing on this side needs the runtime meanwhile: the WebSocket is
    // quiet and the slow request runs on a blocking thread.
    stack.edge.wait_line("config reloaded", RELOAD_WAIT);
    ws.send(Message::text("after reload")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after reload")
    );
    assert_eq!(slow.await.unwrap(), "slow but here\n");
}

#[test]
fn revoking_a_token_closes_its_tunnels() {
    let stack = Stack::start();
    let revoked = edge_yaml("").replace(
        &test_support::harness::token_hash(conformance::TOKEN),
        &"0".repeat(64),
    );
    stack.write_edge_yaml(&revoked);
    // Logged once the revoked sessions are closed and gone.
    stack.edge.wait_line("config reloaded", RELOAD_WAIT);
    assert_eq!(
        status(
            &stack,
            &format!("hello-8080-demo.preview.localhost:{}", stack.http_port),
            "/",
        ),
        "503"
    );
    let sidecar = stack.sidecar.as_ref().unwrap();
    sidecar.wait_output("word of why", RELOAD_WAIT, |lines| {
        lines
            .iter()
            .find(|l| l.contains("revoked") || l.contains("does not know this sidecar token"))
            .cloned()
    });
}

#[test]
fn dot_segments_are_resolved_before_routing_and_encoded_ones_refused_under_a_stripped_prefix() {
    let stack = Stack::start_with_edge_yaml(API_ROUTE);
    let get = |host: &str, path: &str| conformance::exchange(&stack, host, path, &["--path-as-is"]);
    // `/api/x/../headers` is `/api/headers`: the service sees `/headers`.
    let (status, _, body) = get("a.example.test", "/api/x/../headers");
    assert_eq!(status, 200, "{body}");
    // `/api/../headers` is `/headers`, outside the route: not the service's
    // `/../headers`.
    let (status, _, body) = get("a.example.test", "/api/../headers");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ROUTE_NOT_FOUND"), "{body}");
    for path in [
        "/api/%2e%2e/headers",
        "/api/%2E%2E%2fheaders",
        "/api/a%2Fb",
        "/../headers",
    ] {
        let (status, _, body) = get("a.example.test", path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("BAD_REQUEST"), "{path}: {body}");
    }
    // On a preview URL the service sees the resolved path too.
    let (status, _, body) = get(&stack.preview_host(), "/x/./../headers");
    assert_eq!(status, 200, "{body}");
}
