//! The tunnel between sidecar and edge over TLS, black-box: the main flows
//! over it, mismatches and refusals explained, mutual TLS per cluster,
//! token rotation and hygiene, and what an eavesdropper on the wire sees.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use conformance::{
    bin, curl, curl_with_stdin, edge_yaml, http_status, sh, start_edge_listening, with_tunnel_tls,
    write_tunnel_certs, Proc, Stack, Tunnel, ENV, TOKEN,
};
use futures::{SinkExt, StreamExt};
use test_support::harness::token_hash;
use test_support::{certs, pattern, FaultProxy};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);
const GIB: u64 = 1 << 30;

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Starts a sidecar from `yaml` (written to `dir/name.yaml`) with one session.
fn sidecar(dir: &Path, name: &str, yaml: &str) -> Proc {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    Proc::spawn("sidecar", &["run", "--config", &path(&file)])
}

/// A sidecar YAML for `edge` (a URL) with `extra` lines, one session and a
/// fast backoff.
fn sidecar_yaml(edge: &str, token: &str, extra: &str) -> String {
    format!(
        "edge: {edge}\ntoken: {token}\nenvironment: {ENV}\nconnections: 1\nreconnect: {{ min: 100ms, max: 1s }}\n{extra}targets:\n  - {{ service: hello, port: 8080, address: 127.0.0.1:9 }}\n"
    )
}

/// `retry_in=` values the sidecar logged, in order.
fn retry_delays(output: &str) -> Vec<Duration> {
    output
        .lines()
        .filter_map(|l| l.split("retry_in=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|d| {
            if let Some(ms) = d.strip_suffix("ms") {
                Duration::from_secs_f64(ms.parse::<f64>().unwrap() / 1e3)
            } else if let Some(us) = d.strip_suffix("µs") {
                Duration::from_secs_f64(us.parse::<f64>().unwrap() / 1e6)
            } else {
                Duration::from_secs_f64(d.trim_end_matches('s').parse().unwrap())
            }
        })
        .collect()
}

/// Waits for `needle` three times in the sidecar's output and checks the
/// delays between attempts grew (backoff, not a tight loop).
fn assert_refused_with_backoff(sidecar: &Proc, needle: &str) {
    sidecar.wait_lines(needle, 3, WAIT);
    let delays = retry_delays(&sidecar.output());
    assert!(
        delays.len() >= 3 && delays[2] > delays[0],
        "no backoff: {delays:?}\n{}",
        sidecar.output()
    );
    assert!(!sidecar.output().contains("tunnel up"));
}

