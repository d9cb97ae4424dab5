//! Rate limits and concurrency caps through the real binaries (`limits:`,
//! `clusters[].limits`, `routes[].limits`): the per-cluster defaults, each
//! scope's own count, the pre-auth guard, what a refusal says (429 with
//! `Retry-After` and the RateLimit fields, JSON, HTML or a gRPC status),
//! dry runs, caps on what is in flight and on open connections, and counts
//! that survive a config reload.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use conformance::{check_config, edge_yaml, exchange, header, read_response, Conn, Stack, Tunnel};
use serde_json::Value;

const HOST: &str = "hello-8080-demo.preview.localhost";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON: {body}"))
}

#[test]
fn each_cluster_gets_a_thousand_requests_a_minute_by_default() {
    let stack = Stack::start();
    let mut conn = Conn::open(&stack);
    // GCRA: a burst of 1,000, then one more every 60 ms. However long the
    // burst takes here, what was admitted stays within those bounds.
    let started = std::time::Instant::now();
    let mut admitted = 0u128;
    let (status, headers, body) = loop {
        let response = conn.get(HOST, "/", "");
        if response.0 != 200 || admitted == 3000 {
            break response;
        }
        admitted += 1;
    };
    let earned = started.elapsed().as_millis() / 60 + 1;
    assert!(
        (1000..=1000 + earned).contains(&admitted),
        "{admitted} admitted, {earned} earned back"
    );
    assert_eq!(status, 429);
    let error = &json(&body)["error"];
    assert_eq!(error["code"], "RATE_LIMITED");
    assert_eq!(error["status"], 429);
    assert_eq!(error["hop"], "visitor");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("to this cluster"),
        "{error}"
    );
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"cluster\";q=1000;w=60")
    );
    // One request is earned back every 60 ms.
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(header(&headers, "ratelimit"), Some("\"cluster\";r=0;t=1"));
    assert_eq!(
        header(&headers, "x-request-id"),
        error["request_id"].as_str()
    );
    let line = stack
        .edge
        .wait_line("outcome=\"RATE_LIMITED\"", Duration::from_secs(5));
    assert!(line.contains("hop=\"visitor\""), "{line}");
}

#[test]
fn each_route_counts_apart_and_may_have_its_own_limit() {
    let stack = Stack::start_with_edge_yaml(
        "limits:\n  route: { rate: 2, period: 1h }\n\
         routes:\n  - { host: a.example.test, target: demo/hello:8080 }\n\
         \x20 - { host: b.example.test, target: demo/hello:8080, limits: { rate: 1, period: 1h } }\n",
    );
    let mut conn = Conn::open(&stack);
    let (a, (_, headers, _)) = conn.get_n(3, "a.example.test", "/");
    assert_eq!(a, [200, 200, 429]);
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"route\";q=2;w=3600")
    );
    assert!(
        header(&headers, "retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1700
    );
    let (b, (_, headers, _)) = conn.get_n(2, "b.example.test", "/");
    assert_eq!(b, [200, 429]);
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"route\";q=1;w=3600")
    );
    // A preview URL is a route of its own.
    let (preview, _) = conn.get_n(3, HOST, "/");
    assert_eq!(preview, [200, 200, 429]);
}

#[test]
fn a_cluster_may_have_its_own_limit() {
    // Appended to the harness's one cluster.
    let stack = Stack::start_with_edge_yaml("    limits: { rate: 3, period: 1h }\n");
    let (statuses, (_, headers, _)) = Conn::open(&stack).get_n(4, HOST, "/");
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"cluster\";q=3;w=3600")
    );
}

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../test-support/jwt-keys");

fn auth_yaml() -> String {
    format!(
        "auth:\n  issuers:\n    - {{ issuer: https://id.example.test, algorithms: [ES256], keys: [{KEYS}/ec.pub], audiences: [preview] }}\n  access:\n    default: authenticated\n"
    )
}

