//! Requests as attackers send them, over raw sockets: heads too large,
//! too slow, with too many fields or too long a target, malformed ones,
//! bodies over a route's limit, `CONNECT`. Each is refused in the one
//! error shape (a code, the hop, a request id in the body and in
//! `X-Request-Id`) and never reaches the service.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use conformance::Stack;
use serde_json::Value;

const HOST: &str = "hello-8080-demo.preview.localhost";

/// Sends `request` on a new connection; returns the edge's whole answer
/// (it closes the connection after a refusal).
fn send(stack: &Stack, request: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The edge may answer and close before all of an oversized request is
    // written: what it answered is what matters.
    let _ = c.write_all(request);
    read_all(&mut c)
}

fn read_all(c: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The status, the `X-Request-Id` and the JSON error of a refusal.
fn refusal(answer: &str) -> (u16, String, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {answer:?}"));
    let status = head[9..12].parse().unwrap();
    let id = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id: ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no X-Request-Id: {head}"));
    let error: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer}"));
    assert_eq!(
        error["error"]["request_id"].as_str(),
        Some(id.as_str()),
        "{answer}"
    );
    (status, id, error["error"].clone())
}

fn get_with(extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

#[test]
fn oversized_heads_are_refused_with_431() {
    let stack = Stack::start_with_edge_yaml("visitors:\n  max_head_size: 16KiB\n");
    let under = get_with(&format!("X-Big: {}\r\n", "a".repeat(12 * 1024)));
    assert!(send(&stack, &under).starts_with("HTTP/1.1 200"));

    let over = get_with(&format!("X-Big: {}\r\n", "a".repeat(20 * 1024)));
    let (status, _, error) = refusal(&send(&stack, &over));
    assert_eq!(status, 431);
    assert_eq!(error["code"], "HEADERS_TOO_LARGE");
    assert_eq!(error["hop"], "visitor");
    assert!(
        error["message"].as_str().unwrap().contains("16384"),
        "{error}"
    );

    // The default (64 KiB): a 1 MiB head, which Pingora alone accepts, is
    // refused.
    let stack = Stack::start();
    let huge = get_with(&format!("X-Big: {}\r\n", "a".repeat(1000 * 1024)));
    assert_eq!(refusal(&send(&stack, &huge)).0, 431);
    let line = stack
        .edge
        .wait_line("request refused before it was read", Duration::from_secs(5));
    assert!(line.contains("outcome=\"HEADERS_TOO_LARGE\""), "{line}");
}

#[test]
fn too_many_fields_and_too_long_a_target_are_refused() {
    let stack =
        Stack::start_with_edge_yaml("visitors:\n  max_headers: 20\n  max_uri_length: 1KiB\n");
    let fields = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    assert!(send(&stack, &get_with(&fields(10))).starts_with("HTTP/1.1 200"));
    let (status, _, error) = refusal(&send(&stack, &get_with(&fields(30))));
    assert_eq!(
        (status, error["code"].as_str()),
        (431, Some("HEADERS_TOO_LARGE"))
    );
    // More than Pingora parses at all: the same answer.
    let (status, _, error) = refusal(&send(&stack, &get_with(&fields(300))));
    assert_eq!(
        (status, error["code"].as_str()),
        (431, Some("HEADERS_TOO_LARGE"))
    );

    let long = format!("GET /{} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", "p".repeat(2000));
    let (status, _, error) = refusal(&send(&stack, long.as_bytes()));
    assert_eq!(
        (status, error["code"].as_str()),
        (414, Some("URI_TOO_LONG"))
    );
}

#[test]
fn a_head_that_comes_too_slowly_gets_408() {
    let stack = Stack::start_with_edge_yaml("visitors:\n  header_timeout: 1s\n");
    let mut c = TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "GET / HTTP/1.1\r\nHost: {HOST}\r\n").unwrap();
    // ...and nothing more: the edge answers when the deadline passes.
    let (status, _, error) = refusal(&read_all(&mut c));
    assert_eq!(status, 408);
    assert_eq!(error["code"], "REQUEST_TIMEOUT");
}

