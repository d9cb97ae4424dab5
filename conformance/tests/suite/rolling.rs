//! A rolling restart of the edge under load: two replicas behind nginx (a
//! load balancer that retries a refused connection on the other replica,
//! as cloud balancers do), one sidecar keeping sessions with both, and
//! clients sending requests all along. Each replica in turn gets SIGTERM,
//! exits, and comes back on the same ports; not one request may fail.
//!
//! Needs `nginx` (`scripts/test` installs it).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::{edge_yaml, start_edge_listening, Conn, Listening, Proc, ENV, TOKEN};

const WAIT: Duration = Duration::from_secs(30);
/// Without the per-cluster default (1,000 requests a minute): four
/// clients on keep-alive connections pass it within seconds, and what is
/// measured here is the restart, not the limit.
const NO_CLUSTER_LIMIT: &str = "limits:\n  cluster: {}\n";
const CLIENTS: usize = 4;
/// Each client's bound: the test ends long before.
const MOST_REQUESTS: u64 = 50_000;

/// One replica: its folder (its YAML) and where it listens.
struct Replica {
    dir: tempfile::TempDir,
    proc: Proc,
    at: Listening,
}

impl Replica {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("edge.yaml"), edge_yaml(NO_CLUSTER_LIMIT)).unwrap();
        let (proc, at) = start_edge_listening(dir.path());
        Self { dir, proc, at }
    }

    /// SIGTERM, a clean exit, and a new process on the same ports. A
    /// request held in flight keeps the old process draining until `tally`
    /// counts `n` more requests served: nginx meanwhile sends some on the
    /// keep-alive connections it holds to the leaving replica, which must
    /// serve them through its tunnels, each connection closed after its
    /// response.
    fn restart(&mut self, upstream: &str, tally: &Tally, n: u64) {
        let id = format!("rolling-{}", self.at.http_port);
        let mut held = conformance::hold_on(self.at.http_port, &preview_host(), &id);
        conformance::signal(self.proc.pid(), "TERM");
        self.proc.wait_line("shutting down: draining tunnels", WAIT);
        tally.wait_more(n);
        assert!(self.proc.is_running(), "{}", self.proc.output());
        conformance::release_on(upstream, &id);
        let mut rest = String::new();
        held.read_to_string(&mut rest).unwrap();
        self.proc.assert_exits_cleanly();
        // Its connections closed after their responses (`Connection:
        // close` while draining), so nothing kept it to its grace's end.
        let output = self.proc.output();
        assert!(!output.contains("grace period over"), "{output}");
        let yaml = edge_yaml(NO_CLUSTER_LIMIT)
            .replacen(
                "http: 127.0.0.1:0",
                &format!("http: 127.0.0.1:{}", self.at.http_port),
                1,
            )
            .replacen(
                "tunnel: 127.0.0.1:0",
                &format!("tunnel: {}", self.at.tunnel),
                1,
            );
        std::fs::write(self.dir.path().join("edge.yaml"), yaml).unwrap();
        let (proc, at) = start_edge_listening(self.dir.path());
        assert_eq!(
            (at.http_port, &at.tunnel),
            (self.at.http_port, &self.at.tunnel)
        );
        self.proc = proc;
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Tally {
    /// Waits for `n` more successful requests.
    fn wait_more(&self, n: u64) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        test_support::wait::until_blocking(&format!("{target} requests served"), || {
            self.ok.load(Ordering::SeqCst) >= target
        });
    }
}

/// A keep-alive HTTP/1.1 client to nginx, alternating a quick request and
/// one the service answers after 30 ms (so some are in flight at every
/// SIGTERM), until told to stop. A failure is counted and the connection
/// replaced.
fn client(port: u16, host: String, tally: Arc<Tally>) {
    let mut conn = Conn::to(("127.0.0.1", port));
    for i in 0..MOST_REQUESTS {
        if tally.stop.load(Ordering::SeqCst) {
            break;
        }
        let path = if i % 2 == 0 { "/" } else { "/slow?ms=30" };
        let failure = match conn.try_get(&host, path, "") {
            Ok((200, headers, _)) => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
                // nginx ends a client's connection after
                // `keepalive_requests` (1,000), saying so.
                if conformance::header(&headers, "connection") == Some("close") {
                    conn = Conn::to(("127.0.0.1", port));
                }
                continue;
            }
            Ok((status, _, body)) => format!("{path}: {status} {body}"),
            Err(e) => format!("{path}: {e}"),
        };
        tally.failed.lock().unwrap().push(failure);
        conn = Conn::to(("127.0.0.1", port));
    }
}

fn preview_host() -> String {
    format!("hello-8080-{ENV}.preview.localhost")
}

fn sidecar(dir: &Path, replicas: &[&Replica], upstream: &str) -> Proc {
    let edges: String = replicas
        .iter()
        .map(|r| format!("  - http://{}\n", r.at.tunnel))
        .collect();
    let yaml = format!(
        "edge:\n{edges}token: {TOKEN}\nenvironment: {ENV}\nreconnect:\n  min: 100ms\n  max: 500ms\ntargets:\n  - service: hello\n    port: 8080\n    address: {upstream}\n"
    );
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, yaml).unwrap();
    Proc::spawn("sidecar", &["run", "--config", path.to_str().unwrap()])
}

#[test]
fn a_rolling_restart_of_two_replicas_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Proc::spawn("sample-upstream", &["--listen", "127.0.0.1:0"]);
    let upstream_addr = upstream.wait_line("listening ", WAIT)["listening ".len()..].to_string();
    let mut a = Replica::start();
    let mut b = Replica::start();
    let sidecar = sidecar(dir.path(), &[&a, &b], &upstream_addr);
    // Two sessions (the default) with each replica.
    sidecar.wait_lines("tunnel up", 4, WAIT);
    // Keep-alive connections to the replicas, as cloud balancers keep
    // them: a leaving replica still gets requests on the ones open. No
    // failure accounting (it would keep a restarted replica out for
    // `fail_timeout`); a request is tried on the next server when a
    // connection is refused or reset before the response.
    let (_nginx, port) = conformance::nginx(
        dir.path(),
        &format!(
            "  upstream edge {{
    server 127.0.0.1:{} max_fails=0;
    server 127.0.0.1:{} max_fails=0;
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{{port}};
    location / {{
      proxy_pass http://edge;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host $host;
      proxy_next_upstream error timeout;
    }}
  }}",
            a.at.http_port, b.at.http_port
        ),
    );

    let tally = Arc::new(Tally::default());
    let host = preview_host();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (tally, host) = (tally.clone(), host.clone());
            std::thread::spawn(move || client(port, host, tally))
        })
        .collect();
    tally.wait_more(200);

    let mut sessions = 4;
    for replica in [&mut a, &mut b] {
        replica.restart(&upstream_addr, &tally, 100);
        // The sidecar is back on the new process: its two sessions.
        sessions += 2;
        sidecar.wait_lines("tunnel up", sessions, WAIT);
        tally.wait_more(200);
    }
    tally.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }

    let failed = tally.failed.lock().unwrap();
    let ok = tally.ok.load(Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\nsidecar:\n{}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(10)],
        sidecar.output()
    );
    assert!(ok >= 600, "{ok}");
    println!("rolling restart of both replicas: {ok} requests served, none failed");
    // The leaving replicas said goodbye to the sidecar, which reconnected.
    let log = sidecar.output();
    assert!(log.contains("edge asked us to drain"), "{log}");
}