/// A bearer token for `subject` from the test issuer.
fn bearer(subject: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let key = EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/ec.key")).unwrap()).unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "iss": "https://id.example.test", "aud": "preview", "sub": subject, "exp": exp
    });
    let token = encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
    format!("Authorization: Bearer {token}\r\n")
}

#[test]
fn each_identity_counts_apart() {
    let stack = Stack::start_with_edge_yaml(&format!(
        "{}limits:\n  identity: {{ rate: 2, period: 1h }}\n",
        auth_yaml()
    ));
    let (alice, bob) = (bearer("alice"), bearer("bob"));
    let mut conn = Conn::open(&stack);
    assert_eq!(conn.get(HOST, "/", &alice).0, 200);
    assert_eq!(conn.get(HOST, "/", &alice).0, 200);
    let (status, headers, body) = conn.get(HOST, "/", &alice);
    assert_eq!(status, 429);
    assert!(json(&body)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("from this identity"));
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"identity\";q=2;w=3600")
    );
    // Bob, from the same address, has his own count.
    assert_eq!(Conn::open(&stack).get(HOST, "/", &bob).0, 200);
}

#[test]
fn each_client_address_counts_apart_from_what_it_claims() {
    let stack = Stack::start_with_edge_yaml("limits:\n  client_ip: { rate: 4, period: 1h }\n");
    let mut conn = Conn::open(&stack);
    // Anonymous visitors count by address only; a claimed address from an
    // untrusted hop changes nothing.
    let spoof = "X-Forwarded-For: 203.0.113.9\r\n";
    let statuses: Vec<u16> = (0..5).map(|_| conn.get(HOST, "/", spoof).0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    let mut conn = Conn::open(&stack);
    let (_, headers, body) = conn.get(HOST, "/", "");
    assert_eq!(json(&body)["error"]["code"], "RATE_LIMITED");
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"client_ip\";q=4;w=3600")
    );
}

#[test]
fn the_guard_refuses_a_flood_before_any_auth_work() {
    // Every request here carries a bad token: without the guard each
    // would be a 401 after a signature check.
    let yaml = format!(
        "{}limits:\n  guard: {{ rate: 3, period: 1h }}\n",
        auth_yaml()
    );
    let stack = Stack::start_tunnel(Tunnel::off_visitor_ports(), &yaml, &[], &[]);
    let mut conn = Conn::open(&stack);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = conn.get(HOST, "/", "Authorization: Bearer not.a.jwt\r\n");
        statuses.push(response.0);
        conn = Conn::open(&stack);
        if response.0 == 429 {
            assert_eq!(json(&response.2)["error"]["code"], "RATE_LIMITED");
            assert_eq!(
                header(&response.1, "ratelimit-policy"),
                Some("\"guard\";q=3;w=3600")
            );
        }
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // The edge's own paths are behind the guard too.
    let (status, _, _) = conn.get(HOST, "/.well-known/jwks.json", "");
    assert_eq!(status, 429);
}

#[test]
fn browsers_read_a_page_and_grpc_clients_a_status() {
    let stack = Stack::start_with_edge_yaml("limits:\n  client_ip: { rate: 1, period: 1h }\n");
    assert_eq!(exchange(&stack, HOST, "/", &[]).0, 200);

    let (status, headers, page) = exchange(
        &stack,
        HOST,
        "/",
        &["-H", "Accept: text/html,application/xhtml+xml,*/*;q=0.8"],
    );
    assert_eq!(status, 429);
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.contains("429 Too Many Requests"), "{page}");
    assert!(page.contains("<code>RATE_LIMITED</code>"), "{page}");
    let id = header(&headers, "x-request-id").unwrap();
    assert!(page.contains(id), "{page}");
    assert_eq!(
        header(&headers, "retry-after").map(|v| v.len() > 2),
        Some(true)
    );

    let (status, headers, _) = exchange(
        &stack,
        HOST,
        "/",
        &["-H", "content-type: application/grpc", "-d", ""],
    );
    // gRPC's status is in the headers, over HTTP/1.1 as over HTTP/2.
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(header(&headers, "grpc-status"), Some("8"));
    assert!(header(&headers, "grpc-message")
        .unwrap()
        .starts_with("RATE_LIMITED"));
}

