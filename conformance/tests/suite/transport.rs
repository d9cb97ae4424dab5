//! The tunnel over a WebSocket on the edge's visitor ports, for networks
//! where only HTTPS gets out: through an HTTP proxy, as a fallback when
//! gRPC cannot get out, and what the edge does with bad input there.
//! (`CONFORMANCE_TUNNEL=websocket` runs the HTTP suite over it too.)

use std::time::Duration;

use conformance::{curl, Proc, Stack};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// Starts a sidecar for the stack's sample service with `edge_yaml` (its
/// `edge:` and transport settings) after stopping the stack's own, so
/// only the new one can serve.
fn replace_sidecar(stack: &mut Stack, edge_yaml: &str) -> Proc {
    let hello = format!(
        "  - {{ service: hello, port: 8080, address: {} }}\n",
        stack.upstream_addr
    );
    stack.replace_sidecar(edge_yaml, &hello)
}

/// A sidecar whose network lets only HTTPS out through a proxy that wants
/// credentials: `wss://` to the edge's HTTPS port, through `CONNECT`, the
/// edge's certificate verified as on the tunnel port. Visitors reach the
/// service through it; wrong proxy credentials are said plainly.
#[test]
fn a_sidecar_behind_a_proxy_tunnels_over_a_websocket_on_the_https_port() {
    let mut stack = Stack::start_https("");
    let https = stack.https_port.unwrap();
    let proxy = test_support::connect_proxy::ConnectProxy::with_credentials("alice:s3cret");
    let tls = format!(
        "tls:\n  ca: {}\n  server_name: edge.preview.localhost\n",
        stack.dir.path().join("ca.pem").display()
    );

    let refused = replace_sidecar(
        &mut stack,
        &format!(
            "edge: wss://127.0.0.1:{https}\n{tls}proxy: {}\n",
            proxy.url(Some("alice:wrong"))
        ),
    );
    let said = refused.wait_line("tunnel down", WAIT);
    assert!(said.contains("wants credentials"), "{said}");
    drop(refused);

    let sidecar = replace_sidecar(
        &mut stack,
        &format!(
            "edge: wss://127.0.0.1:{https}\n{tls}proxy: {}\n",
            proxy.url(Some("alice:s3cret"))
        ),
    );
    sidecar.wait_lines("tunnel up", 2, WAIT);
    let out = curl(&["-s", "-f", &stack.url("hello-8080", "/")]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("through the tunnel"));
    assert_eq!(
        proxy.targets(),
        vec![format!("127.0.0.1:{https}"); 2],
        "both sessions went through the proxy"
    );
}

/// gRPC cannot get out (nothing answers on the tunnel port the sidecar
/// names): after `fallback.after` failures in a row the sidecar tunnels
/// over a WebSocket instead, and visitors are served.
#[test]
fn a_sidecar_falls_back_to_a_websocket_when_grpc_cannot_get_out() {
    let mut stack = Stack::start();
    let closed = test_support::ClosedPort::new();
    let edge_yaml = format!(
        "edge: http://{}\nfallback:\n  url: ws://127.0.0.1:{}\n  after: 2\n",
        closed.addr, stack.http_port
    );
    let sidecar = replace_sidecar(&mut stack, &edge_yaml);
    let switched = sidecar.wait_line("switching transports", WAIT);
    assert!(switched.contains("failures=2"), "{switched}");
    let up = sidecar.wait_lines("tunnel up", 2, WAIT);
    assert!(up.iter().all(|l| l.contains("url=ws://")), "{up:?}");
    let out = curl(&["-s", "-f", &stack.url("hello-8080", "/")]);
    assert!(out.status.success(), "{out:?}");
}

/// Runs `attempt` against the tunnel path and then checks that the edge
/// logged why it ended that connection and the stack's sidecar still
/// serves (its own WebSocket tunnel untouched).
fn refused_alone(stack: &Stack, what: &str, expected_log: &str) {
    let line = stack.edge.wait_line(expected_log, WAIT);
    assert!(line.contains("tunnel"), "{what}: {line}");
    let out = curl(&["-s", "-f", &stack.url("hello-8080", "/")]);
    assert!(out.status.success(), "after {what}: {out:?}");
    let sidecar = stack.sidecar.as_ref().unwrap();
    assert_eq!(
        sidecar.output().matches("tunnel down").count(),
        0,
        "after {what}:\n{}",
        sidecar.output()
    );
}

/// Bad input on the tunnel's WebSocket ends that connection alone, with
/// the reason in the edge's log: a text message, a message over the
/// 1 MiB limit, a malformed frame (unmasked, from a client), and an
/// HTTP/2 frame for a stream that was never opened. A plain request to the
/// tunnel path is told what the path is for.
#[tokio::test]
async fn bad_input_on_the_tunnel_websocket_ends_that_connection_alone() {
    let stack = tokio::task::spawn_blocking(|| {
        Stack::start_tunnel(conformance::Tunnel::WebSocket, "", &[], &[])
    })
    .await
    .unwrap();
    let url = format!("ws://127.0.0.1:{}/.preview/tunnel", stack.http_port);

    let plain = curl(&[
        "-s",
        &format!("http://127.0.0.1:{}/.preview/tunnel", stack.http_port),
    ]);
    let body = String::from_utf8_lossy(&plain.stdout);
    assert!(body.contains("with a WebSocket upgrade"), "{body}");

    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert!(ended(&mut ws).await, "a text message");
    refused_alone(&stack, "a text message", "text message on the tunnel");

    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let big = vec![0u8; tunnel_transport::websocket::MAX_RECEIVE + 1];
    let _ = ws.send(Message::Binary(big.into())).await;
    assert!(ended(&mut ws).await, "an oversized message");
    refused_alone(&stack, "an oversized message", "Message too long");

    // An unmasked binary frame: a server's, never a client's.
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut raw = ws.into_inner();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(&[0x82, 0x03, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
    refused_alone(&stack, "an unmasked frame", "unmasked");

    // The HTTP/2 preface and SETTINGS, then DATA on stream 7, never opened.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    h2.extend_from_slice(&[0, 0, 3, 0, 0, 0, 0, 0, 7, b'a', b'b', b'c']); // DATA
    ws.send(Message::Binary(h2.into())).await.unwrap();
    assert!(ended(&mut ws).await, "a frame for an unknown stream");
    refused_alone(
        &stack,
        "a frame for an unknown stream",
        "protocol error detected",
    );
}

/// Whether the edge ends the WebSocket (Close, an error or the end)
/// within [`WAIT`], whatever it sends first (HTTP/2 SETTINGS, GOAWAY).
async fn ended<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let end = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                _ => return,
            }
        }
    };
    tokio::time::timeout(WAIT, end).await.is_ok()
}
