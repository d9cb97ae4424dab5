//! kill -9 mid-transfer, of each process on the path in turn: the sidecar,
//! the service and the edge. The visitor's download ends in an error (never
//! a short body passed off as whole), and once the process is back the
//! next request is served, with nobody restarted but the one killed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use conformance::{edge_yaml, http_status, start_edge_listening, Proc, Stack};

const WAIT: Duration = Duration::from_secs(20);

/// A 1 GiB download by curl at 20 MB/s into `dir/name`, under way (bytes
/// written) when this returns.
fn download(stack: &Stack, dir: &Path, name: &str) -> (Child, std::path::PathBuf) {
    let file = dir.join(name);
    let url = stack.url("hello-8080", "/bytes/1073741824");
    let child = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--limit-rate", "20M", "-o"])
        .arg(&file)
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    test_support::wait::until_blocking("the download to be under way", || {
        std::fs::metadata(&file).is_ok_and(|m| m.len() > 0)
    });
    (child, file)
}

/// curl's end: it must fail, with the body short of 1 GiB.
fn assert_cut(child: Child, file: &Path, who: &str) {
    let out = child.wait_with_output().unwrap();
    let got = std::fs::metadata(file).map_or(0, |m| m.len());
    assert!(
        !out.status.success() && got < 1 << 30,
        "{who} killed: curl {} with {got} bytes: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn served(stack: &Stack) -> bool {
    http_status(&[&stack.url("hello-8080", "/")]) == "200"
}

#[test]
fn a_killed_sidecar_service_or_edge_cuts_its_transfers_visibly_and_the_path_recovers() {
    let mut stack = Stack::start();
    let work = tempfile::tempdir().unwrap();

    // The sidecar: restarted, it reconnects.
    let (curl, file) = download(&stack, work.path(), "sidecar");
    stack.sidecar.take().unwrap().kill();
    assert_cut(curl, &file, "sidecar");
    stack.start_sidecar();
    assert!(served(&stack));

    // The service: while it is down the edge says so (502, the service's
    // hop); back on its address, it is served again.
    let (curl, file) = download(&stack, work.path(), "service");
    stack.upstream.kill();
    assert_cut(curl, &file, "service");
    assert_eq!(http_status(&[&stack.url("hello-8080", "/")]), "502");
    stack.upstream = Proc::spawn("sample-upstream", &["--listen", &stack.upstream_addr]);
    stack.upstream.wait_line("listening ", WAIT);
    assert!(served(&stack));

    // The edge: a new process on the same ports; the sidecar, still
    // running, reconnects by itself.
    let (curl, file) = download(&stack, work.path(), "edge");
    stack.edge.kill();
    assert_cut(curl, &file, "edge");
    let yaml = edge_yaml("")
        .replacen(
            "http: 127.0.0.1:0",
            &format!("http: 127.0.0.1:{}", stack.http_port),
            1,
        )
        .replacen(
            "tunnel: 127.0.0.1:0",
            &format!("tunnel: {}", stack.tunnel_addr),
            1,
        );
    std::fs::write(stack.dir.path().join("edge.yaml"), yaml).unwrap();
    let (edge, _) = start_edge_listening(stack.dir.path());
    stack.edge = edge;
    // Requests wait for the sidecar's reconnect (tunnel.session_wait).
    test_support::wait::until_blocking("the restarted edge to serve", || served(&stack));
    // Both its sessions, the second one's too.
    let sidecar = stack.sidecar.as_ref().unwrap();
    sidecar.wait_lines("tunnel up", 4, WAIT);
}
