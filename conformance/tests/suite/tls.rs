//! TLS for visitors through the real binary: SNI, HTTP/2 via ALPN,
//! certificate reload, and bad certificates.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use conformance::{bin, curl, edge_yaml_with, Proc, ENV, TOKEN};
use test_support::certs;

struct TlsStack {
    dir: tempfile::TempDir,
    edge: Proc,
    _upstream: Proc,
    sidecar: Proc,
    https_port: u16,
    http_port: u16,
}

const TLS: &str = "tls:\n  certificates:\n    - { cert: preview-cert.pem, key: preview-key.pem }\n    - { cert: shop-cert.pem, key: shop-key.pem }\n";
const ROUTE: &str = "routes:\n  - { host: shop.example.test, target: demo/hello:8080 }\n";

fn start(tls_extra: &str) -> TlsStack {
    let dir = tempfile::tempdir().unwrap();
    certs::write(
        dir.path(),
        "preview-",
        &["*.preview.localhost".into()],
        false,
    )
    .unwrap();
    certs::write(dir.path(), "shop-", &["shop.example.test".into()], false).unwrap();
    std::fs::write(
        dir.path().join("edge.yaml"),
        edge_yaml_with(&format!("{TLS}{tls_extra}{ROUTE}"), true),
    )
    .unwrap();
    let (edge, listening) = conformance::start_edge_listening(dir.path());
    let https_port = listening.https_port.expect("an HTTPS listener");
    let http_port = listening.http_port;
    let upstream = Proc::spawn("sample-upstream", &["--listen", "127.0.0.1:0"]);
    let addr =
        upstream.wait_line("listening ", Duration::from_secs(10))["listening ".len()..].to_string();
    let sidecar = Proc::spawn(
        "sidecar",
        &[
            "expose",
            &addr,
            "--edge",
            &format!("http://{}", listening.tunnel),
            "--token",
            TOKEN,
            "--name",
            "hello",
            "--port",
            "8080",
            "--env",
            ENV,
        ],
    );
    sidecar.wait_line("Forwarding https://", Duration::from_secs(10));
    TlsStack {
        dir,
        edge,
        _upstream: upstream,
        sidecar,
        https_port,
        http_port,
    }
}

impl TlsStack {
    fn ca(&self) -> String {
        self.dir.path().join("ca.pem").to_str().unwrap().to_string()
    }

    /// curl to `https://<host>:<port><path>` with the local CA; returns (exit code, stdout).
    fn curl(&self, host: &str, path: &str, extra: &[&str]) -> (i32, String) {
        let p = self.https_port;
        let resolve = format!("{host}:{p}:127.0.0.1");
        let url = format!("https://{host}:{p}{path}");
        let ca = self.ca();
        let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = curl(&args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

const PREVIEW: &str = "hello-8080-demo.preview.localhost";

#[test]
fn printed_urls_are_https_on_the_https_port_when_the_edge_serves_https() {
    // No preview.public_url: with listen.https the default is
    // https://{host}:<bound HTTPS port>, not the plain HTTP port.
    let stack = start("");
    let line = stack
        .sidecar
        .wait_line("Forwarding ", Duration::from_secs(10));
    let url = format!("https://{PREVIEW}:{}/", stack.https_port);
    assert_eq!(line.trim(), format!("Forwarding {url}"));
    let (rc, body) = stack.curl(PREVIEW, "/", &[]);
    assert_eq!(rc, 0, "{body}");
    assert!(body.contains("Hello from the sample service"), "{body}");
}

#[test]
fn https_with_sni_and_http2() {
    let stack = start("");
    let (rc, body) = stack.curl(PREVIEW, "/headers", &[]);
    assert_eq!(rc, 0, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https", "{body}");
    // The custom domain's own certificate is chosen by SNI (curl verifies the name).
    let (rc, body) = stack.curl("shop.example.test", "/", &[]);
    assert_eq!(rc, 0, "{body}");
    assert!(body.contains("Hello from the sample service"));
    // ALPN picks HTTP/2.
    let (rc, version) = stack.curl(
        PREVIEW,
        "/",
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}"],
    );
    assert_eq!((rc, version.as_str()), (0, "2"));
    let (rc, version) = stack.curl(
        PREVIEW,
        "/",
        &["--http1.1", "-o", "/dev/null", "-w", "%{http_version}"],
    );
    assert_eq!((rc, version.as_str()), (0, "1.1"));
    // The name each handshake asked for is known to the request, over
    // HTTP/2 and HTTP/1.1 alike.
    let timeout = std::time::Duration::from_secs(5);
    stack.edge.wait_line("sni=\"shop.example.test\"", timeout);
    for http in ["HTTP/2.0", "HTTP/1.1"] {
        stack
            .edge
            .wait_line(&format!("http={http} sni=\"{PREVIEW}\""), timeout);
    }
}

#[test]
fn an_http2_visitor_who_leaves_early_ends_the_request() {
    let stack = start("");
    let (rc, _) = stack.curl(PREVIEW, "/slow?ms=800", &["--http2", "--max-time", "0.2"]);
    assert_eq!(rc, 28, "curl should have timed out");
    // The edge gives up when the visitor's connection goes, not when the
    // answer comes (at 800 ms).
    stack
        .edge
        .assert_request_failed_within("/slow", Duration::from_millis(600));
    let (rc, body) = stack.curl(PREVIEW, "/", &["--http2"]);
    assert_eq!(rc, 0, "{body}");
    assert!(body.contains("Hello from the sample service"), "{body}");
}

#[tokio::test]
async fn websocket_over_tls() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stack = start("");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], stack.https_port));
    // WebSocket upgrades are HTTP/1.1: offer only that in ALPN, as browsers do.
    let tls = test_support::tls::connect(addr, PREVIEW, Path::new(&stack.ca()), &["http/1.1"])
        .await
        .unwrap();
    let url = format!("wss://{PREVIEW}:{}/ws", stack.https_port);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("welcome"));
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    ws.close(None).await.unwrap();
}

