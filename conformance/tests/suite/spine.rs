//! The tunnel spine, black-box: real binaries, real YAML, curl and a
//! WebSocket client, as a user would run them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conformance::{curl, curl_with_stdin, http_status, sh, start_edge, Proc, Stack, TOKEN};
use futures::{SinkExt, StreamExt};
use test_support::pattern;
use test_support::wait::until_ok_blocking_within;
use tokio_tungstenite::tungstenite::Message;

const GIB: u64 = 1 << 30;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_gets_the_service_through_the_tunnel() {
    let stack = Stack::start();
    let out = curl(&["-i", &stack.url("hello-8080", "/")]);
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-request-id: "),
        "{text}"
    );
    assert!(text.contains("Hello from the sample service"), "{text}");
}

#[test]
fn keep_alive_reaches_the_service_over_few_connections() {
    let stack = Stack::start();
    let url = stack.url("hello-8080", "/");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 50).collect();
    let out = curl(&urls);
    assert_eq!(
        stdout(&out)
            .matches("Hello from the sample service")
            .count(),
        50
    );
    let stats = stdout(&curl(&[&format!("http://{}/stats", stack.upstream_addr)]));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    // 50 requests through the tunnel + this one direct.
    assert_eq!(stats["requests"], 51);
    assert!(stats["connections"].as_u64().unwrap() <= 3, "{stats}");
}

fn upstream_stats(stack: &Stack) -> serde_json::Value {
    let out = curl(&[&format!("http://{}/stats", stack.upstream_addr)]);
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// CPU time each thread of a process has run, by thread name.
fn thread_run_times(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut times = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap();
        let ns: u64 = schedstat
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        *times.entry(name.trim().to_string()).or_default() += ns;
    }
    times
}

#[test]
fn visitors_are_spread_over_the_edge_workers() {
    // Two workers; the sidecar's two connections (its default) are dealt
    // one to each, and so are visitors' connections.
    let stack = Stack::start_full("", &["--threads", "2"], &[]);
    let before = thread_run_times(stack.edge.pid());
    // 8 keep-alive connections, 100 requests each.
    let url = stack.url("hello-8080", "/?[1-800]");
    let out = curl(&[
        "-sS",
        "-Z",
        "--parallel-max",
        "8",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        &url,
    ]);
    let codes = stdout(&out);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        800,
        "{out:?}"
    );
    let after = thread_run_times(stack.edge.pid());
    let ran = |name: &str| after[name] - before.get(name).copied().unwrap_or(0);
    let (first, second) = (ran("edge-proxy"), ran("edge-worker-1"));
    assert!(
        first.min(second) * 4 >= first.max(second),
        "the workers' shares are uneven: {first} ns and {second} ns"
    );
}

#[test]
fn stopping_the_edge_lets_every_worker_finish_its_requests() {
    let mut stack = Stack::start_full("", &["--threads", "2"], &["--log-events"]);
    // Four slow requests on four connections: two on each worker.
    let url = stack.url("hello-8080", "/slow?ms=1500&n=[1-4]");
    let requests = std::thread::spawn(move || {
        curl(&[
            "-sS",
            "-Z",
            "--parallel-immediate",
            "--parallel-max",
            "4",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            &url,
        ])
    });
    // All four at the service, so in flight at the edge, before it stops.
    stack
        .upstream
        .wait_lines("request GET /slow", 4, Duration::from_secs(10));
    stack.edge.interrupt();
    let out = requests.join().unwrap();
    assert_eq!(
        stdout(&out).lines().filter(|c| *c == "200").count(),
        4,
        "{out:?}"
    );
    stack.edge.assert_exits_cleanly();
}

#[test]
fn the_service_closing_idle_connections_loses_no_request() {
    // Like a server with a short keep-alive timeout: every connection the
    // edge keeps for reuse is closed by the service while it waits.
    let stack = Stack::start_with("", &["--idle-close-ms", "100", "--log-events"]);
    let url = stack.url("hello-8080", "/");
    for i in 0..8 {
        assert_eq!(http_status(&[&url]), "200", "request {i}");
        // The next request comes only once the service has closed the
        // connection this one used.
        stack
            .upstream
            .wait_lines("idle connection closed", i + 1, Duration::from_secs(10));
    }
    let stats = upstream_stats(&stack);
    assert!(stats["connections"].as_u64().unwrap() >= 8, "{stats}");
}