#[tokio::test]
async fn http_websocket_and_a_gib_run_over_the_tls_tunnel() {
    let stack = Stack::start_tunnel(Tunnel::Tls, "", &[], &[]);
    let sidecar = stack.sidecar.as_ref().unwrap().output();
    assert!(!sidecar.contains("WITHOUT TLS"), "{sidecar}");
    // HTTP/1.1
    let out = curl(&["-i", &stack.url("hello-8080", "/")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // WebSocket
    let url = stack.url("hello-8080", "/ws").replace("http://", "ws://");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("welcome"));
    for i in 0..20 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    // 1 GiB down and up, checksummed.
    let digest = sh(&format!(
        "curl -sS --max-time 300 '{}' | sha256sum",
        stack.url("hello-8080", &format!("/bytes/{GIB}"))
    ));
    assert_eq!(
        digest.split_whitespace().next().unwrap(),
        pattern::sha256(GIB)
    );
    let out = curl_with_stdin(
        &["-T", "-", &stack.url("hello-8080", "/sha256")],
        pattern::chunks(GIB),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sha256"], pattern::sha256(GIB).as_str());
}

#[test]
fn plaintext_against_tls_and_tls_against_plaintext_are_explained_and_backed_off() {
    let tls_stack = Stack::start_tunnel(Tunnel::Tls, "", &[], &[]);
    let d = tls_stack.dir.path();
    let plain = sidecar(
        d,
        "plain",
        &sidecar_yaml(&format!("http://{}", tls_stack.tunnel_addr), TOKEN, ""),
    );
    assert_refused_with_backoff(
        &plain,
        "the edge's tunnel port speaks TLS, and this sidecar spoke plaintext",
    );
    tls_stack
        .edge
        .wait_line("the client did not speak TLS", WAIT);

    let plain_stack = Stack::start_tunnel(Tunnel::Plain, "", &[], &[]);
    let ca = path(&d.join("tunnel-ca/ca.pem"));
    let tls = sidecar(
        d,
        "tls",
        &sidecar_yaml(
            &format!("https://{}", plain_stack.tunnel_addr),
            TOKEN,
            &format!("tls: {{ ca: {ca} }}\n"),
        ),
    );
    assert_refused_with_backoff(&tls, "the edge did not answer with TLS");
}

#[test]
fn wrong_ca_wrong_name_expired_certificate_and_wrong_pin_are_refused() {
    let stack = Stack::start_tunnel(Tunnel::Tls, "", &[], &[]);
    let d = stack.dir.path();
    let edge = format!("https://{}", stack.tunnel_addr);
    let ca = path(&d.join("tunnel-ca/ca.pem"));
    let other_ca = certs::write(&d.join("other-ca"), "", &["x.test".into()], false)
        .unwrap()
        .ca;
    let pin = String::from_utf8(
        Command::new(bin("edge-proxy"))
            .args(["spki-sha256", &path(&d.join("tunnel-cert.pem"))])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert_eq!(pin.len(), 64, "{pin}");
    let cases = [
        (
            format!("tls: {{ ca: {} }}\n", path(&other_ca)),
            "not signed by a CA this sidecar trusts",
        ),
        (
            format!("tls: {{ ca: {ca}, server_name: wrong.example }}\n"),
            "not valid for \"wrong.example\"",
        ),
        (
            format!("tls: {{ pin_sha256: [\"{}\"] }}\n", "00".repeat(32)),
            "does not match tls.pin_sha256",
        ),
        (
            format!(
                "tls: {{ ca: {ca}, pin_sha256: [\"{}\"] }}\n",
                "11".repeat(32)
            ),
            "does not match tls.pin_sha256",
        ),
    ];
    let refused: Vec<Proc> = cases
        .iter()
        .enumerate()
        .map(|(i, (tls, _))| sidecar(d, &format!("case{i}"), &sidecar_yaml(&edge, TOKEN, tls)))
        .collect();
    for (proc, (_, needle)) in refused.iter().zip(&cases) {
        proc.wait_line(needle, WAIT);
    }
    // The right pin alone (no CA) is enough; so are pin and CA together.
    for (i, tls) in [
        format!("tls: {{ pin_sha256: [\"{pin}\"] }}\n"),
        format!("tls: {{ ca: {ca}, pin_sha256: [\"{pin}\"] }}\n"),
    ]
    .iter()
    .enumerate()
    {
        sidecar(d, &format!("pinned{i}"), &sidecar_yaml(&edge, TOKEN, tls))
            .wait_line("Forwarding", WAIT);
    }

    // An edge whose tunnel certificate has expired (same CA).
    let expired = tempfile::tempdir().unwrap();
    let e = expired.path();
    std::fs::copy(d.join("tunnel-ca/ca.pem"), e.join("ca.pem")).unwrap();
    std::fs::copy(d.join("tunnel-ca/ca.key"), e.join("ca.key")).unwrap();
    let files = certs::write(e, "", &["localhost".into(), "127.0.0.1".into()], true).unwrap();
    std::fs::copy(&files.cert, e.join("tunnel-cert.pem")).unwrap();
    std::fs::copy(&files.key, e.join("tunnel-key.pem")).unwrap();
    std::fs::write(e.join("edge.yaml"), with_tunnel_tls(&edge_yaml(""))).unwrap();
    let (expired_edge, listening) = start_edge_listening(e);
    expired_edge.wait_line("has expired", WAIT);
    let late = sidecar(
        d,
        "late",
        &sidecar_yaml(
            &format!("https://{}", listening.tunnel),
            TOKEN,
            &format!("tls: {{ ca: {ca} }}\n"),
        ),
    );
    late.wait_line("the edge's certificate has expired", WAIT);
}

#[test]
fn mutual_tls_needs_the_clusters_own_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = path(&write_tunnel_certs(d));
    let ours = certs::write(&d.join("ours"), "client-", &["sidecar.demo".into()], false).unwrap();
    let expired =
        certs::write(&d.join("ours"), "expired-", &["sidecar.demo".into()], true).unwrap();
    let theirs = certs::write(
        &d.join("theirs"),
        "client-",
        &["sidecar.second".into()],
        false,
    )
    .unwrap();
    let other_hash = token_hash("second-token");
    let yaml = edge_yaml("").replace(
        &format!("    environments: [{ENV}]\n"),
        &format!(
            "    environments: [{ENV}]\n    client_ca: ours/ca.pem\n  - name: second\n    token_sha256: \"{other_hash}\"\n    environments: [second]\n    client_ca: theirs/ca.pem\n"
        ),
    );
    std::fs::write(d.join("edge.yaml"), with_tunnel_tls(&yaml)).unwrap();
    let (_edge, listening) = start_edge_listening(d);
    let edge = format!("https://{}", listening.tunnel);
    let client = |files: &certs::CertFiles| {
        format!(
            "tls: {{ ca: {ca}, client_cert: {}, client_key: {} }}\n",
            path(&files.cert),
            path(&files.key)
        )
    };
    let none = sidecar(
        d,
        "none",
        &sidecar_yaml(&edge, TOKEN, &format!("tls: {{ ca: {ca} }}\n")),
    );
    let foreign = sidecar(d, "foreign", &sidecar_yaml(&edge, TOKEN, &client(&theirs)));
    let stale = sidecar(d, "stale", &sidecar_yaml(&edge, TOKEN, &client(&expired)));
    let good = sidecar(d, "good", &sidecar_yaml(&edge, TOKEN, &client(&ours)));
    none.wait_line("requires a client certificate", WAIT);
    foreign.wait_line("is not one of cluster \"conformance\"'s", WAIT);
    stale.wait_line("client certificate (CertificateExpired)", WAIT);
    good.wait_line("Forwarding", WAIT);
}

/// Sends a request whose body carries `marker` through a stack whose
/// sidecar dials the edge through a recording proxy; returns the bytes
/// seen on the wire.
async fn wire_bytes(tunnel: Tunnel, marker: &str) -> Vec<u8> {
    let mut stack = Stack::start_tunnel(tunnel, "", &[], &[]);
    let yaml = std::fs::read_to_string(stack.dir.path().join("edge.yaml")).unwrap();
    let hash = token_hash(TOKEN);
    stack.write_edge_yaml(&yaml.replace(
        &format!("\"{hash}\""),
        &format!("[\"{hash}\", \"{}\"]", token_hash(WIRE_TOKEN)),
    ));
    stack.edge.wait_line("config reloaded", WAIT);
    stack.sidecar = None; // the harness's own sidecar dials the edge directly
    let proxy = FaultProxy::start(stack.tunnel_addr.parse().unwrap()).await;
    proxy.record();
    stack.tunnel_addr = proxy.addr.to_string();
    let file = stack.sidecar_yaml();
    let mut yaml = std::fs::read_to_string(&file).unwrap().replace(
        &format!("token: {TOKEN}"),
        &format!("token: \"{WIRE_TOKEN}\""),
    );
    if tunnel == Tunnel::Plain {
        yaml += "insecure_plaintext: true\n";
    }
    std::fs::write(&file, yaml).unwrap();
    let sidecar = Proc::spawn("sidecar", &["run", "--config", &path(&file)]);
    sidecar.wait_line("Forwarding", WAIT);
    let url = stack.url("hello-8080", "/sha256");
    let body = format!("{{\"secret\":\"{marker}\"}}");
    let out = tokio::task::spawn_blocking(move || curl(&["--data-binary", &body, &url]))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sha256"),
        "{out:?}"
    );
    proxy.recorded()
}

/// The token of the wire test: few letters, so the test can spell out
/// how HPACK sends `authorization: Bearer <token>` (Huffman-coded).
const WIRE_TOKEN: &str = "0110100110010110";

/// `value` Huffman-coded as HPACK does (RFC 7541 appendix B), for the few
/// characters `Bearer ` and [`WIRE_TOKEN`] use; padded with ones.
fn hpack_huffman(value: &str) -> Vec<u8> {
    let (mut bits, mut count, mut out) = (0u64, 0u32, Vec::new());
    for c in value.chars() {
        let (code, len) = match c {
            ' ' => (0x14, 6),
            '0' => (0x0, 5),
            '1' => (0x1, 5),
            'B' => (0x5d, 7),
            'a' => (0x3, 5),
            'e' => (0x5, 5),
            'r' => (0x2c, 6),
            other => panic!("no code for {other:?} here"),
        };
        bits = (bits << len) | code;
        count += len;
        while count >= 8 {
            out.push((bits >> (count - 8)) as u8);
            count -= 8;
        }
    }
    if count > 0 {
        out.push(((bits << (8 - count)) | ((1 << (8 - count)) - 1)) as u8);
    }
    out
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_token_nor_body_crosses_the_wire_in_clear_with_tls() {
    let marker = "body-marker-7f3a9c";
    let tls = wire_bytes(Tunnel::Tls, marker).await;
    assert!(tls.len() > 1000, "recorded {} bytes", tls.len());
    let token_on_the_wire = hpack_huffman(&format!("Bearer {WIRE_TOKEN}"));
    assert!(
        !contains(&tls, WIRE_TOKEN),
        "the token crossed the wire in clear"
    );
    assert!(
        !contains_bytes(&tls, &token_on_the_wire),
        "the token crossed the wire in clear (HPACK-coded)"
    );
    assert!(
        !contains(&tls, marker),
        "the body crossed the wire in clear"
    );
    // The same run without TLS shows both: the check can fail.
    let plain = wire_bytes(Tunnel::Plain, marker).await;
    assert!(contains_bytes(&plain, &token_on_the_wire));
    assert!(contains(&plain, marker));
}

#[test]
fn a_rotated_token_keeps_serving_and_the_old_ones_sessions_close() {
    let stack = Stack::start_tunnel(Tunnel::Tls, "", &[], &[]);
    let new_token = "rotated-token-2";
    let (old_hash, new_hash) = (token_hash(TOKEN), token_hash(new_token));
    let yaml = std::fs::read_to_string(stack.dir.path().join("edge.yaml")).unwrap();
    let both = yaml.replace(
        &format!("\"{old_hash}\""),
        &format!("[\"{old_hash}\", \"{new_hash}\"]"),
    );
    stack.write_edge_yaml(&both);
    stack.edge.wait_line("config reloaded", WAIT);
    let yaml = std::fs::read_to_string(stack.sidecar_yaml())
        .unwrap()
        .replace(&format!("token: {TOKEN}"), "token_env: ROTATED_TOKEN");
    std::fs::write(stack.dir.path().join("new.yaml"), yaml).unwrap();
    let moved = Proc::spawn_env(
        "sidecar",
        &["run", "--config", &path(&stack.dir.path().join("new.yaml"))],
        &[("ROTATED_TOKEN", new_token)],
    );
    moved.wait_line("Forwarding", WAIT);
    stack.write_edge_yaml(&yaml_without(&both, &old_hash));
    stack.edge.wait_line("token revoked; closing tunnel", WAIT);
    let old = stack.sidecar.as_ref().unwrap();
    old.wait_line("does not know this sidecar token", WAIT);
    for _ in 0..5 {
        assert_eq!(http_status(&[&stack.url("hello-8080", "/")]), "200");
    }
    assert!(!moved.output().contains(new_token));
    assert!(!stack.edge.output().contains(&new_hash));
}

fn yaml_without(yaml: &str, hash: &str) -> String {
    yaml.replace(&format!("\"{hash}\", "), "")
}

#[test]
fn hash_token_reads_stdin_or_a_file_never_argv() {
    let expected = token_hash(TOKEN);
    let mut child = Command::new(bin("edge-proxy"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{TOKEN}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let out = Command::new(bin("edge-proxy"))
        .args(["hash-token", "--file", &path(&file)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);

    let out = Command::new(bin("edge-proxy"))
        .args(["hash-token", TOKEN])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin") && !err.contains(TOKEN), "{err}");
}

#[test]
fn check_config_and_errors_never_print_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_marker = "SECRETKEYMATERIAL";
    let bad_key = d.join("bad.key");
    std::fs::write(
        &bad_key,
        format!("-----BEGIN PRIVATE KEY-----\n{key_marker}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    write_tunnel_certs(d);
    // The edge: a duplicated hash, a bad key; the sidecar: a bad key.
    let hash = token_hash(TOKEN);
    let yaml =
        edge_yaml("tunnel:\n  tls:\n    certificates: [{ cert: tunnel-cert.pem, key: bad.key }]\n")
            .replace(&format!("\"{hash}\""), &format!("[\"{hash}\", \"{hash}\"]"));
    std::fs::write(d.join("edge.yaml"), &yaml).unwrap();
    let out = Command::new(bin("edge-proxy"))
        .args(["check-config", &path(&d.join("edge.yaml"))])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("token_sha256[1]") && text.contains("tunnel.tls.certificates[0]"),
        "{text}"
    );
    for secret in [hash.as_str(), key_marker] {
        assert!(!text.contains(secret), "{text}");
    }
    std::fs::write(
        d.join("sidecar.yaml"),
        sidecar_yaml(
            "https://127.0.0.1:7000",
            TOKEN,
            &format!(
                "tls: {{ client_cert: {}, client_key: {} }}\nconnections: 0\n",
                path(&d.join("tunnel-cert.pem")),
                path(&bad_key)
            ),
        )
        .replace("connections: 1\n", ""),
    )
    .unwrap();
    let out = Command::new(bin("sidecar"))
        .args(["check-config", &path(&d.join("sidecar.yaml"))])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("tls.client_key"),
        "{text}"
    );
    for secret in [TOKEN, key_marker] {
        assert!(!text.contains(secret), "{text}");
    }
}

/// One Control RPC with a token the edge does not know, on `h2`; `Ok` with
/// its gRPC status once answered, `Err` if the connection went away first.
async fn wrong_token_control(
    mut h2: h2::client::SendRequest<bytes::Bytes>,
) -> Result<String, h2::Error> {
    let request = http::Request::post("http://localhost/tunnel.v1.Tunnel/Control")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", "Bearer not-a-token-of-this-edge")
        .body(())
        .unwrap();
    h2 = h2.ready().await?;
    let (response, _send) = h2.send_request(request, false)?;
    let response = response.await?;
    Ok(response
        .headers()
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_string())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_answered_later_and_later_then_locked_out_and_summarized() {
    let stack = Stack::start_tunnel(Tunnel::Plain, "", &[], &[]);
    let log_before = stack.edge.output().lines().count();

    // One at a time: five answered at once (UNAUTHENTICATED, 16), then
    // each answer waits, 250 ms and doubling.
    let tcp = tokio::net::TcpStream::connect(&stack.tunnel_addr)
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    for attempt in 1..=7u32 {
        let started = std::time::Instant::now();
        assert_eq!(wrong_token_control(h2.clone()).await.unwrap(), "16");
        let least = match attempt {
            1..=5 => Duration::ZERO,
            n => Duration::from_millis(250 << (n - 6)),
        };
        assert!(
            started.elapsed() >= least,
            "attempt {attempt} answered in {:?}",
            started.elapsed()
        );
    }
    // Then 200 at once, as a brute-forcer pipelines them: the twentieth
    // failure locks the source out and closes the connection, with the
    // waiting attempts on it, before any of them is answered.
    let attempts: Vec<_> = (0..200)
        .map(|_| tokio::spawn(wrong_token_control(h2.clone())))
        .collect();
    let mut answered = 0;
    for attempt in attempts {
        if attempt.await.unwrap().is_ok() {
            answered += 1;
        }
    }
    assert_eq!(answered, 0);
    let _ = tokio::time::timeout(WAIT, connection)
        .await
        .expect("the edge closed the connection");

    // The source is locked out: a new connection is closed before HTTP/2.
    let tcp = tokio::net::TcpStream::connect(&stack.tunnel_addr)
        .await
        .unwrap();
    let refused = async {
        let (h2, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(connection);
        wrong_token_control(h2).await
    };
    assert!(tokio::time::timeout(WAIT, refused).await.unwrap().is_err());

    // Visitors are served throughout: the sidecar's connections are older
    // than the lockout, and its data streams carry a good token.
    for _ in 0..20 {
        assert_eq!(http_status(&[&stack.url("hello-8080", "/")]), "200");
    }

    // One line with the reason, one for the lockout, then summaries with
    // the counts (every 10 s at most), instead of a line per attempt.
    const SUMMARY: &str = "sidecar authentication failures in the last";
    let field = |line: &str, key: &str| -> u64 {
        let value = line
            .split(&format!(" {key}="))
            .nth(1)
            .unwrap_or_else(|| panic!("{key} in {line}"));
        value.split(' ').next().unwrap().parse().unwrap()
    };
    let summaries = stack
        .edge
        .wait_output("summaries of the whole storm", WAIT, |lines| {
            let summaries: Vec<String> = lines
                .iter()
                .filter(|l| l.contains(SUMMARY))
                .cloned()
                .collect();
            let refused: u64 = summaries.iter().map(|l| field(l, "refused")).sum();
            (refused == 1).then_some(summaries)
        });
    let last = summaries.last().unwrap();
    assert!(field(last, "total_failed") >= 20, "{last}");
    assert_eq!(
        summaries.iter().map(|l| field(l, "lockouts")).sum::<u64>(),
        1
    );
    let output = stack.edge.output();
    let lines: Vec<&str> = output
        .lines()
        .skip(log_before)
        // The throttle's own lines: the edge may still be logging the
        // stack's sessions coming up ("tunnel up … sidecar=vm").
        .filter(|l| l.contains("tunnel::throttle") && !l.contains(SUMMARY))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("does not know this sidecar token"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("locked out"), "{}", lines[1]);
}

#[test]
fn the_tunnel_certificate_reloads_when_its_files_change() {
    let stack = Stack::start_tunnel(Tunnel::Tls, "", &[], &[]);
    let d = stack.dir.path();
    let edge = format!("https://{}", stack.tunnel_addr);
    // A new certificate from another CA, written over the old files in
    // place, as cert-manager renews a Secret.
    let renewed = certs::write(
        &d.join("renewed-ca"),
        "",
        &["localhost".into(), "127.0.0.1".into()],
        false,
    )
    .unwrap();
    let trusting_new = format!(
        "tls: {{ ca: {}, server_name: localhost }}\n",
        path(&renewed.ca)
    );
    let before = sidecar(d, "before", &sidecar_yaml(&edge, TOKEN, &trusting_new));
    before.wait_line("not signed by a CA this sidecar trusts", WAIT);
    drop(before);
    std::fs::copy(&renewed.cert, d.join("tunnel-cert.pem")).unwrap();
    std::fs::copy(&renewed.key, d.join("tunnel-key.pem")).unwrap();
    stack.edge.wait_line("config reloaded", WAIT);
    let after = sidecar(d, "after", &sidecar_yaml(&edge, TOKEN, &trusting_new));
    after.wait_line("Forwarding", WAIT);
    // The old CA is no longer what the edge presents.
    let old_ca = format!("tls: {{ ca: {} }}\n", path(&d.join("tunnel-ca/ca.pem")));
    let old = sidecar(d, "old", &sidecar_yaml(&edge, TOKEN, &old_ca));
    old.wait_line("not signed by a CA this sidecar trusts", WAIT);
}
