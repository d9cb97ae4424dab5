//! Graceful drain: a sidecar or an edge leaving finishes what is in flight,
//! sends nothing new where it is going away, and does not wait for idle
//! connections.

use std::io::{BufRead, Read};
use std::time::Duration;

use conformance::{curl, hold, release, Proc, Stack};

/// Reads the rest of a `/hold` response ([`hold`]): its headers, then the
/// 13-byte body.
fn finish_held(mut held: std::io::BufReader<std::net::TcpStream>) -> String {
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        held.read_line(&mut line).unwrap();
    }
    let mut body = [0u8; 13];
    held.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// A sidecar being replaced: SIGTERM while a request is in flight and idle
/// keep-alive streams sit in the edge's pool. New requests go to the other
/// sidecar at once, the one in flight finishes whole, and the leaving
/// sidecar exits as soon as the edge tells it nothing else is in flight,
/// not at the end of its grace period (idle pooled streams are not work).
#[test]
fn a_leaving_sidecar_finishes_its_requests_and_exits_once_nothing_is_in_flight() {
    let mut stack = Stack::start();
    let url = stack.url("hello-8080", "/");
    // Keep-alive streams to the service, pooled at the edge.
    let warm = curl(&["-s", "-o", "/dev/null", &url, &url, &url, &url]);
    assert!(warm.status.success());
    let held = hold(&stack, &stack.preview_host(), "leaving");

    let replacement = Proc::spawn(
        "sidecar",
        &["run", "--config", stack.sidecar_yaml().to_str().unwrap()],
    );
    replacement.wait_lines("tunnel up", 2, Duration::from_secs(10));
    let mut leaving = stack.sidecar.take().unwrap();
    conformance::signal(leaving.pid(), "TERM");
    stack
        .edge
        .wait_lines("sidecar draining", 2, Duration::from_secs(10));

    // Served by the replacement while the leaving one still holds a request.
    for _ in 0..20 {
        let out = curl(&["-s", "-f", &url]);
        assert!(out.status.success(), "{:?}", out);
    }
    assert!(leaving.is_running(), "it left with a request in flight");

    release(&stack, "leaving");
    assert_eq!(finish_held(held), "first\nsecond\n");
    leaving.assert_exits_cleanly();
    let log = leaving.output();
    assert_eq!(
        log.matches("drained: the edge has nothing in flight here")
            .count(),
        2,
        "each session told by the edge:\n{log}"
    );
    assert!(!log.contains("grace period over"), "{log}");
}

/// An edge leaving (SIGTERM): its sidecars open their next sessions at
/// once, elsewhere (this edge turns new sessions away, so they go to
/// another replica), while the requests in flight on it finish whole.
#[test]
fn a_leaving_edge_sends_its_sidecars_elsewhere_at_once_and_finishes_its_requests() {
    let mut stack = Stack::start();
    let held = hold(&stack, &stack.preview_host(), "edge-leaving");
    stack.edge.interrupt();
    // Before the request in flight ends, the sidecar already tries anew:
    // the tunnel port says why it turns the session away; the visitor
    // ports (a WebSocket's) no longer take connections.
    let sidecar = stack.sidecar.as_ref().unwrap();
    let why = match stack.tunnel {
        conformance::Tunnel::WebSocket => "refused CONNECT",
        _ => "this edge is shutting down; connect to another replica",
    };
    let refused = sidecar.wait_line(why, Duration::from_secs(10));
    assert!(refused.contains("tunnel down; reconnecting"), "{refused}");
    assert!(
        stack.edge.is_running(),
        "the edge left with a request in flight"
    );

    release(&stack, "edge-leaving");
    assert_eq!(finish_held(held), "first\nsecond\n");
    stack.edge.assert_exits_cleanly();
}

/// A WebSocket still open when a leaving edge's grace period ends is
/// closed with a Close frame, 1001 "going away" (browsers' `onclose` sees
/// it; a client may reconnect at once), not a cut connection.
#[tokio::test]
async fn a_websocket_open_at_the_end_of_the_grace_period_is_closed_with_going_away() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let stack = Stack::start_with_edge_yaml("shutdown_grace: 1s\n");
    let mut ws = crate::spine::websocket(&stack).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    stack.edge.interrupt();
    let closed = ws.next().await.unwrap().unwrap();
    let Message::Close(Some(frame)) = closed else {
        panic!("expected a Close frame, got {closed:?}");
    };
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason.as_str(), "edge restarting");
    stack
        .edge
        .wait_line("grace period over", Duration::from_secs(10));
}
