//! End-to-end through edge → gRPC tunnel → sidecar → upstream, in process.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use test_support::{
    client, pattern, stack, stack_with, ClosedPort, FaultProxy, TestEdge, TestSidecar,
    TestUpstream, DEFAULT_ENV,
};
use tokio_tungstenite::tungstenite::Message;

async fn error_code(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let header_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    let id = body["error"]["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        header_id.as_deref(),
        Some(id.as_str()),
        "X-Request-Id matches the body"
    );
    (
        status,
        body["error"]["code"].as_str().unwrap().to_string(),
        body["error"]["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn get_through_the_tunnel() {
    let (edge, upstream, _sidecar) = stack().await;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"].len(), 32);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("Hello from the sample service"));
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn forwards_request_id_and_forwarding_headers() {
    let (edge, _upstream, _sidecar) = stack().await;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/headers"))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["x-request-id"], id.as_str());
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(seen["x-forwarded-host"]
        .as_str()
        .unwrap()
        .starts_with("hello-8080-demo.preview.localhost"));
}

#[tokio::test]
async fn keep_alive_visitors_give_the_service_few_long_lived_connections() {
    let (edge, upstream, _sidecar) = stack().await;
    let http = client();
    for _ in 0..200 {
        let resp = http
            .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!(upstream.requests(), 200);
    assert!(
        upstream.connections() <= 2,
        "upstream saw {} connections for 200 keep-alive requests",
        upstream.connections()
    );
}

#[tokio::test]
async fn visitors_closing_connections_still_reuse_upstream_connections() {
    let (edge, upstream, _sidecar) = stack().await;
    for _ in 0..50 {
        let http = client(); // a fresh visitor connection each time
        let resp = http
            .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
            .header("connection", "close")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert!(
        upstream.connections() <= 2,
        "upstream saw {} connections for 50 requests",
        upstream.connections()
    );
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let (edge, _upstream, _sidecar) = stack().await;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/sse?n=3&interval_ms=400"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let start = Instant::now();
    let mut body = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        arrivals.push((start.elapsed(), text.matches("data:").count()));
    }
    assert_eq!(text.matches("data: event").count(), 3, "{text}");
    // The first event was read well before the stream ended: not buffered.
    let first = arrivals.iter().find(|(_, n)| *n >= 1).unwrap().0;
    let last = arrivals.last().unwrap().0;
    assert!(
        last - first >= Duration::from_millis(600),
        "first event at {first:?}, end at {last:?}"
    );
}

#[tokio::test]
async fn chunked_responses_are_intact() {
    let (edge, _upstream, _sidecar) = stack().await;
    let n = 3_000_001u64;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, &format!("/bytes/{n}?chunked")))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("content-length").is_none());
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len() as u64, n);
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
        pattern::sha256(n)
    );
}

const BIG: u64 = 256 * 1024 * 1024;

#[tokio::test]
async fn large_download_is_intact() {
    let (edge, _upstream, _sidecar) = stack().await;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, &format!("/bytes/{BIG}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        sha2::Digest::update(&mut hasher, &chunk);
    }
    assert_eq!(n, BIG);
    assert_eq!(
        hex::encode(sha2::Digest::finalize(hasher)),
        pattern::sha256(BIG)
    );
}