#[test]
fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let stack = Stack::start_with_edge_yaml("upstream:\n  idle_timeout: 300ms\n");
    let url = stack.url("hello-8080", "/");
    assert_eq!(http_status(&[&url]), "200");
    // The tunnelled connection is kept for reuse (the stats request is the other).
    assert_eq!(upstream_stats(&stack)["open"], 2);
    // Closed by the edge's side, which says nothing the test can see:
    // the service's count is asked until it drops, within 5 s.
    until_ok_blocking_within(
        Duration::from_secs(5),
        "the idle connection to close",
        || {
            let stats = upstream_stats(&stack);
            if stats["open"] == 1 {
                Ok(())
            } else {
                Err(format!("still open: {stats}"))
            }
        },
    );
    // And the next request opens a new one.
    assert_eq!(http_status(&[&url]), "200");
}

#[test]
fn errors_have_one_json_shape() {
    let stack = Stack::start();
    let out = curl(&["-i", &stack.url("nope-8080", "/")]);
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "ROUTE_NOT_FOUND");
    let id = json["error"]["request_id"].as_str().unwrap();
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("x-request-id: {id}")),
        "{text}"
    );
}

#[test]
fn server_sent_events_stream_through_curl() {
    let stack = Stack::start();
    let mut child = Command::new("curl")
        .args(["-sSN", &stack.url("hello-8080", "/sse?n=3&interval_ms=500")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut arrivals = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("data:") {
            arrivals.push(start.elapsed());
        }
    }
    child.wait().unwrap();
    assert_eq!(arrivals.len(), 3);
    assert!(
        arrivals[2] - arrivals[0] >= Duration::from_millis(800),
        "{arrivals:?}"
    );
}

#[test]
fn one_gib_download_is_intact() {
    let stack = Stack::start();
    let digest = sh(&format!(
        "curl -sS --max-time 300 '{}' | sha256sum",
        stack.url("hello-8080", &format!("/bytes/{GIB}"))
    ));
    assert_eq!(
        digest.split_whitespace().next().unwrap(),
        pattern::sha256(GIB)
    );
}

#[test]
fn one_gib_upload_is_intact() {
    let stack = Stack::start();
    let url = stack.url("hello-8080", "/sha256");
    let out = curl_with_stdin(&["-T", "-", &url], pattern::chunks(GIB));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(json["bytes"], GIB);
    assert_eq!(json["sha256"], pattern::sha256(GIB).as_str());
}

/// A WebSocket to the sample service's `/ws` through the edge, past its
/// `welcome`.
pub async fn websocket(stack: &Stack) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let url = stack.url("hello-8080", "/ws").replace("http://", "ws://");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("welcome"));
    ws
}

#[tokio::test]
async fn websocket_client_through_the_edge() {
    let stack = Stack::start();
    let mut ws = websocket(&stack).await;
    for i in 0..100 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("message {i}"))
        );
    }
    ws.close(None).await.unwrap();
}

/// Reads from `stream` until `needle` has arrived; panics after 10 s.
fn read_until(stream: &mut std::net::TcpStream, needle: &str) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "waiting for {needle:?}: {e}; got {:?}",
                String::from_utf8_lossy(&seen)
            )
        });
        assert!(n > 0, "closed before {needle:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_pausing_response_is_passed_on_not_held_back() {
    use std::io::Write;
    let stack = Stack::start();
    let mut visitor = std::net::TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap();
    write!(
        visitor,
        "GET /hold?id=pause HTTP/1.1\r\nHost: hello-8080-demo.preview.localhost\r\n\r\n"
    )
    .unwrap();
    // Head and first part arrive while the service still holds the rest.
    let head = read_until(&mut visitor, "first\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 13"),
        "{head}"
    );
    let out = curl(&[&stack.url("hello-8080", "/release?id=pause")]);
    assert_eq!(stdout(&out), "released\n");
    read_until(&mut visitor, "second\n");
}

#[test]
fn hop_by_hop_headers_stop_at_the_edge() {
    let stack = Stack::start();
    let url = stack.url("hello-8080", "/headers");
    let hop_by_hop = [
        "Connection: keep-alive, X-Nominated",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "TE: trailers",
        "Trailer: X-Checksum",
        "X-Nominated: dropped because Connection names it",
    ];
    let mut args = vec![url.as_str(), "-H", "X-Kept: yes"];
    for h in &hop_by_hop {
        args.extend(["-H", h]);
    }
    let body = stdout(&curl(&args));
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-kept"], "yes", "{body}");
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "x-nominated",
    ] {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the service: {body}"
        );
    }
    // The visitor's Connection header is not passed on: the edge's hop to
    // the service has its own.
    assert_ne!(seen["connection"], "keep-alive, X-Nominated", "{body}");
}