#[test]
fn malformed_heads_get_the_error_shape_with_a_request_id() {
    let stack = Stack::start();
    for (what, request) in [
        (
            "differing Content-Length",
            format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-A: b\r\n  c\r\n\r\n"),
        ),
        (
            "a space in a field name",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nBad Name: x\r\n\r\n"),
        ),
        (
            "a control character in a value",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\u{1}b\r\n\r\n"),
        ),
        ("not HTTP", "HELLO\r\n\r\n".to_string()),
        (
            "a target whose host is not Host's",
            format!("GET http://other.example.test/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        ),
    ] {
        let answer = send(&stack, request.as_bytes());
        let (status, _, error) = refusal(&answer);
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(error["code"], "BAD_REQUEST", "{what}");
        assert!(!answer.contains("Server: Pingora"), "{what}: {answer}");
    }
}

/// `Transfer-Encoding` and `Content-Length` together: the two readings of
/// the body's length that request smuggling plays against each other.
/// Refused (Pingora alone would read it as chunked and forward it), and
/// the connection closed; either header alone is served.
#[test]
fn conflicting_framing_is_refused() {
    let stack = Stack::start();
    let post = |framing: &str, body: &str| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive\r\n{framing}\r\n{body}"
        )
    };
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    for both in [
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "content-length: 32\r\ntransfer-encoding: chunked\r\n",
    ] {
        // The edge closes the connection after its answer: `send` reads
        // to the end, so a kept-alive connection would hang it.
        let answer = send(&stack, post(both, chunked).as_bytes());
        let (status, _, error) = refusal(&answer);
        assert_eq!(status, 400, "{both:?}: {answer}");
        assert_eq!(error["code"], "BAD_REQUEST");
        assert_eq!(error["hop"], "visitor");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("Transfer-Encoding and Content-Length"),
            "{error}"
        );
    }
    for one in [
        ("Transfer-Encoding: chunked\r\n", chunked),
        ("Content-Length: 5\r\n", "hello"),
    ] {
        let request = post(one.0, one.1).replace("keep-alive", "close");
        let answer = send(&stack, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200"), "{one:?}: {answer}");
        assert!(
            answer.split_once("\r\n\r\n").unwrap().1.contains("hello"),
            "{one:?}: {answer}"
        );
    }
}

#[test]
fn a_target_that_agrees_with_host_is_served() {
    let stack = Stack::start_with_edge_yaml("visitors:\n  h2c: true\n");
    let url = format!("http://{HOST}:{}/", stack.http_port);
    let request = format!(
        "GET {url} HTTP/1.1\r\nHost: {HOST}:{}\r\nConnection: close\r\n\r\n",
        stack.http_port
    );
    let answer = send(&stack, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    let stack = Stack::start_with_edge_yaml("visitors:\n  h2c: true\n");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    for (host, status) in [(HOST, 200), ("other.example.test", 400)] {
        let request = http::Request::get(format!("http://{HOST}/"))
            .header("host", host)
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), status, "host: {host}");
    }
}

#[test]
fn connect_is_refused_in_the_error_shape() {
    let stack = Stack::start();
    let answer = send(
        &stack,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    let (status, _, error) = refusal(&answer);
    assert_eq!(status, 405);
    assert_eq!(error["code"], "METHOD_NOT_ALLOWED");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nallow: get"),
        "{answer}"
    );
}

#[test]
fn bodies_over_the_route_limit_are_refused_before_or_while_they_stream() {
    let stack = Stack::start_with_edge_yaml(
        "visitors:\n  max_body_size: 1KiB\n\
         routes:\n  - { host: big.example.test, target: demo/hello:8080, max_body_size: 1MiB }\n",
    );
    // Announced: refused before a byte of the body is read.
    let post = |host: &str, framing: &str, body: &[u8]| {
        let mut request =
            format!("POST /sha256 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{framing}\r\n")
                .into_bytes();
        request.extend_from_slice(body);
        send(&stack, &request)
    };
    let body = vec![b'x'; 2048];
    let (status, _, error) = refusal(&post(HOST, "Content-Length: 2048\r\n", &body));
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("BODY_TOO_LARGE"))
    );
    // The route's own limit is larger.
    let answer = post("big.example.test", "Content-Length: 2048\r\n", &body);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Chunked, no length said: refused once the count passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'y'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _, error) = refusal(&post(HOST, "Transfer-Encoding: chunked\r\n", &chunked));
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("BODY_TOO_LARGE"))
    );
}