#[test]
fn unknown_names_get_the_default_certificate_or_no_handshake() {
    let stack = start("");
    // Default certificate presented: curl refuses the name (60), -k goes through.
    let (rc, _) = stack.curl("unknown.example.test", "/", &[]);
    assert_eq!(rc, 60);
    let (rc, _) = stack.curl("unknown.example.test", "/", &["-k", "-o", "/dev/null"]);
    assert_eq!(rc, 0);

    let refusing = start("  unknown_names: refuse\n");
    let (rc, _) = refusing.curl("unknown.example.test", "/", &["-k"]);
    assert_eq!(rc, 35, "handshake refused");
    assert_eq!(refusing.curl(PREVIEW, "/", &["-o", "/dev/null"]).0, 0);
}

#[test]
fn plaintext_on_the_tls_port_is_refused_and_harmless() {
    let mut stack = start("");
    let out = curl(&[&format!("http://127.0.0.1:{}/", stack.https_port)]);
    assert!(!out.status.success());
    assert!(stack.edge.is_running());
    assert_eq!(stack.curl(PREVIEW, "/", &["-o", "/dev/null"]).0, 0);
}

#[test]
fn certificates_reload_when_their_files_change() {
    let stack = start("");
    assert_eq!(
        stack.curl("new.example.test", "/", &["-o", "/dev/null"]).0,
        60
    );
    // cert-manager style: the files are replaced in place.
    certs::write(
        stack.dir.path(),
        "shop-",
        &["shop.example.test".into(), "new.example.test".into()],
        false,
    )
    .unwrap();
    // The edge looks at the files once a second; it logs a reload only
    // once certificate and key load together.
    stack
        .edge
        .wait_line("config reloaded", Duration::from_secs(10));
    // 404 (no route for new.example.test) means the handshake now succeeds.
    assert_eq!(
        stack.curl("new.example.test", "/", &["-o", "/dev/null"]).0,
        0,
        "certificate not reloaded:\n{}",
        stack.edge.output()
    );
}

