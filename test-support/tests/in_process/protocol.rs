//! The tunnel below HTTP: raw tunnel streams, what the sidecar refuses, and
//! what the edge refuses.

use std::sync::atomic::Ordering;
use std::time::Duration;

use edge_proxy::tunnel::connector::{TunnelConnector, TunnelError};
use futures::StreamExt;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use test_support::{
    client, stack, TestEdge, TestSidecar, TestUpstream, DEFAULT_ENV, DEFAULT_TOKEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tunnel_proto::tunnel_client::TunnelClient;
use tunnel_proto::{sidecar_message, Hello, SidecarMessage, StreamFrame};

fn connector(edge: &TestEdge, service: &str, port: u16) -> TunnelConnector {
    let session = edge.registry.all().into_iter().next().expect("a session");
    TunnelConnector {
        session,
        service: service.into(),
        port,
        request_id: "test".into(),
        open_stream_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        websocket: false,
    }
}

fn any_addr() -> SocketAddr {
    SocketAddr::Inet("127.0.0.1:1".parse().unwrap())
}

#[tokio::test]
async fn half_close_travels_both_ways() {
    // A service that reads until the client half-closes, then answers and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        tcp.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
    });
    let edge = TestEdge::builder().start().await;
    let _sidecar = TestSidecar::builder(&edge)
        .target("raw", 5000, addr)
        .start()
        .await;

    let mut stream = connector(&edge, "raw", 5000)
        .connect(&any_addr())
        .await
        .expect("open");
    stream.write_all(&[7u8; 100_000]).await.unwrap();
    stream.shutdown().await.unwrap(); // our fin
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap(); // ends at their fin
    assert_eq!(answer, "got 100000 bytes");
}