#[test]
fn a_dry_run_limit_only_logs_and_counts() {
    let stack = Stack::start_with_edge_yaml(
        "limits:\n  client_ip: { rate: 1, period: 1h, dry_run: true }\n",
    );
    let mut conn = Conn::open(&stack);
    let (statuses, _) = conn.get_n(4, HOST, "/");
    assert_eq!(statuses, [200; 4]);
    let lines = stack.edge.wait_lines(
        "a dry-run limit would refuse this request",
        3,
        Duration::from_secs(5),
    );
    assert!(lines[0].contains("limit=\"client_ip\""), "{}", lines[0]);
}

#[test]
fn a_cap_on_requests_in_flight_refuses_the_one_too_many_until_one_ends() {
    let stack = Stack::start_with_edge_yaml(
        "routes:\n  - { host: one.example.test, target: demo/hello:8080, limits: { in_flight: 1 } }\n",
    );
    let mut held = conformance::hold(&stack, "one.example.test", "x");
    let (status, headers, body) = Conn::open(&stack).get("one.example.test", "/", "");
    assert_eq!(status, 429);
    let error = &json(&body)["error"];
    assert_eq!(error["code"], "CONCURRENCY_LIMITED");
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"route\";q=1;qu=\"concurrent-requests\"")
    );
    // Other routes are not affected.
    assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
    // Once the held response ends, there is room again.
    conformance::release(&stack, "x");
    let mut line = String::new();
    while line != "second\n" {
        line.clear();
        held.read_line(&mut line).unwrap();
    }
    test_support::wait::until_blocking("the held request to be counted out", || {
        Conn::open(&stack).get("one.example.test", "/", "").0 == 200
    });
}

#[test]
fn open_connections_per_address_are_capped() {
    let yaml = "limits:\n  client_ip: { connections: 2 }\n";
    let stack = Stack::start_tunnel(Tunnel::off_visitor_ports(), yaml, &[], &[]);
    let mut first = Conn::open(&stack);
    let mut second = Conn::open(&stack);
    assert_eq!(first.get(HOST, "/", "").0, 200);
    assert_eq!(second.get(HOST, "/", "").0, 200);
    // The third is closed unserved.
    let mut third = TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = write!(third, "GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // One closes: a new one is served.
    drop(first);
    test_support::wait::until_blocking("a connection slot to free up", || {
        let mut c = Conn::open(&stack);
        write!(c.reader.get_mut(), "GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").unwrap();
        let mut line = String::new();
        c.reader.read_line(&mut line).is_ok() && line.starts_with("HTTP/1.1 200")
    });
}

#[test]
fn a_reload_keeps_the_counts_of_limits_it_does_not_change() {
    let limits = "limits:\n  client_ip: { rate: 2, period: 1h }\n";
    let stack = Stack::start_with_edge_yaml(limits);
    let (statuses, _) = Conn::open(&stack).get_n(3, HOST, "/");
    assert_eq!(statuses, [200, 200, 429]);

    // Another part of the config changes: the spent burst stays spent.
    stack.write_edge_yaml(&edge_yaml(&format!(
        "{limits}visitors:\n  send_timeout: 59s\n"
    )));
    stack
        .edge
        .wait_line("config reloaded", Duration::from_secs(10));
    assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 429);

    // The limit itself changes: it starts afresh.
    stack.write_edge_yaml(&edge_yaml(
        "limits:\n  client_ip: { rate: 3, period: 1h }\n",
    ));
    stack
        .edge
        .wait_lines("config reloaded", 2, Duration::from_secs(10));
    assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
}