fn check_config(dir: &Path) -> (bool, String) {
    let out = Command::new(bin("edge-proxy"))
        .args(["check-config", dir.join("edge.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_certificates_are_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    certs::write(dir.path(), "a-", &["a.example.test".into()], false).unwrap();
    certs::write(dir.path(), "b-", &["b.example.test".into()], false).unwrap();
    let write = |tls: &str| {
        std::fs::write(dir.path().join("edge.yaml"), edge_yaml_with(tls, true)).unwrap()
    };

    write("tls:\n  certificates:\n    - { cert: missing.pem, key: a-key.pem }\n");
    let (ok, err) = check_config(dir.path());
    assert!(
        !ok && err.contains("tls.certificates[0]") && err.contains("missing.pem"),
        "{err}"
    );

    write("tls:\n  certificates:\n    - { cert: a-cert.pem, key: b-key.pem }\n");
    let (ok, err) = check_config(dir.path());
    assert!(!ok && err.contains("does not belong"), "{err}");

    write("listen_extra: 1\n");
    let (ok, _) = check_config(dir.path());
    assert!(!ok);

    // HTTPS without certificates.
    std::fs::write(dir.path().join("edge.yaml"), edge_yaml_with("", true)).unwrap();
    let (ok, err) = check_config(dir.path());
    assert!(!ok && err.contains("listen.https"), "{err}");

    // Expired: a warning at load, and the edge still starts.
    certs::write(dir.path(), "old-", &["old.example.test".into()], true).unwrap();
    write("tls:\n  certificates:\n    - { cert: old-cert.pem, key: old-key.pem }\n");
    let (edge, _, _) = conformance::start_edge_file(dir.path());
    edge.wait_line("has expired", Duration::from_secs(5));
}

fn plain(port: u16, host: &str, path: &str) -> String {
    let url = format!("http://{host}:{port}{path}");
    let resolve = format!("{host}:{port}:127.0.0.1");
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--resolve",
        &resolve,
        &url,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn plain_http_redirects_to_https_except_acme_challenges() {
    let stack = start("");
    let got = plain(stack.http_port, PREVIEW, "/x?y=1");
    assert_eq!(
        got,
        format!("308 https://{PREVIEW}:{}/x?y=1", stack.https_port)
    );
    // ACME HTTP-01 stays plain: it reaches the service (which has no such file).
    let got = plain(
        stack.http_port,
        PREVIEW,
        "/.well-known/acme-challenge/token",
    );
    assert_eq!(got, "404 ");
}

#[test]
fn hsts_on_https_responses_for_configured_hosts() {
    let stack = start(
        "  hsts:\n    - { host: '*.preview.localhost', max_age: 1d, include_subdomains: true }\n",
    );
    let (rc, headers) = stack.curl(PREVIEW, "/", &["-s", "-D", "-", "-o", "/dev/null"]);
    assert_eq!(rc, 0);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=86400; includesubdomains"),
        "{headers}"
    );
    let (_, headers) = stack.curl(
        "shop.example.test",
        "/",
        &["-s", "-D", "-", "-o", "/dev/null"],
    );
    assert!(
        !headers
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{headers}"
    );
}

/// `openssl s_client` with SNI `name`: (handshake succeeded, subject of the
/// certificate presented, negotiated ALPN).
fn s_client(port: u16, name: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name, "-alpn", "h2,http/1.1"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let handshake = text.contains("Verify return code") && !text.contains("Cipher is (NONE)");
    (handshake, field("subject="), field("ALPN protocol:"))
}

#[test]
fn openssl_sees_the_certificate_sni_asks_for() {
    let stack = start("");
    let (ok, subject, alpn) = s_client(stack.https_port, PREVIEW, &[]);
    assert!(ok && subject.contains("*.preview.localhost"), "{subject}");
    assert_eq!(alpn, "h2");
    let (ok, subject, _) = s_client(stack.https_port, "shop.example.test", &[]);
    assert!(ok && subject.contains("shop.example.test"), "{subject}");
    // TLS 1.1 is refused; 1.2 and 1.3 are spoken.
    assert!(!s_client(stack.https_port, PREVIEW, &["-tls1_1"]).0);
    assert!(s_client(stack.https_port, PREVIEW, &["-tls1_2"]).0);
    // Unknown names: the default (first) certificate, or no handshake.
    let (ok, subject, _) = s_client(stack.https_port, "unknown.example.test", &[]);
    assert!(ok && subject.contains("*.preview.localhost"), "{subject}");
    let refusing = start("  unknown_names: refuse\n");
    let (ok, subject, _) = s_client(refusing.https_port, "unknown.example.test", &[]);
    assert!(!ok && subject.is_empty(), "{subject}");
}