#[test]
fn a_visitor_who_leaves_early_does_not_leave_its_answer_to_the_next() {
    use std::io::Write;
    let stack = Stack::start_with("", &["--log-events"]);
    // Warm the pool: the next requests find a pooled stream.
    assert_eq!(
        stdout(&curl(&[&stack.url("hello-8080", "/")])),
        "Hello from the sample service, through the tunnel.\n"
    );
    let mut visitor = std::net::TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap();
    write!(
        visitor,
        "GET /slow?ms=600 HTTP/1.1\r\nHost: hello-8080-demo.preview.localhost\r\n\r\n"
    )
    .unwrap();
    // The request is at the service, on a pooled stream, when the visitor leaves.
    stack
        .upstream
        .wait_line("request GET /slow?ms=600", Duration::from_secs(10));
    drop(visitor);
    // The edge gives up on the request when the visitor leaves, not when
    // the answer comes (at 600 ms).
    stack
        .edge
        .assert_request_failed_within("/slow", Duration::from_millis(500));
    // Once the service is done with the slow request (answered, or dropped
    // because its connection closed), a stream that still carried the
    // answer must not go back to the pool.
    stack
        .upstream
        .wait_line("done GET /slow?ms=600", Duration::from_secs(10));
    let url = stack.url("hello-8080", "/");
    let out = stdout(&curl(&[url.as_str(), url.as_str(), url.as_str()]));
    assert_eq!(
        out,
        "Hello from the sample service, through the tunnel.\n".repeat(3),
        "{out}"
    );
    // Warm-up, the slow one, three, and this one.
    assert_eq!(upstream_stats(&stack)["requests"], 6);
}

#[test]
fn a_response_cut_by_a_timeout_is_cut_not_rewritten() {
    let stack = Stack::start_with_edge_yaml("upstream:\n  read_timeout: 1s\n");
    let out = curl(&[&stack.url("hello-8080", "/hold?id=never")]);
    // curl: "transfer closed with outstanding read data remaining".
    assert_eq!(out.status.code(), Some(18), "{out:?}");
    assert_eq!(stdout(&out), "first\n");
}

#[tokio::test]
async fn a_quiet_websocket_outlives_the_read_timeout() {
    let stack = Stack::start_with_edge_yaml("upstream:\n  read_timeout: 1s\n");
    let mut ws = websocket(&stack).await;
    // Plain requests keep the read timeout. This one is sent after the
    // WebSocket went quiet, so when its 504 arrives the WebSocket has been
    // quiet for longer than the read timeout.
    let url = stack.url("hello-8080", "/slow?ms=2500");
    let plain = tokio::task::spawn_blocking(move || http_status(&[&url]))
        .await
        .unwrap();
    assert_eq!(plain, "504");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}

#[test]
fn laptop_mode_exposes_a_local_port() {
    let dir = tempfile::tempdir().unwrap();
    let (_edge, http_port, tunnel) = start_edge(dir.path(), "");
    let upstream = Proc::spawn("sample-upstream", &["--listen", "127.0.0.1:0"]);
    let addr =
        upstream.wait_line("listening ", Duration::from_secs(10))["listening ".len()..].to_string();
    let port = addr.rsplit_once(':').unwrap().1.to_string();
    let mut expose = Proc::spawn(
        "sidecar",
        &[
            "expose",
            &addr,
            "--edge",
            &format!("http://{tunnel}"),
            "--token",
            TOKEN,
        ],
    );
    let line = expose.wait_line("Forwarding ", Duration::from_secs(10));
    let url = line.trim_start_matches("Forwarding ").trim().to_string();
    assert_eq!(
        url,
        format!("http://app-{port}-demo.preview.localhost:{http_port}/")
    );
    assert!(stdout(&curl(&[&url])).contains("Hello from the sample service"));
    expose.interrupt();
    expose.assert_exits_cleanly();
}

#[test]
fn printed_urls_follow_preview_public_url() {
    // Behind a load balancer that terminates TLS on 443, say so once.
    let dir = tempfile::tempdir().unwrap();
    let yaml = conformance::edge_yaml("").replacen(
        "preview:\n",
        "preview:\n  public_url: https://{host}\n",
        1,
    );
    std::fs::write(dir.path().join("edge.yaml"), yaml).unwrap();
    let (_edge, _, tunnel) = conformance::start_edge_file(dir.path());
    // The test edge's tunnel is plaintext on loopback (a bare --edge means https://).
    let edge = format!("http://{tunnel}");
    let expose = Proc::spawn(
        "sidecar",
        &[
            "expose", "9", "--edge", &edge, "--token", TOKEN, "--name", "web",
        ],
    );
    let line = expose.wait_line("Forwarding ", Duration::from_secs(10));
    assert_eq!(
        line.trim(),
        "Forwarding https://web-9-demo.preview.localhost/"
    );
}