#[test]
fn bad_limits_are_refused_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = check_config(
        dir.path(),
        "limits:\n  guard: { in_flight: 3 }\n  route: { rate: 0 }\n  cluster: { rate: 5, period: 1500ms }\n  identity: { connections: 2, burst: 3 }\n",
    );
    assert!(!ok);
    for expected in [
        "limits.guard.in_flight: not a limit of this scope",
        "limits.guard: needs a rate",
        "limits.route.rate: must be at least 1",
        "limits.cluster.period: whole seconds",
        "limits.identity.connections: not a limit of this scope (open connections are counted per client IP",
        "limits.identity.burst: only with a rate",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
    let (ok, err) = check_config(dir.path(), "limits:\n  tunnel: { rate: fast }\n");
    assert!(!ok);
    assert!(err.contains("rate"), "{err}");
}

#[tokio::test]
async fn websockets_per_tunnel_are_capped() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::{Error, Message};
    let stack = Stack::start_with_edge_yaml("limits:\n  tunnel: { upgrades: 1 }\n");
    let url = stack.url("hello-8080", "/ws").replace("http://", "ws://");
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port))
            .await
            .unwrap();
        tokio_tungstenite::client_async(url.clone(), tcp).await
    };
    let (mut first, _) = connect().await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("welcome")
    );
    // The sidecar's two connections are one tunnel: the second WebSocket
    // is refused whichever it would have taken.
    for _ in 0..4 {
        match connect().await {
            Err(Error::Http(response)) => {
                assert_eq!(response.status(), 429);
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
                assert_eq!(json(&body)["error"]["code"], "CONCURRENCY_LIMITED");
            }
            other => panic!("a second WebSocket: {:?}", other.map(|(_, r)| r.status())),
        }
    }
    // Plain requests are not upgrades.
    assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
    // Once the edge has logged the first one's end, its permit is gone.
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    stack.edge.wait_output(
        "the WebSocket's request line",
        Duration::from_secs(10),
        |lines| {
            lines
                .iter()
                .find(|l| l.contains("path=\"/ws\"") && l.contains(" status=101 "))
                .cloned()
        },
    );
    connect()
        .await
        .expect("room after the first WebSocket closed");
}

