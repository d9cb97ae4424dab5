//! gRPC and upstream protocols through the real binaries: a tonic client
//! (HTTP/2 over TLS, and h2c with prior knowledge) → edge → tunnel →
//! sidecar → the `grpc-upstream` echo service over h2c or TLS; HTTPS
//! upstreams checked against their CA; curl with `--http2-prior-knowledge`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use conformance::{curl, edge_yaml_with, Proc, Tunnel, ENV, TOKEN};
use test_support::certs;
use test_support::grpc::proto::{EchoReply, EchoRequest};
use test_support::grpc::{self, EchoClient};
use tonic::transport::Channel;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(10);

struct GrpcStack {
    dir: tempfile::TempDir,
    edge: Proc,
    grpc: Proc,
    _grpc_tls: Proc,
    _https_upstream: Proc,
    _sidecar: Proc,
    http: SocketAddr,
    https: SocketAddr,
}

fn spawn_listening(name: &str, args: &[&str]) -> (Proc, String) {
    let proc = Proc::spawn(name, args);
    let addr = proc.wait_line("listening ", WAIT)["listening ".len()..].to_string();
    (proc, addr)
}

impl GrpcStack {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        certs::write(
            d,
            "edge-",
            &["*.preview.localhost".into(), "grpc.example.test".into()],
            false,
        )
        .unwrap();
        // The services' certificate, from the same CA (the cluster's CA).
        let service = certs::write(d, "service-", &["echo.internal".into()], false).unwrap();
        let (cert, key) = (path(&service.cert), path(&service.key));
        let tls_args = [
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        let (grpc, grpc_addr) = spawn_listening("grpc-upstream", &["--listen", "127.0.0.1:0"]);
        let (grpc_tls, grpc_tls_addr) = spawn_listening("grpc-upstream", &tls_args);
        let (https_upstream, https_addr) = spawn_listening("sample-upstream", &tls_args);

        let edge_extra = "visitors:\n  h2c: true\n".to_string()
            + "tls:\n  certificates:\n    - { cert: edge-cert.pem, key: edge-key.pem }\n"
            // Plain HTTP serves (h2c) instead of redirecting to HTTPS.
            + "  redirect_http: false\n"
            // Short enough to prove quiet streams are not cut by it.
            + "upstream:\n  read_timeout: 1s\n"
            + "shutdown_grace: 1s\n"
            + "routes:\n"
            + "  - host: grpc.example.test\n    target: demo/echo-plain:50051\n    upstream: { protocol: h2c }\n";
        let mut yaml = edge_yaml_with("", true).replacen(
            "  tunnel: 127.0.0.1:0\n",
            &format!("  tunnel: 127.0.0.1:0\n{edge_extra}"),
            1,
        );
        // `CONFORMANCE_TUNNEL=tls`: sidecar to edge over TLS.
        let tunnel_ca = (Tunnel::from_env() == Tunnel::Tls).then(|| {
            yaml = conformance::with_tunnel_tls(&yaml);
            conformance::write_tunnel_certs(d)
        });
        std::fs::write(d.join("edge.yaml"), yaml).unwrap();
        let (edge, listening) = conformance::start_edge_listening(d);

        let ca = path(&service.ca);
        let tls_target = |server_name: &str| {
            format!("    protocol: tls\n    tls: {{ server_name: {server_name}, ca: \"{ca}\" }}\n")
        };
        let edge_url = match &tunnel_ca {
            None => format!("edge: http://{}\n", listening.tunnel),
            Some(ca) => format!(
                "edge: https://{}\ntls: {{ ca: \"{}\" }}\n",
                listening.tunnel,
                path(ca)
            ),
        };
        let sidecar_yaml = format!(
            "{edge_url}token: {TOKEN}\nenvironment: {ENV}\ntargets:\n\
             \x20 - {{ service: echo, port: 50051, address: {grpc_addr}, protocol: h2c }}\n\
             \x20 - {{ service: echo-plain, port: 50051, address: {grpc_addr} }}\n\
             \x20 - service: echotls\n    port: 50052\n    address: {grpc_tls_addr}\n{echotls}\
             \x20 - service: hellotls\n    port: 8443\n    address: {https_addr}\n{hellotls}\
             \x20 - service: badname\n    port: 8443\n    address: {https_addr}\n{badname}",
            echotls = tls_target("echo.internal"),
            hellotls = tls_target("echo.internal"),
            badname = tls_target("wrong.internal"),
        );
        std::fs::write(d.join("sidecar.yaml"), sidecar_yaml).unwrap();
        let sidecar = Proc::spawn(
            "sidecar",
            &["run", "--config", &path(&d.join("sidecar.yaml"))],
        );
        sidecar.wait_line("Forwarding", WAIT);
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        GrpcStack {
            http: local(listening.http_port),
            https: local(listening.https_port.unwrap()),
            dir,
            edge,
            grpc,
            _grpc_tls: grpc_tls,
            _https_upstream: https_upstream,
            _sidecar: sidecar,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A client over TLS (ALPN h2) naming `host`.
    async fn tls_client(&self, host: &str) -> EchoClient<Channel> {
        let authority = format!("{host}:{}", self.https.port());
        grpc::client(self.https, &authority, Some(&self.ca()))
            .await
            .unwrap()
    }

    /// A client over h2c (prior knowledge) naming `host`.
    async fn h2c_client(&self, host: &str) -> EchoClient<Channel> {
        let authority = format!("{host}:{}", self.http.port());
        grpc::client(self.http, &authority, None).await.unwrap()
    }

    /// curl over HTTPS to a preview host; returns (status line + headers + body).
    fn curl_https(&self, host: &str, path_and_query: &str) -> String {
        let port = self.https.port();
        let out = curl(&[
            "-i",
            "--cacert",
            &path(&self.ca()),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("https://{host}:{port}{path_and_query}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A bidirectional call: its sender and its replies.
async fn bidi(
    client: &mut EchoClient<Channel>,
) -> (
    tokio::sync::mpsc::Sender<EchoRequest>,
    tonic::Streaming<EchoReply>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, replies)
}

fn path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

fn echo(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

const ECHO: &str = "echo-50051-demo.preview.localhost";

#[tokio::test]
async fn unary_calls_over_tls_and_h2c_visitors() {
    let stack = GrpcStack::start();
    for mut client in [stack.tls_client(ECHO).await, stack.h2c_client(ECHO).await] {
        let reply = client.unary(echo("hi")).await.unwrap();
        assert_eq!(reply.metadata().get("x-served-by").unwrap(), "echo");
        assert!(reply.metadata().get("x-request-id").is_some());
        assert_eq!(reply.into_inner().message, "hi");
    }
}

#[tokio::test]
async fn every_call_shape_streams_through() {
    let stack = GrpcStack::start();
    let mut client = stack.tls_client(ECHO).await;

    let request = EchoRequest {
        message: "tick".into(),
        count: 5,
        ..Default::default()
    };
    let mut replies = client.server_stream(request).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        got.push(reply.message);
    }
    assert_eq!(got, ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]);

    let parts = futures::stream::iter(["a", "b", "c", "d"].map(echo));
    let reply = client.client_stream(parts).await.unwrap().into_inner();
    assert_eq!((reply.message.as_str(), reply.index), ("a,b,c,d", 4));

    // Bidirectional: each reply arrives before the next request is sent.
    let (tx, mut replies) = bidi(&mut client).await;
    for i in 0..3u32 {
        tx.send(echo(&format!("ping {i}"))).await.unwrap();
        let reply: EchoReply = replies.message().await.unwrap().unwrap();
        assert_eq!((reply.message, reply.index), (format!("ping {i}"), i));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

/// A call still open when a leaving edge's grace period ends gets a
/// status, UNAVAILABLE (which clients may retry), not a cut connection.
#[tokio::test]
async fn a_stream_open_at_the_end_of_the_grace_period_ends_with_unavailable() {
    let stack = GrpcStack::start();
    let mut client = stack.h2c_client(ECHO).await;
    let (tx, mut replies) = bidi(&mut client).await;
    tx.send(echo("before")).await.unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().message, "before");

    stack.edge.interrupt();
    stack.edge.wait_line("grace period over", WAIT);
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    drop(tx);
}

#[tokio::test]
async fn statuses_messages_and_trailers_arrive_intact() {
    let stack = GrpcStack::start();
    let mut client = stack.h2c_client(ECHO).await;
    let status = client
        .unary(EchoRequest {
            message: "nothing here".into(),
            fail_code: Code::NotFound as u32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "failed on purpose: nothing here");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "kept");

    // Replies first, then the status in the trailers.
    let mut replies = client
        .server_stream(EchoRequest {
            message: "m".into(),
            count: 3,
            fail_code: Code::FailedPrecondition as u32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(replies.message().await.unwrap().unwrap().index, i);
    }
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.metadata().get("x-detail").unwrap(), "kept");
}

#[tokio::test]
async fn deadlines_reach_the_service_and_cancel_the_call() {
    let stack = GrpcStack::start();
    let mut client = stack.tls_client(ECHO).await;

    let mut quick = Request::new(echo("quick"));
    quick.set_timeout(Duration::from_secs(10));
    let reply = client.unary(quick).await.unwrap().into_inner();
    assert!(
        !reply.grpc_timeout.is_empty(),
        "the service saw no grpc-timeout"
    );

    let mut slow = Request::new(EchoRequest {
        message: "slow".into(),
        delay_ms: 5_000,
        ..Default::default()
    });
    slow.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = client.unary(slow).await.unwrap_err();
    // tonic reports its own expired deadline as CANCELLED, a server's as
    // DEADLINE_EXCEEDED: either way, long before the 5 s answer.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The client's reset travelled through edge, tunnel and sidecar.
    stack.grpc.wait_line("cancelled 1", WAIT);
    // A cancelled call is ordinary: one request line, no error or
    // warning, and no colour codes in a log that is not a terminal.
    let lines = stack.edge.wait_lines("/Unary", 2, WAIT);
    assert!(lines[1].contains(" INFO "), "{lines:?}");
    let log = stack.edge.output();
    assert!(!log.contains(" ERROR ") && !log.contains(" WARN "), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");
}

#[tokio::test]
async fn quiet_streams_outlive_the_read_timeout() {
    let stack = GrpcStack::start();
    let mut client = stack.h2c_client(ECHO).await;
    // Replies 1.5 s apart; upstream.read_timeout is 1 s.
    let mut replies = client
        .server_stream(EchoRequest {
            message: "slow".into(),
            count: 2,
            delay_ms: 1_500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().index, 0);
    assert_eq!(replies.message().await.unwrap().unwrap().index, 1);
    assert!(replies.message().await.unwrap().is_none());

    // A plain request still gets the read timeout.
    let text = stack.curl_https("hellotls-8443-demo.preview.localhost", "/slow?ms=2500");
    assert!(text.starts_with("HTTP/2 504"), "{text}");
}

#[test]
fn https_upstreams_are_verified_against_their_ca() {
    let stack = GrpcStack::start();
    let text = stack.curl_https("hellotls-8443-demo.preview.localhost", "/");
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("Hello from the sample service"), "{text}");
    let headers = stack.curl_https("hellotls-8443-demo.preview.localhost", "/headers");
    assert!(headers.contains("x-forwarded-proto"), "{headers}");

    // The service's certificate does not name wrong.internal.
    let text = stack.curl_https("badname-8443-demo.preview.localhost", "/");
    assert!(text.starts_with("HTTP/2 502"), "{text}");
    assert!(text.contains("UPSTREAM_"), "{text}");
}

#[tokio::test]
async fn grpc_over_a_tls_upstream() {
    let stack = GrpcStack::start();
    let mut client = stack
        .tls_client("echotls-50052-demo.preview.localhost")
        .await;
    let reply = client.unary(echo("end to end")).await.unwrap().into_inner();
    assert_eq!(reply.message, "end to end");
}

#[tokio::test]
async fn a_route_can_set_the_upstream_protocol() {
    let stack = GrpcStack::start();
    // The sidecar registered echo-plain as HTTP/1.1: gRPC cannot work...
    let mut client = stack
        .tls_client("echo-plain-50051-demo.preview.localhost")
        .await;
    let status = client.unary(echo("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // ...until a custom-domain rule says `upstream: { protocol: h2c }`.
    let mut client = stack.tls_client("grpc.example.test").await;
    let reply = client.unary(echo("via rule")).await.unwrap().into_inner();
    assert_eq!(reply.message, "via rule");
}

#[tokio::test]
async fn edge_errors_are_grpc_statuses() {
    let stack = GrpcStack::start();
    let mut client = stack.tls_client("nope-50051-demo.preview.localhost").await;
    let status = client.unary(echo("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("ROUTE_NOT_FOUND"), "{status:?}");
    assert!(status.metadata().get("x-request-id").is_some());

    let mut client = stack
        .h2c_client("echo-50051-elsewhere.preview.localhost")
        .await;
    let status = client.unary(echo("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // Logged once the response is out: waited for, not raced.
    stack
        .edge
        .wait_line("ROUTE_NOT_FOUND", std::time::Duration::from_secs(10));
}

#[test]
fn curl_speaks_h2c_with_prior_knowledge_where_enabled() {
    let stack = GrpcStack::start();
    let host = "hellotls-8443-demo.preview.localhost";
    let h2c = curl(&[
        "-i",
        "--http2-prior-knowledge",
        "-H",
        &format!("Host: {host}"),
        &format!("http://{}/", stack.http),
    ]);
    let text = String::from_utf8_lossy(&h2c.stdout);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    // HTTP/1.1 keeps working on the same listener.
    let h1 = curl(&[
        "-i",
        "-H",
        &format!("Host: {host}"),
        &format!("http://{}/", stack.http),
    ]);
    assert!(String::from_utf8_lossy(&h1.stdout).starts_with("HTTP/1.1 200"));

    // Without `visitors.h2c`, prior knowledge is not spoken.
    let plain = conformance::Stack::start();
    let out = curl(&[
        "-i",
        "--http2-prior-knowledge",
        &plain.url("hello-8080", "/"),
    ]);
    assert!(!String::from_utf8_lossy(&out.stdout).starts_with("HTTP/2 200"));
}