#[test]
fn ctrl_c_stops_edge_and_sidecar_cleanly() {
    let mut stack = Stack::start();
    let mut sidecar = stack.sidecar.take().unwrap();
    sidecar.interrupt();
    sidecar.assert_exits_cleanly();
    stack.edge.interrupt();
    stack.edge.assert_exits_cleanly();
}

#[test]
fn killed_sidecar_gives_503_then_a_restarted_one_serves_again() {
    let mut stack = Stack::start();
    stack.sidecar.take().unwrap().kill();
    // The edge logs each session's end once it has dropped it.
    stack
        .edge
        .wait_lines("tunnel down", 2, Duration::from_secs(15));
    assert_eq!(http_status(&[&stack.url("hello-8080", "/")]), "503");
    stack.start_sidecar();
    let out = curl(&[&stack.url("hello-8080", "/")]);
    assert!(stdout(&out).contains("Hello from the sample service"));
}

#[test]
fn wrong_token_is_explained_and_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let (_edge, _, tunnel) = start_edge(dir.path(), "");
    let mut sidecar = Proc::spawn(
        "sidecar",
        &[
            "expose",
            "127.0.0.1:9",
            "--edge",
            &format!("http://{tunnel}"),
            "--token",
            "not-the-token",
        ],
    );
    // It explains each rejection and keeps retrying.
    let rejections = sidecar.wait_lines(
        "does not know this sidecar token",
        3,
        Duration::from_secs(10),
    );
    assert!(sidecar.is_running(), "the sidecar keeps retrying");
    // Backoff starts at 1 s and doubles, jittered down to half at most: by
    // the sidecar's own log timestamps, attempts come no closer than 0.5 s,
    // then 1 s (each is logged before the delay that precedes the next).
    let at: Vec<f64> = rejections.iter().map(|l| logged_at(l)).collect();
    for (i, pair) in at.windows(2).enumerate() {
        let gap = (pair[1] - pair[0]).rem_euclid(86_400.0);
        let least = 0.5 * f64::from(1u32 << i);
        assert!(
            gap >= least,
            "attempt {} came {gap:.3} s after the one before; the backoff allows no less than {least} s:\n{}",
            i + 2,
            sidecar.output()
        );
    }
}