#[tokio::test]
async fn the_sidecar_refuses_targets_outside_its_allowlist_whatever_the_edge_asks() {
    let (edge, upstream, _sidecar) = stack().await;
    // The edge asks for something the sidecar never offered, as a compromised edge would.
    for (service, port) in [("kubernetes", 443), ("hello", 22), ("metadata", 80)] {
        let err = connector(&edge, service, port)
            .connect(&any_addr())
            .await
            .unwrap_err();
        let cause = err
            .root_cause()
            .downcast_ref::<TunnelError>()
            .expect("a tunnel error");
        assert!(
            matches!(
                cause,
                TunnelError::Target {
                    code: tunnel_proto::ErrorCode::Denied,
                    ..
                }
            ),
            "{service}:{port}: {cause:?}"
        );
    }
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test]
async fn pooled_connections_never_mix_targets() {
    let edge = TestEdge::builder().start().await;
    let a = TestUpstream::start().await;
    let b = TestUpstream::start().await;
    let _sidecar = TestSidecar::builder(&edge)
        .target("a", 80, a.addr)
        .target("b", 80, b.addr)
        .start()
        .await;
    let http = client();
    for i in 0..40 {
        let service = if i % 2 == 0 { "a" } else { "b" };
        let resp = http
            .get(edge.url(service, 80, DEFAULT_ENV, "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!((a.requests(), b.requests()), (20, 20));
    assert!(a.connections() <= 2 && b.connections() <= 2);
}

async fn control_call(edge: &TestEdge, token: &str, hello: Hello) -> Result<(), tonic::Status> {
    let mut client = TunnelClient::connect(edge.tunnel_url()).await.unwrap();
    let first = SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(hello)),
    };
    let mut request =
        tonic::Request::new(futures::stream::iter([first]).chain(futures::stream::pending()));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.control(request).await.map(|_| ())
}

#[tokio::test]
async fn the_edge_refuses_unknown_protocol_versions() {
    let edge = TestEdge::builder().start().await;
    let hello = Hello {
        protocol_version: 99,
        environment: DEFAULT_ENV.into(),
        ..Default::default()
    };
    let status = control_call(&edge, DEFAULT_TOKEN, hello).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("protocol version 99"),
        "{}",
        status.message()
    );

    // A data stream with an unknown version or session is refused too.
    let mut client = TunnelClient::connect(edge.tunnel_url()).await.unwrap();
    let mut request = tonic::Request::new(futures::stream::pending::<StreamFrame>());
    request.metadata_mut().insert(
        tunnel_proto::VERSION_METADATA,
        MetadataValue::from_static("7"),
    );
    let status = client.data(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let mut request = tonic::Request::new(futures::stream::pending::<StreamFrame>());
    request.metadata_mut().insert(
        tunnel_proto::VERSION_METADATA,
        MetadataValue::from(tunnel_proto::PROTOCOL_VERSION),
    );
    request.metadata_mut().insert(
        tunnel_proto::SESSION_METADATA,
        MetadataValue::from_static("forged"),
    );
    let status = client.data(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn the_edge_refuses_missing_tokens_and_a_silent_hello() {
    let edge = TestEdge::builder().start().await;
    let mut client = TunnelClient::connect(edge.tunnel_url()).await.unwrap();
    let status = client
        .control(futures::stream::pending::<SidecarMessage>())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // First message not a Hello.
    let hb = SidecarMessage {
        kind: Some(sidecar_message::Kind::Heartbeat(Default::default())),
    };
    let mut request =
        tonic::Request::new(futures::stream::iter([hb]).chain(futures::stream::pending()));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {DEFAULT_TOKEN}").parse().unwrap(),
    );
    let status = client.control(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn many_tiny_frames_to_a_stalled_visitor_do_not_reset_the_tunnel() {
    let (edge, upstream, _sidecar) = stack().await;
    // 20,000 tiny events as fast as the service can write them; the visitor
    // reads none of them until the service has written them all and other
    // visitors have been served.
    let stalled = client()
        .get(edge.url("hello", 8080, DEFAULT_ENV, "/sse?n=20000&interval_ms=0"))
        .send()
        .await
        .unwrap();
    upstream
        .wait_for("the service to write all 20,000 events", |c| {
            c.bodies_finished.load(Ordering::SeqCst) == 1
        })
        .await;
    for _ in 0..10 {
        let resp = client()
            .get(edge.url("hello", 8080, DEFAULT_ENV, "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let text = stalled.text().await.unwrap();
    assert_eq!(text.matches("data: event").count(), 20000);
}

#[tokio::test]
async fn a_stock_grpc_client_serves_data_streams_and_both_ends_close_cleanly() {
    // The edge's data streams are plain gRPC: a generated tonic client (not
    // our sidecar) holds a session, parks a data stream and answers the
    // edge's Open; data and Fin travel both ways, and the call ends with
    // grpc-status OK once both sides said Fin.
    let edge = TestEdge::builder().start().await;
    let mut client = TunnelClient::connect(edge.tunnel_url()).await.unwrap();
    let hello = SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(Hello {
            protocol_version: tunnel_proto::PROTOCOL_VERSION,
            environment: DEFAULT_ENV.into(),
            routes: vec![tunnel_proto::Route {
                service: "raw".into(),
                port: 5000,
                ..Default::default()
            }],
            ..Default::default()
        })),
    };
    let mut request =
        tonic::Request::new(futures::stream::iter([hello]).chain(futures::stream::pending()));
    let bearer: MetadataValue<_> = format!("Bearer {DEFAULT_TOKEN}").parse().unwrap();
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    let mut control = client.control(request).await.unwrap().into_inner();
    let welcome = match control.message().await.unwrap().unwrap().kind {
        Some(tunnel_proto::edge_message::Kind::Welcome(w)) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };

    let (to_edge, outbound) = tokio::sync::mpsc::channel::<StreamFrame>(8);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
    let md = request.metadata_mut();
    md.insert("authorization", bearer);
    md.insert(
        tunnel_proto::VERSION_METADATA,
        MetadataValue::from(tunnel_proto::PROTOCOL_VERSION),
    );
    md.insert(
        tunnel_proto::SESSION_METADATA,
        welcome.session_id.parse().unwrap(),
    );
    let mut from_edge = client.data(request).await.unwrap().into_inner();
    let grpc_peer = tokio::spawn(async move {
        use tunnel_proto::stream_frame::Kind;
        let open = from_edge.message().await.unwrap().unwrap();
        assert!(
            matches!(open.kind, Some(Kind::Open(ref o)) if o.service == "raw" && o.port == 5000)
        );
        to_edge.send(StreamFrame::opened()).await.unwrap();
        let mut got = Vec::new();
        loop {
            match from_edge.message().await.unwrap().unwrap().kind {
                Some(Kind::Data(b)) => {
                    got.extend_from_slice(&b);
                    // Consumed: the edge may send as much again (it sends
                    // no more than the initial credit without this).
                    to_edge
                        .send(StreamFrame::credit(b.len() as u64))
                        .await
                        .unwrap();
                }
                Some(Kind::Fin(_)) => break,
                // Credit for what this peer sends (it sends little), and
                // the edge saying it waits for credit.
                Some(Kind::Credit(_) | Kind::Blocked(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        to_edge
            .send(StreamFrame::data(format!("got {} bytes", got.len()).into()))
            .await
            .unwrap();
        to_edge.send(StreamFrame::fin()).await.unwrap();
        // The edge ends its half once both sides said Fin: a clean end of
        // the call, not a reset.
        let end = from_edge.message().await;
        drop(to_edge);
        end
    });

    let mut stream = connector(&edge, "raw", 5000)
        .connect(&any_addr())
        .await
        .expect("the stock client's stream opens");
    // More than the initial credit: the peer's credit lets the rest through.
    let sent = tunnel_proto::INITIAL_STREAM_CREDIT as usize + 4_464;
    let exchange = async {
        stream.write_all(&vec![7u8; sent]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the exchange finishes");
    assert_eq!(answer, format!("got {sent} bytes"));
    drop(stream);
    let end = tokio::time::timeout(Duration::from_secs(5), grpc_peer)
        .await
        .expect("the call ends")
        .unwrap();
    assert!(matches!(end, Ok(None)), "a clean end, got {end:?}");
}