#[test]
fn behind_a_load_balancer_the_client_address_comes_from_the_proxy_protocol() {
    let yaml = "visitors:\n  proxy_protocol: true\nlimits:\n  client_ip: { rate: 1, period: 1h }\n";
    let stack = Stack::start_tunnel(Tunnel::off_visitor_ports(), yaml, &[], &[]);
    let through_balancer = |header: &[u8]| {
        let mut c = TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(header).unwrap();
        c.write_all(format!("GET /headers HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .unwrap();
        read_response(&mut BufReader::new(c)).unwrap()
    };
    // v1: the service is told the client's address, and each client has
    // its own count.
    let (status, _, body) = through_balancer(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["x-forwarded-for"], "203.0.113.7");
    let (status, _, _) = through_balancer(b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 80\r\n");
    assert_eq!(status, 429, "the same client, second request in the hour");
    // v2, another client: admitted.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x40, 0x00, 0x50]);
    let (status, _, body) = through_balancer(&v2);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["x-forwarded-for"], "198.51.100.9");
    // Straight to the edge, without the header: closed unserved.
    let mut direct = TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap();
    direct
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = write!(direct, "GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut got = Vec::new();
    let _ = direct.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
}

fn redis_keys(dir: &std::path::Path) -> String {
    conformance::redis_cli(dir, "--scan --pattern 'preview-edge:rl:*'")
}

#[test]
fn two_edges_with_redis_share_one_limit() {
    let dir = tempfile::tempdir().unwrap();
    let _redis = conformance::redis_server(dir.path());
    // A generous budget: on this busy machine a slow answer would be
    // decided locally and the count would no longer be exact.
    let yaml = conformance::redis_yaml(
        dir.path(),
        "  budget: 500ms\nlimits:\n  cluster: { rate: 20, period: 1h }\n",
    );
    let (a, b) = (
        Stack::start_with_edge_yaml(&yaml),
        Stack::start_with_edge_yaml(&yaml),
    );
    let mut admitted = [0, 0];
    for i in 0..40 {
        let stack = if i % 2 == 0 { &a } else { &b };
        let (status, headers, _) = Conn::open(stack).get(HOST, "/", "");
        match status {
            200 => admitted[i % 2] += 1,
            429 => assert_eq!(
                header(&headers, "ratelimit-policy"),
                Some("\"cluster\";q=20;w=3600")
            ),
            other => panic!("{other}"),
        }
    }
    // Exactly the limit, from both together (each alone would admit 20).
    assert_eq!(admitted[0] + admitted[1], 20, "{admitted:?}");
    assert!(admitted[0] > 0 && admitted[1] > 0, "{admitted:?}");
    assert!(redis_keys(dir.path()).contains("preview-edge:rl:cluster:20/3600/20:"));
}

#[test]
fn without_redis_limits_fall_back_to_each_replica_and_recover_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis_proc = conformance::redis_server(dir.path());
    let stack = Stack::start_with_edge_yaml(&conformance::redis_yaml(
        dir.path(),
        "  budget: 200ms\nlimits:\n  client_ip: { rate: 1000, period: 1h }\n",
    ));
    assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
    assert!(!redis_keys(dir.path()).is_empty());

    // Killed: requests go on, decided in the edge's memory; said once.
    redis_proc.kill();
    for _ in 0..5 {
        assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
    }
    let line = stack
        .edge
        .wait_line("redis unavailable", Duration::from_secs(10));
    assert!(line.contains("on_failure: open"), "{line}");

    // Back (empty): the edge uses it again without being told.
    let _redis = conformance::redis_server(dir.path());
    test_support::wait::until_blocking("the edge to use redis again", || {
        assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
        !redis_keys(dir.path()).is_empty()
    });
    stack
        .edge
        .wait_line("redis answers again", Duration::from_secs(10));
}

#[test]
fn a_paused_redis_never_holds_a_request_past_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let redis_proc = conformance::redis_server(dir.path());
    let stack = Stack::start_with_edge_yaml(&conformance::redis_yaml(
        dir.path(),
        "  budget: 20ms\nlimits:\n  client_ip: { rate: 1000, period: 1h }\n",
    ));
    assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
    conformance::signal(redis_proc.pid(), "STOP");
    // Each request waits at most the budget, then is decided locally; the
    // next ones skip Redis for a while. (The bound is loose: this is a
    // hang check, not a timing one.)
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    stack
        .edge
        .wait_line("redis unavailable", Duration::from_secs(10));
    conformance::signal(redis_proc.pid(), "CONT");
}

#[test]
fn with_on_failure_closed_requests_are_refused_while_redis_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis_proc = conformance::redis_server(dir.path());
    let stack = Stack::start_with_edge_yaml(&conformance::redis_yaml(
        dir.path(),
        "  on_failure: closed\nlimits:\n  client_ip: { rate: 1000, period: 1h }\n",
    ));
    assert_eq!(Conn::open(&stack).get(HOST, "/", "").0, 200);
    redis_proc.kill();
    let (status, headers, body) = Conn::open(&stack).get(HOST, "/", "");
    assert_eq!(status, 503);
    assert_eq!(json(&body)["error"]["code"], "LIMITS_UNAVAILABLE");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
}

#[test]
fn bad_redis_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = check_config(
        dir.path(),
        "redis:\n  url: http://cache:6379\n  budget: 5s\n",
    );
    assert!(!ok);
    assert!(err.contains("redis.url: not a Redis URL"), "{err}");
    assert!(err.contains("redis.budget: between 1ms and 1s"), "{err}");
    let (ok, err) = check_config(
        dir.path(),
        "redis:\n  url: redis://cache:6379\n  password_file: missing\n  on_failure: maybe\n",
    );
    assert!(!ok);
    assert!(err.contains("on_failure"), "{err}");
}