/// The time of day, in seconds, a log line starts with
/// (`2026-12-06T06:57:25.895023Z  WARN ...`).
fn logged_at(line: &str) -> f64 {
    let stamp = line
        .split_whitespace()
        .find(|w| w.contains('T') && w.ends_with('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let time = stamp.split_once('T').unwrap().1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let mut field = || -> f64 { parts.next().unwrap().parse().unwrap() };
    field() * 3600.0 + field() * 60.0 + field()
}

#[test]
fn invalid_yaml_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.yaml");
    std::fs::write(&path, "listen:\n  http: 127.0.0.1:0\n  tunnel: 127.0.0.1:0\n  htp: 1\npreview:\n  domains: [preview.localhost]\n").unwrap();
    let out = Command::new(conformance::bin("edge-proxy"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("htp") && err.contains('4'),
        "{err}"
    );
    // The edge refuses to start on it, with the same message.
    let out = Command::new(conformance::bin("edge-proxy"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("htp"));

    let sidecar_yaml = dir.path().join("sidecar.yaml");
    std::fs::write(&sidecar_yaml, "edge: http://127.0.0.1:7000\ntoken: x\ntargets:\n  - service: Bad_Name\n    port: 80\n    address: nowhere\n").unwrap();
    let out = Command::new(conformance::bin("sidecar"))
        .args(["check-config", sidecar_yaml.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("targets[0].service") && err.contains("targets[0].address"),
        "{err}"
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    // The edge config names certificates that scripts/demo generates: check
    // a copy next to freshly generated ones.
    let dir = tempfile::tempdir().unwrap();
    for file in ["edge.yaml", "sidecar.yaml", "demo-oidc-client-secret"] {
        std::fs::copy(root.join("configs").join(file), dir.path().join(file)).unwrap();
    }
    test_support::certs::write(
        &dir.path().join("certs"),
        "",
        &["*.preview.localhost".into(), "localhost".into()],
        false,
    )
    .unwrap();
    for (binary, file) in [
        ("edge-proxy", dir.path().join("edge.yaml")),
        ("sidecar", dir.path().join("sidecar.yaml")),
    ] {
        let out = Command::new(conformance::bin(binary))
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn relative_paths_start_at_the_config_file_for_both_binaries() {
    // Certificates, keys, CAs and the token file next to the configs, given
    // by relative paths, and both binaries run from elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_support::certs::write(&d.join("certs"), "", &["*.preview.localhost".into()], false)
        .unwrap();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let edge_yaml = conformance::edge_yaml_with(
        "tls:\n  certificates: [{ cert: certs/cert.pem, key: certs/key.pem }]\n\
         routes:\n  - { host: a.example.test, target: demo/api:443, upstream: { protocol: tls, tls: { ca: certs/ca.pem } } }\n",
        true,
    );
    std::fs::write(d.join("edge.yaml"), edge_yaml).unwrap();
    std::fs::write(
        d.join("sidecar.yaml"),
        "edge: http://127.0.0.1:7000\ntoken_file: token\ntargets:\n  - { service: api, port: 443, address: api:443, protocol: tls, tls: { ca: certs/ca.pem } }\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    for (binary, file) in [("edge-proxy", "edge.yaml"), ("sidecar", "sidecar.yaml")] {
        let out = Command::new(conformance::bin(binary))
            .args(["check-config", d.join(file).to_str().unwrap()])
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{binary}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Not relative to the working directory: a token file there is not
    // read in place of the missing one next to the config.
    std::fs::rename(d.join("token"), elsewhere.path().join("token")).unwrap();
    let out = Command::new(conformance::bin("sidecar"))
        .args(["check-config", d.join("sidecar.yaml").to_str().unwrap()])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "token_file: cannot read {}",
            d.join("token").display()
        )),
        "{err}"
    );
}

/// `--log-format json`: a collector reads every log line as one JSON
/// object, the request line's facts as fields (the start-up line that
/// names the listeners is the one line for scripts, not a log event).
#[test]
fn json_logs_are_one_object_per_line() {
    let stack = Stack::start_full("", &["--log-format", "json"], &[]);
    let (status, headers, _) = conformance::exchange(&stack, &stack.preview_host(), "/", &[]);
    assert_eq!(status, 200);
    let id = conformance::header(&headers, "x-request-id").unwrap();
    let line = stack.edge.wait_line(id, Duration::from_secs(10));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "INFO", "{event}");
    assert_eq!(event["fields"]["request_id"], id, "{event}");
    assert_eq!(event["fields"]["status"], 200, "{event}");
    assert_eq!(event["fields"]["outcome"], "OK", "{event}");
    assert_eq!(event["fields"]["route"], "hello-8080", "{event}");
    assert_eq!(event["fields"]["environment"], conformance::ENV, "{event}");
    let body = "Hello from the sample service, through the tunnel.\n";
    assert_eq!(event["fields"]["bytes_out"], body.len(), "{event}");
    assert!(event["fields"]["upstream_us"].as_u64().is_some(), "{event}");
    assert!(event["fields"]["duration_us"].as_u64().is_some(), "{event}");
    // Anonymous here: no subject (auth.rs checks it for a signed-in one).
    assert!(event["fields"].get("subject").is_none(), "{event}");
    let log = stack.edge.output();
    for line in log
        .lines()
        .filter(|l| !l.starts_with("edge-proxy listening"))
    {
        let parsed = serde_json::from_str::<serde_json::Value>(line);
        assert!(parsed.is_ok(), "not JSON: {line:?}");
    }
}

/// `listen.admin`: `/healthz` while the process serves, `/readyz` until
/// it starts draining, then 503 while the requests in flight finish.
#[test]
fn readiness_turns_false_as_soon_as_the_edge_drains() {
    let mut stack = Stack::start_with_admin("");
    let admin = stack.admin_addr.clone().expect("an admin listener");
    let get = |path: &str| http_status(&[&format!("http://{admin}{path}")]);
    assert_eq!(get("/healthz"), "200");
    assert_eq!(get("/readyz"), "200");
    assert_eq!(get("/metrics-or-anything"), "404");

    // A request in flight keeps the edge draining after SIGTERM.
    let host = stack.preview_host();
    let _held = conformance::hold(&stack, &host, "drain");
    stack.edge.interrupt();
    stack
        .edge
        .wait_line("shutting down", Duration::from_secs(10));
    assert_eq!(get("/readyz"), "503");
    assert_eq!(get("/healthz"), "200");
    conformance::release(&stack, "drain");
    stack.edge.assert_exits_cleanly();
}