#[tokio::test]
async fn large_upload_is_intact() {
    let (edge, _upstream, _sidecar) = stack().await;
    let body = futures::stream::iter(pattern::chunks(BIG).map(Ok::<_, std::io::Error>));
    let resp = client()
        .post(edge.url("hello", 8080, DEFAULT_ENV, "/sha256"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["bytes"], BIG);
    assert_eq!(seen["sha256"], pattern::sha256(BIG).as_str());
}

#[tokio::test]
async fn websocket_both_directions_and_close() {
    let (edge, _upstream, _sidecar) = stack().await;
    let tcp = tokio::net::TcpStream::connect(edge.http_addr)
        .await
        .unwrap();
    let url = edge
        .url("hello", 8080, DEFAULT_ENV, "/ws")
        .replace("http://", "ws://");
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("welcome"));
    ws.send(Message::text("ping through the tunnel"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("ping through the tunnel")
    );
    let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = ws.next().await {
            if matches!(msg, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "close handshake completed");
}

#[tokio::test]
async fn many_concurrent_connections() {
    // 200 at once: over the default cap of 100 per cluster.
    let (edge, upstream, _sidecar) =
        stack_with(TestEdge::builder().set("limits", "cluster: {}")).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = edge.url(
            "hello",
            8080,
            DEFAULT_ENV,
            &format!("/bytes/{}", 10_000 + i),
        );
        tasks.spawn(async move {
            let http = client();
            for _ in 0..5 {
                let body = http.get(&url).send().await.unwrap().bytes().await.unwrap();
                assert_eq!(body.len(), 10_000 + i);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(upstream.requests(), 1000);
}

#[tokio::test]
async fn visitors_that_stop_reading_do_not_stall_others() {
    let (edge, _upstream, _sidecar) = stack().await;
    // 32 visitors that ask for 64 MiB each and never read: far more than
    // any tunnel connection's HTTP/2 window could hold if the tunnel gave
    // them what they asked for.
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let resp = client()
            .get(edge.url("hello", 8080, DEFAULT_ENV, "/bytes/67108864"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        stalled.push(resp);
    }
    for _ in 0..20 {
        let body = tokio::time::timeout(Duration::from_secs(5), async {
            client()
                .get(edge.url("hello", 8080, DEFAULT_ENV, "/bytes/1000000"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
        .await
        .expect("other visitors are served");
        assert_eq!(body.len(), 1_000_000);
    }
    drop(stalled);
}

#[tokio::test]
async fn unknown_host_is_404_route_not_found() {
    let (edge, _upstream, _sidecar) = stack().await;
    for url in [
        edge.url("nope", 8080, DEFAULT_ENV, "/"),
        edge.url("hello", 9999, DEFAULT_ENV, "/"),
        edge.url("hello", 8080, "otherenv", "/"),
        format!("http://example.com:{}/", edge.http_addr.port()),
    ] {
        let (status, code, _) = error_code(client().get(&url).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (404, "ROUTE_NOT_FOUND"), "{url}");
    }
}

/// Sends `request` as written (no client normalizing it) and reads the
/// answer until the edge closes the connection.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    resp
}

#[tokio::test]
async fn malformed_host_is_400() {
    let (edge, _upstream, _sidecar) = stack().await;
    let resp = raw_exchange(
        edge.http_addr,
        "GET / HTTP/1.1\r\nHost: bad_host!.preview.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("\"code\":\"BAD_REQUEST\""), "{resp}");
}

/// The visitor gets the service's header names without their case: the
/// common standard names titled, the rest lowercase, values and order as the
/// service sent them (the edge keeps no case map for responses).
#[tokio::test]
async fn response_header_names_reach_visitors_titled_or_lowercase() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = TestEdge::builder().start().await;
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _sidecar = TestSidecar::builder(&edge)
        .target("raw", 80, service.local_addr().unwrap())
        .start()
        .await;
    tokio::spawn(async move {
        let (mut conn, _) = service.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            conn.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        conn.write_all(
            b"HTTP/1.1 200 OK\r\nCONTENT-TYPE: text/plain\r\nX-Mixed-Case: One\r\n\
              x-mixed-case: Two\r\nETag: \"v1\"\r\nContent-Length: 2\r\n\r\nok",
        )
        .await
        .unwrap();
    });
    let host = format!("raw-80-{DEFAULT_ENV}.preview.localhost");
    let resp = raw_exchange(
        edge.http_addr,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\r\nContent-Type: text/plain\r\n"), "{resp}");
    assert!(resp.contains("\r\nContent-Length: 2\r\n"), "{resp}");
    assert!(
        resp.contains("\r\nx-mixed-case: One\r\nx-mixed-case: Two\r\n"),
        "{resp}"
    );
    assert!(resp.contains("\r\netag: \"v1\"\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
}

/// An edge with `tunnel.session_wait: wait` and no sidecar answers 503
/// for the default environment.
async fn assert_unavailable_with_wait(wait: &str) {
    let edge = TestEdge::builder()
        .set("tunnel", &format!("session_wait: {wait}"))
        .start()
        .await;
    let (status, code, _) = error_code(
        client()
            .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (503, "TUNNEL_UNAVAILABLE"));
}

#[tokio::test]
async fn known_environment_without_tunnel_is_503() {
    assert_unavailable_with_wait("0s").await;
}

/// A request for an environment whose sidecar is on its way (restarting,
/// or reconnecting to a replica that just started) waits for it, up to
/// `tunnel.session_wait`, instead of failing.
#[tokio::test]
async fn a_request_waits_for_its_sidecar_to_connect() {
    let edge = TestEdge::builder()
        .set("tunnel", "session_wait: 30s")
        .start()
        .await;
    let upstream = TestUpstream::start().await;
    let request = tokio::spawn(
        client()
            .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
            .send(),
    );
    // The request is waiting inside the edge before the sidecar dials.
    test_support::wait::until("the request to wait for a tunnel", || {
        edge.registry.waiting() == 1
    })
    .await;
    let _sidecar = TestSidecar::builder(&edge)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);

    // Not forever: the wait ends in the 503 at its deadline.
    assert_unavailable_with_wait("200ms").await;
}

#[tokio::test]
async fn unreachable_target_is_502() {
    let edge = TestEdge::builder().start().await;
    let closed = ClosedPort::new();
    let _sidecar = TestSidecar::builder(&edge)
        .target("gone", 80, closed.addr)
        .start()
        .await;
    let (status, code, _) = error_code(
        client()
            .get(edge.url("gone", 80, DEFAULT_ENV, "/"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (502, "UPSTREAM_UNREACHABLE"));
}

#[tokio::test]
async fn slow_target_is_504() {
    let (edge, _upstream, _sidecar) =
        stack_with(TestEdge::builder().set("upstream", "read_timeout: 300ms")).await;
    let (status, code, _) = error_code(
        client()
            .get(edge.url("hello", 8080, DEFAULT_ENV, "/slow?ms=2000"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (504, "UPSTREAM_TIMEOUT"));
    // A fast request on the same route still works.
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/slow?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn wrong_token_is_rejected_with_a_reason_and_backoff() {
    let edge = TestEdge::builder().start().await;
    let proxy = FaultProxy::start(edge.tunnel_addr).await;
    let sidecar = TestSidecar::builder(&edge)
        .via(proxy.addr)
        .token("wrong")
        .reconnect(Duration::from_millis(200), Duration::from_secs(5))
        .spawn();
    let error = sidecar.wait_error().await;
    assert!(
        error.contains("does not know this sidecar token"),
        "{error}"
    );
    // It keeps trying: 200ms, 400ms, 800ms apart with jitter down to half,
    // never closer (each attempt starts after the previous one's rejection
    // plus its delay), so not a hammering loop.
    let attempts = proxy.wait_accepted(4).await;
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let least = Duration::from_millis(100 << i);
        assert!(
            gap >= least,
            "attempt {} came {gap:?} after the one before; the backoff allows no less than {least:?}",
            i + 2
        );
    }
    assert_eq!(sidecar.status().connected, 0);
}

#[tokio::test]
async fn a_sidecar_cannot_register_an_environment_it_does_not_own() {
    let edge = TestEdge::builder()
        .cluster("a", "token-a", &["alpha"])
        .cluster("b", "token-b", &["beta"])
        .start()
        .await;
    let sidecar = TestSidecar::builder(&edge)
        .token("token-a")
        .environment("beta")
        .spawn();
    let error = sidecar.wait_error().await;
    assert!(
        error.contains("may not register environment \"beta\""),
        "{error}"
    );
    assert!(edge.registry.all().is_empty());
    // With its own environment it is accepted.
    let upstream = TestUpstream::start().await;
    let _ok = TestSidecar::builder(&edge)
        .token("token-a")
        .environment("alpha")
        .target("web", 80, upstream.addr)
        .start()
        .await;
    let resp = client()
        .get(edge.url("web", 80, "alpha", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn sidecar_reconnects_after_the_tunnel_is_cut() {
    let edge = TestEdge::builder().start().await;
    let upstream = TestUpstream::start().await;
    let proxy = FaultProxy::start(edge.tunnel_addr).await;
    let _sidecar = TestSidecar::builder(&edge)
        .via(proxy.addr)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    let first = edge.registry.all()[0].id.clone();
    proxy.reset_all();
    // Down, then back within the backoff: a second connection, and the edge
    // serves the environment with a new session only.
    proxy.wait_accepted(2).await;
    served_again_without(&edge, &first).await;
}

/// Waits until the edge serves [`DEFAULT_ENV`] from sessions other than
/// `gone` only, and a request through them is answered.
async fn served_again_without(edge: &TestEdge, gone: &str) {
    edge.wait_usable_sessions(DEFAULT_ENV, "a new session only", |live| {
        !live.is_empty() && live.iter().all(|s| s.id != gone)
    })
    .await;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A silent black hole between edge and sidecar (the TCP connection stays
/// up, no byte passes: a NAT or firewall that forgot the flow): both sides
/// notice within three heartbeats, the edge stops routing to the session,
/// and the sidecar is back once the path works again.
#[tokio::test]
async fn a_black_hole_between_edge_and_sidecar_is_noticed_by_both_sides_heartbeats() {
    let edge = TestEdge::builder()
        .set("tunnel", "heartbeat_interval: 300ms")
        .start()
        .await;
    let upstream = TestUpstream::start().await;
    let proxy = FaultProxy::start(edge.tunnel_addr).await;
    let sidecar = TestSidecar::builder(&edge)
        .via(proxy.addr)
        .target("hello", 8080, upstream.addr)
        .reconnect(Duration::from_millis(100), Duration::from_millis(500))
        .start()
        .await;
    let first = edge.registry.all()[0].id.clone();
    proxy.stall();
    let stalled = Instant::now();
    // Within PATIENCE (10 s): HTTP/2 keep-alive pings alone would take 25 s.
    edge.wait_usable_sessions(DEFAULT_ENV, "dropped the session", |live| live.is_empty())
        .await;
    let edge_noticed = stalled.elapsed();
    let error = sidecar.wait_error().await;
    let sidecar_noticed = stalled.elapsed();
    assert!(error.contains("stopped answering heartbeats"), "{error}");
    println!("a black hole noticed by the edge in {edge_noticed:?}, by the sidecar in {sidecar_noticed:?} (heartbeat 300ms)");

    proxy.resume();
    served_again_without(&edge, &first).await;
}

/// File descriptors, resident memory (KiB) and tasks of edge and
/// sidecar (this process holds both).
fn footprint(edge: &TestEdge, sidecar: &TestSidecar) -> (usize, u64, usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    (fds, pages * 4, edge.alive_tasks(), sidecar.alive_tasks())
}

/// 1,000 tunnel connections reset under the sidecar, each followed by its
/// reconnect and a request through the new session, leave file
/// descriptors, tasks and memory where they were: nothing is kept per
/// session that ended.
#[tokio::test]
async fn a_thousand_reconnects_leave_descriptors_tasks_and_memory_flat() {
    let edge = TestEdge::builder().start().await;
    let upstream = TestUpstream::start().await;
    let proxy = FaultProxy::start(edge.tunnel_addr).await;
    let sidecar = TestSidecar::builder(&edge)
        .via(proxy.addr)
        .target("hello", 8080, upstream.addr)
        .connections(1)
        .reconnect(Duration::from_millis(1), Duration::from_millis(5))
        .start()
        .await;
    let http = client();
    let url = edge.url("hello", 8080, DEFAULT_ENV, "/");
    let cycle = || {
        let (edge, proxy, http, url) = (&edge, &proxy, &http, &url);
        async move {
            let before = edge.registry.all()[0].id.clone();
            proxy.reset_all();
            edge.wait_usable_sessions(DEFAULT_ENV, "a new session", |live| {
                live.len() == 1 && live[0].id != before
            })
            .await;
            let status = http.get(url).send().await.unwrap().status();
            assert_eq!(status, 200);
        }
    };
    for _ in 0..50 {
        cycle().await; // warm: pools, caches and allocator arenas settle
    }
    let (fds, rss, edge_tasks, sidecar_tasks) = footprint(&edge, &sidecar);
    for _ in 0..1000 {
        cycle().await;
    }
    let after = footprint(&edge, &sidecar);
    println!(
        "1,000 reconnects: fds {fds} -> {}, RSS {rss} -> {} KiB, edge tasks {edge_tasks} -> {}, sidecar tasks {sidecar_tasks} -> {}",
        after.0, after.1, after.2, after.3
    );
    assert!(after.0 <= fds + 4, "descriptors grew: {fds} -> {}", after.0);
    assert!(
        after.2 <= edge_tasks + 4,
        "edge tasks grew: {edge_tasks} -> {}",
        after.2
    );
    // Each idle stream the sidecar keeps ahead is a task, and how many the
    // last session keeps depends on whether its first request waited for
    // one (the pool then doubles): a few dozen either way, where a leak of
    // one task per session would be a thousand.
    assert!(
        after.3 <= sidecar_tasks + 32,
        "sidecar tasks grew: {sidecar_tasks} -> {}",
        after.3
    );
    // A leak of one stream buffer per session would be ≥ 16 MiB here.
    assert!(
        after.1 <= rss + 8 * 1024,
        "memory grew: {rss} -> {} KiB",
        after.1
    );
    assert_eq!(edge.registry.all().len(), 1);
}

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Starts a [`BIG`] download and reads its first megabyte.
async fn big_download_under_way(edge: &TestEdge) -> (Body, u64) {
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, &format!("/bytes/{BIG}")))
        .send()
        .await
        .unwrap();
    let mut body: Body = Box::pin(resp.bytes_stream());
    let mut got = 0u64;
    while got < 1_000_000 {
        got += body.next().await.unwrap().unwrap().len() as u64;
    }
    (body, got)
}

/// Reads the rest of a body: the bytes received in all, and whether it
/// ended in an error (as a cut-short transfer must).
async fn finish(mut body: Body, mut got: u64) -> (u64, bool) {
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => got += c.len() as u64,
                Err(_) => return true,
            }
        }
        false
    })
    .await
    .expect("the visitor is told");
    (got, ended)
}

#[tokio::test]
async fn killing_the_sidecar_mid_transfer_fails_that_request_only() {
    let (edge, _upstream, sidecar) = stack().await;
    let (body, got) = big_download_under_way(&edge).await;
    sidecar.kill().await;
    let (got, broke) = finish(body, got).await;
    assert!(
        broke && got < BIG,
        "a cut-short body is an error, got {got} bytes"
    );
    // The edge is fine: once it has dropped the session, the route reports
    // the tunnel as unavailable.
    edge.wait_usable_sessions(DEFAULT_ENV, "no session", |live| live.is_empty())
        .await;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn killing_the_upstream_mid_transfer_is_reported() {
    let (edge, upstream, _sidecar) = stack().await;
    let (body, got) = big_download_under_way(&edge).await;
    upstream.stop();
    let (got, broke) = finish(body, got).await;
    assert!(
        broke && got < BIG,
        "a cut-short body is an error, got {got} bytes"
    );
}

#[tokio::test]
async fn killing_the_edge_makes_the_sidecar_reconnect_to_its_replacement() {
    let config_edge = TestEdge::builder();
    let yaml = config_edge.yaml();
    let edge = config_edge.start().await;
    let (http_addr, tunnel_addr) = (edge.http_addr, edge.tunnel_addr);
    let upstream = TestUpstream::start().await;
    let sidecar = TestSidecar::builder(&edge)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    edge.kill().await;
    let config = edge_proxy::EdgeConfig::parse(&yaml, "edge.yaml").unwrap();
    let edge = TestEdge::start_on(
        config,
        std::net::TcpListener::bind(http_addr).unwrap(),
        std::net::TcpListener::bind(tunnel_addr).unwrap(),
    );
    edge.wait_sessions(DEFAULT_ENV, 1).await;
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(sidecar);
}

#[tokio::test]
async fn works_over_a_slow_link() {
    let edge = TestEdge::builder().start().await;
    let upstream = TestUpstream::start().await;
    let proxy = FaultProxy::start(edge.tunnel_addr).await;
    let _sidecar = TestSidecar::builder(&edge)
        .via(proxy.addr)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    proxy.set_latency(Duration::from_millis(20));
    let n = 8 * 1024 * 1024;
    let body = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, &format!("/bytes/{n}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
        pattern::sha256(n)
    );
}

#[tokio::test]
async fn a_stalled_tunnel_times_out_new_requests_instead_of_hanging() {
    let edge = TestEdge::builder()
        .set("tunnel", "open_stream_timeout: 300ms")
        .set("upstream", "connect_timeout: 500ms")
        .start()
        .await;
    let upstream = TestUpstream::start().await;
    let proxy = FaultProxy::start(edge.tunnel_addr).await;
    let _sidecar = TestSidecar::builder(&edge)
        .via(proxy.addr)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    proxy.stall();
    let started = Instant::now();
    let resp = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(resp.status().as_u16(), 503 | 504),
        "{}",
        resp.status()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    proxy.resume();
}

/// GETs `url` in the background; resolves to the body.
fn get_in_background(url: String) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

#[tokio::test]
async fn graceful_sidecar_shutdown_lets_in_flight_requests_finish() {
    let (edge, upstream, sidecar) = stack().await;
    let request = get_in_background(edge.url("hello", 8080, DEFAULT_ENV, "/slow?ms=700"));
    upstream
        .wait_for("the request at the service", |c| {
            c.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    sidecar.begin_stop();
    assert_eq!(request.await.unwrap(), "slow but here\n");
}

#[tokio::test]
async fn edge_shutdown_finishes_requests_in_flight_and_drops_idle_connections() {
    let (edge, upstream, _sidecar) = stack().await;
    let idle = client(); // keeps its keep-alive connection open
    idle.get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let slow = get_in_background(edge.url("hello", 8080, DEFAULT_ENV, "/slow?ms=800"));
    upstream
        .wait_for("the slow request at the service", |c| {
            c.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    let started = Instant::now();
    edge.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for an idle connection",
        started.elapsed()
    );
    assert_eq!(slow.await.unwrap(), "slow but here\n");
    drop(idle);
}

async fn headers_seen(edge: &TestEdge, sent: &[(&str, &str)]) -> (serde_json::Value, String) {
    let mut request = client().get(edge.url("hello", 8080, DEFAULT_ENV, "/headers"));
    for (k, v) in sent {
        request = request.header(*k, *v);
    }
    let resp = request.send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    (resp.json().await.unwrap(), id)
}

const FORGED: &[(&str, &str)] = &[
    ("x-forwarded-for", "6.6.6.6"),
    ("forwarded", "for=6.6.6.6"),
    ("x-request-id", "upstream-hop-42"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
];

#[tokio::test]
async fn untrusted_visitors_cannot_forge_forwarding_headers() {
    let (edge, _upstream, _sidecar) = stack().await;
    let (seen, id) = headers_seen(&edge, FORGED).await;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(
        seen["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http;host="),
        "{seen}"
    );
    assert_ne!(id, "upstream-hop-42");
    assert_eq!(seen["x-request-id"], id.as_str());
    // Trace context is propagated from anyone.
    assert_eq!(seen["traceparent"], FORGED[3].1);
    assert_eq!(
        seen["x-forwarded-port"],
        edge.http_addr.port().to_string().as_str()
    );
}

#[tokio::test]
async fn trusted_proxies_keep_their_forwarding_headers_and_request_id() {
    let edge = TestEdge::builder()
        .set("forwarding", "trusted_proxies: [127.0.0.0/8]")
        .start()
        .await;
    let upstream = TestUpstream::start().await;
    let _sidecar = TestSidecar::builder(&edge)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    let (seen, id) = headers_seen(&edge, FORGED).await;
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert!(
        seen["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=6.6.6.6, for=127.0.0.1;"),
        "{seen}"
    );
    assert_eq!(id, "upstream-hop-42");
    assert_eq!(seen["x-request-id"], "upstream-hop-42");
    // Without a traceparent, a trace is started.
    let (seen, _) = headers_seen(&edge, &[]).await;
    assert!(
        seen["traceparent"].as_str().unwrap().starts_with("00-"),
        "{seen}"
    );
}

/// An edge with `settings`, a sample service, and a sidecar whose tunnel
/// goes through a fault proxy.
async fn stack_via_fault_proxy(
    settings: &[(&str, &str)],
) -> (TestEdge, TestUpstream, TestSidecar, FaultProxy) {
    let mut builder = TestEdge::builder();
    for (section, line) in settings {
        builder = builder.set(section, line);
    }
    let edge = builder.start().await;
    let upstream = TestUpstream::start().await;
    let proxy = FaultProxy::start(edge.tunnel_addr).await;
    let sidecar = TestSidecar::builder(&edge)
        .via(proxy.addr)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    (edge, upstream, sidecar, proxy)
}

/// A download through a faulty tunnel: everything the visitor receives
/// before the body ends, and how it ends (an error, never a short body
/// passed off as whole).
async fn download_through(url: String) -> (Vec<u8>, Result<(), String>) {
    let mut resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return (body, Ok(())),
            Err(e) => return (body, Err(format!("{e:?}"))),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// With bandwidth capped and latency added on the tunnel, downloads (with
/// a length and chunked) and an upload arrive whole: their checksums match.
#[tokio::test]
async fn transfers_over_a_capped_slow_link_arrive_intact() {
    let (edge, _upstream, _sidecar, proxy) = stack_via_fault_proxy(&[]).await;
    proxy.set_latency(Duration::from_millis(10));
    proxy.set_bandwidth(4 << 20);
    let n = 6 << 20;
    for query in ["", "?chunked"] {
        let url = edge.url("hello", 8080, DEFAULT_ENV, &format!("/bytes/{n}{query}"));
        let (body, end) = download_through(url).await;
        assert_eq!(end, Ok(()), "/bytes{query}");
        assert_eq!(sha256_hex(&body), pattern::sha256(n), "/bytes{query}");
    }
    let upload: Vec<u8> = pattern::chunks(n).flat_map(|c| c.to_vec()).collect();
    let resp = client()
        .post(edge.url("hello", 8080, DEFAULT_ENV, "/sha256"))
        .body(upload)
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["sha256"], pattern::sha256(n));
    assert_eq!(seen["bytes"], n);
}

/// The tunnel reset under a download: the visitor's transfer ends in an
/// error (with a length, and chunked, where a clean end would pass a
/// short body off as whole), the sidecar reconnects, and the next
/// download is intact.
#[tokio::test]
async fn a_download_cut_by_a_tunnel_reset_fails_visibly_and_the_next_is_whole() {
    let (edge, _upstream, _sidecar, proxy) = stack_via_fault_proxy(&[]).await;
    let n: u64 = 256 << 20;
    for query in ["", "?chunked"] {
        proxy.set_bandwidth(8 << 20);
        let url = edge.url("hello", 8080, DEFAULT_ENV, &format!("/bytes/{n}{query}"));
        let mut resp = client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut got = resp.chunk().await.unwrap().map_or(0, |c| c.len() as u64);
        let first = edge.registry.all()[0].id.clone();
        proxy.reset_all();
        let end = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => got += chunk.len() as u64,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        assert!(
            got < n,
            "/bytes{query}: all {n} bytes came through a reset tunnel"
        );
        assert!(
            end.is_err(),
            "/bytes{query}: {got} of {n} bytes, ended as if whole"
        );
        proxy.set_bandwidth(0);
        served_again_without(&edge, &first).await;
    }
    let (body, end) =
        download_through(edge.url("hello", 8080, DEFAULT_ENV, "/bytes/1000000")).await;
    assert_eq!(end, Ok(()));
    assert_eq!(sha256_hex(&body), pattern::sha256(1_000_000));
}

/// A tunnel that stalls under a download and comes back before any
/// timeout: the download resumes and is intact. One that stays stalled
/// ends the download in an error at the edge's read timeout, not a hang.
#[tokio::test]
async fn a_download_survives_a_short_stall_and_fails_at_the_timeout_on_a_long_one() {
    let (edge, upstream, _sidecar, proxy) =
        stack_via_fault_proxy(&[("upstream", "read_timeout: 1s")]).await;
    let n: u64 = 64 << 20;
    proxy.set_bandwidth(16 << 20);
    let url = edge.url("hello", 8080, DEFAULT_ENV, &format!("/bytes/{n}"));
    let download = tokio::spawn(download_through(url.clone()));
    test_support::wait::until("the download to start", || {
        upstream.counters.body_bytes.load(Ordering::Relaxed) > 0
    })
    .await;
    proxy.stall();
    // The fault's length, half the read timeout: not a wait for an event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.resume();
    let (body, end) = download.await.unwrap();
    assert_eq!(end, Ok(()));
    assert_eq!(sha256_hex(&body), pattern::sha256(n));

    let mut resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = resp.chunk().await.unwrap().map_or(0, |c| c.len());
    proxy.stall();
    let stalled = Instant::now();
    let end = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => got += chunk.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let ended = stalled.elapsed();
    proxy.resume();
    assert!(end.is_err(), "{got} of {n} bytes, ended as if whole");
    // The read timeout (1 s), or the heartbeats' 3 × 5 s at the latest.
    assert!(
        ended < Duration::from_secs(16),
        "ended {ended:?} after the stall"
    );
}
