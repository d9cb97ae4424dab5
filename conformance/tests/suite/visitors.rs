//! The edge's visitor connections, black-box: how long a visitor may take
//! to send a request head, stay idle between requests, or take nothing of
//! a response, and how a plain connection is recognised as HTTP/1.1 or
//! HTTP/2 (with prior knowledge) from its first bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conformance::{curl, Stack};
use test_support::wait::until_blocking;

const HOST: &str = "hello-8080-demo.preview.localhost";
const WAIT: Duration = Duration::from_secs(10);

fn edge_addr(stack: &Stack) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], stack.http_port))
}

/// Reads until the edge closes the connection; returns what was read and
/// when it closed. Panics if it stays open for `limit`.
fn read_until_closed(c: &mut TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, Instant::now()),
            Err(e) => panic!("still open after {limit:?} ({e}); read {} bytes", got.len()),
        }
    }
}

fn upstream_open_connections(stack: &Stack) -> u64 {
    let out = curl(&[&format!("http://{}/stats", stack.upstream_addr)]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["open"].as_u64().unwrap()
}

#[test]
fn a_visitor_that_reads_nothing_is_closed_after_send_timeout_and_so_is_the_service_connection() {
    let stack = Stack::start_with_edge_yaml("visitors:\n  send_timeout: 2s\n");
    // Warm up, so the tunnel's pooled upstream connection exists.
    assert!(curl(&[&stack.url("hello-8080", "/")]).status.success());
    let open_before = upstream_open_connections(&stack);

    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&edge_addr(&stack).into()).unwrap();
    let mut stalled: TcpStream = socket.into();
    let started = Instant::now();
    write!(
        stalled,
        "GET /bytes/500000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 12];
    stalled.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    // The edge gives up on it after the send timeout and says why.
    let line = stack
        .edge
        .wait_line("path=\"/bytes/500000000\"", Duration::from_secs(20));
    assert!(line.contains("error="), "{line}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{line}");
    // Its connection is closed: what the kernel still holds, then the end.
    let (_, closed) = read_until_closed(&mut stalled, WAIT);
    assert!(closed.duration_since(started) < Duration::from_secs(15));
    // And the sidecar let go of the service's connection it was using
    // (asked of the service until it says so: nothing announces it).
    until_blocking("the service's connection to close", || {
        upstream_open_connections(&stack) <= open_before
    });
}

fn timeouts_stack(h2c: bool) -> Stack {
    Stack::start_with_edge_yaml(&format!(
        "visitors:\n  h2c: {h2c}\n  header_timeout: 1s\n  keepalive_timeout: 1s\n"
    ))
}

#[test]
fn a_silent_connection_is_closed_at_header_timeout() {
    for h2c in [false, true] {
        let stack = timeouts_stack(h2c);
        let start = Instant::now();
        let mut c = TcpStream::connect(edge_addr(&stack)).unwrap();
        let (got, closed) = read_until_closed(&mut c, WAIT);
        let open_for = closed.duration_since(start);
        assert!(
            got.is_empty(),
            "h2c {h2c}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            open_for >= Duration::from_millis(900) && open_for < Duration::from_secs(5),
            "h2c {h2c}: closed after {open_for:?}"
        );
    }
}

#[test]
fn a_head_trickled_byte_by_byte_is_cut_off_at_header_timeout() {
    for h2c in [false, true] {
        let stack = timeouts_stack(h2c);
        let head = format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}\r\n\r\n",
            "x".repeat(40)
        );
        let mut c = TcpStream::connect(edge_addr(&stack)).unwrap();
        let start = Instant::now();
        // One byte every 100 ms: each read is quick, the head never ends in
        // time (it would take 8 s).
        let mut cut_after = None;
        for b in head.bytes() {
            if c.write_all(&[b]).is_err() {
                cut_after = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if start.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        let (got, closed) = read_until_closed(&mut c, WAIT);
        let open_for = cut_after.unwrap_or(closed.duration_since(start));
        assert!(
            open_for < Duration::from_secs(3),
            "h2c {h2c}: a trickled head kept the connection for {open_for:?}"
        );
        assert!(
            !String::from_utf8_lossy(&got).contains("200 OK"),
            "h2c {h2c}: the trickled request was served"
        );
    }
}

#[test]
fn a_request_shorter_than_the_http2_preface_is_answered_where_h2c_is_on() {
    let stack = timeouts_stack(true);
    let mut c = TcpStream::connect(edge_addr(&stack)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let start = Instant::now();
    let (got, _) = read_until_closed(&mut c, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.0 400") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "answered at once"
    );
    // And HTTP/2 with prior knowledge still works on the same port.
    let out = curl(&[
        "--http2-prior-knowledge",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &stack.url("hello-8080", "/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_keepalive_timeout() {
    let stack = timeouts_stack(false);
    let mut c = TcpStream::connect(edge_addr(&stack)).unwrap();
    write!(c, "GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").unwrap();
    let start = Instant::now();
    let (got, closed) = read_until_closed(&mut c, WAIT);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let idle = closed.duration_since(start);
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "closed after {idle:?}"
    );
}

#[test]
fn an_idle_http2_connection_is_closed_at_keepalive_timeout() {
    let stack = timeouts_stack(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge_addr(&stack))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::get(format!("http://{HOST}/"))
            .body(())
            .unwrap();
        let (response, _) = client
            .ready()
            .await
            .unwrap()
            .send_request(request, true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        let idle_since = Instant::now();
        // Only the edge can end the connection now.
        tokio::time::timeout(WAIT, connection)
            .await
            .expect("the edge closes the idle connection")
            .unwrap()
            .ok();
        let idle = idle_since.elapsed();
        assert!(
            idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
            "closed after {idle:?}"
        );
    });
}

/// Runs `openssl s_client` against `port` with `alpn`, sending `request`
/// (if any) and keeping its input open; returns how long the edge kept the
/// connection.
fn tls_connection_lifetime(port: u16, alpn: &str, request: Option<String>) -> Duration {
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-alpn", alpn, "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", HOST])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let start = Instant::now();
    let mut stdin = client.stdin.take().unwrap();
    if let Some(request) = request {
        stdin.write_all(request.as_bytes()).unwrap();
    }
    let deadline = start + WAIT;
    while client.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{alpn}: still open after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    start.elapsed()
}

#[test]
fn tls_connections_are_closed_when_idle_or_silent() {
    let stack = Stack::start_https("visitors:\n  keepalive_timeout: 1s\n  header_timeout: 2s\n");
    let https = stack.https_port.unwrap();
    // HTTP/1.1, after a request: the keep-alive timeout.
    let idle = tls_connection_lifetime(
        https,
        "http/1.1",
        Some(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n")),
    );
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "HTTP/1.1 closed after {idle:?}"
    );
    // Silent after the handshake: the header timeout, for either protocol.
    for alpn in ["http/1.1", "h2"] {
        let silent = tls_connection_lifetime(https, alpn, None);
        assert!(
            silent >= Duration::from_millis(1900) && silent < Duration::from_secs(6),
            "{alpn}: a silent connection closed after {silent:?}"
        );
    }
}

/// What the sample service's `/headers` saw for a request through the
/// edge's plain port, with curl `args`.
fn seen_headers(stack: &Stack, args: &[&str]) -> serde_json::Value {
    let url = stack.url("hello-8080", "/headers");
    let mut argv = args.to_vec();
    argv.push(&url);
    let out = curl(&argv);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn cookie_crumbs_are_joined_and_untrusted_address_claims_and_stale_tracestate_removed() {
    let stack = Stack::start_with_edge_yaml("visitors:\n  h2c: true\n");
    for http in ["--http1.1", "--http2-prior-knowledge"] {
        let seen = seen_headers(
            &stack,
            &[
                http,
                "-H",
                "Cookie: a=1",
                "-H",
                "Cookie: b=2",
                "-H",
                "X-Real-IP: 6.6.6.6",
                "-H",
                "True-Client-IP: 6.6.6.6",
                "-H",
                "CF-Connecting-IP: 6.6.6.6",
                "-H",
                "traceparent: not-a-trace",
                "-H",
                "tracestate: vendor=stale",
            ],
        );
        // One `cookie` field, RFC 9113 §8.2.3 (the sample service keeps the
        // last of repeated fields: without joining it would show "b=2").
        assert_eq!(seen["cookie"], "a=1; b=2", "{http}: {seen}");
        for claim in [
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "tracestate",
        ] {
            assert!(
                seen.get(claim).is_none(),
                "{http}: {claim} reached the service: {seen}"
            );
        }
        assert_ne!(seen["traceparent"], "not-a-trace");
        // The edge's own port, whatever the Host header says.
        assert_eq!(
            seen["x-forwarded-port"],
            stack.http_port.to_string(),
            "{http}: {seen}"
        );
    }
    let seen = seen_headers(
        &stack,
        &["-H", "Host: hello-8080-demo.preview.localhost:1234"],
    );
    assert_eq!(
        seen["x-forwarded-port"],
        stack.http_port.to_string(),
        "{seen}"
    );
}

#[test]
fn identical_content_lengths_reach_the_service_as_one() {
    let stack = Stack::start();
    for lengths in [
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
    ] {
        let mut c = TcpStream::connect(edge_addr(&stack)).unwrap();
        write!(
            c,
            "POST /echo HTTP/1.1\r\nHost: hello-8080-demo.preview.localhost\r\n{lengths}Connection: close\r\n\r\nhello"
        )
        .unwrap();
        let (reply, _) = read_until_closed(&mut c, Duration::from_secs(10));
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{lengths:?}: {reply}");
        assert!(reply.contains("\r\nhello\r\n"), "{lengths:?}: {reply}");
    }
}
