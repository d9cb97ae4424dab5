//! The conformance harness: starts the real binaries (`edge-proxy`,
//! `sidecar`, `sample-upstream`) from the build's target directory with YAML
//! files on disk, on ephemeral ports, and kills them when dropped.
//!
//! Binaries are looked up in `$CONFORMANCE_BIN_DIR`, else next to the test
//! executable (`target/<profile>/`). `scripts/test` builds them first.
//!
//! Tests wait on what the processes print ([`Proc::wait_line`],
//! [`Proc::wait_lines`]): ready lines, the edge's log of reloads and
//! tunnels, the sample upstream's `--log-events` (docs/testing.md).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "conformance-token";
pub const ENV: &str = "demo";

/// How a [`Stack`]'s sidecar reaches the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// Plaintext HTTP/2 (the edge on loopback).
    Plain,
    /// TLS, the edge's certificate checked against a local CA.
    Tls,
    /// A WebSocket to the edge's visitor port (`ws://`), through an HTTP
    /// `CONNECT` proxy, as from a network where only HTTP gets out.
    WebSocket,
}

impl Tunnel {
    /// What stacks use unless a test says: `CONFORMANCE_TUNNEL=tls` runs
    /// the whole suite over a TLS tunnel, `CONFORMANCE_TUNNEL=websocket`
    /// over a WebSocket through a proxy.
    pub fn from_env() -> Self {
        match std::env::var("CONFORMANCE_TUNNEL").as_deref() {
            Ok("tls") => Tunnel::Tls,
            Ok("websocket") => Tunnel::WebSocket,
            _ => Tunnel::Plain,
        }
    }

    /// [`Tunnel::from_env`], but never a WebSocket: for tests that count
    /// what one address does on the visitor ports, where a WebSocket
    /// sidecar's own connections (from the same loopback address) would
    /// count too, or whose visitor port only a load balancer can speak to.
    pub fn off_visitor_ports() -> Self {
        match Self::from_env() {
            Tunnel::WebSocket => Tunnel::Plain,
            tunnel => tunnel,
        }
    }
}

/// Writes a CA (`tunnel-ca/ca.pem`) and the edge's tunnel certificate
/// (`tunnel-cert.pem`, `tunnel-key.pem`, for `localhost` and `127.0.0.1`)
/// into `dir`; returns the CA's path.
pub fn write_tunnel_certs(dir: &Path) -> PathBuf {
    let ca_dir = dir.join("tunnel-ca");
    let files = test_support::certs::write(
        &ca_dir,
        "",
        &["localhost".into(), "127.0.0.1".into()],
        false,
    )
    .unwrap();
    std::fs::copy(&files.cert, dir.join("tunnel-cert.pem")).unwrap();
    std::fs::copy(&files.key, dir.join("tunnel-key.pem")).unwrap();
    files.ca
}

/// Adds `tunnel.tls` (the files of [`write_tunnel_certs`]) to an edge YAML,
/// inside its `tunnel:` section if it has one.
pub fn with_tunnel_tls(yaml: &str) -> String {
    let tls = "  tls:\n    certificates:\n      - { cert: tunnel-cert.pem, key: tunnel-key.pem }\n";
    if let Some(at) = yaml.find("\ntunnel:\n") {
        let at = at + "\ntunnel:\n".len();
        format!("{}{tls}{}", &yaml[..at], &yaml[at..])
    } else {
        format!("{yaml}tunnel:\n{tls}")
    }
}

/// Output that must never contain the token or its hash.
fn assert_no_secrets(name: &str, output: &str) {
    let hash = test_support::harness::token_hash(TOKEN);
    for (what, secret) in [("the token", TOKEN), ("the token's hash", hash.as_str())] {
        assert!(
            !output.contains(secret),
            "{name} wrote {what} in its output:\n{output}"
        );
    }
}

pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONFORMANCE_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --release --bins`) or set CONFORMANCE_BIN_DIR",
        path.display()
    );
    path
}

/// Output lines of a child process, shared with the reader threads.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    /// Output pipes not yet at their end; changed under `lines`' lock.
    open: std::sync::atomic::AtomicUsize,
}

/// A running binary. Killed (SIGKILL) on drop unless it already exited.
pub struct Proc {
    pub name: String,
    child: Child,
    output: Arc<Lines>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        Self::spawn_env(name, args, &[])
    }

    /// [`Proc::spawn`] with more environment variables.
    pub fn spawn_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_command(
            name,
            Command::new(bin(name)).args(args).envs(env.iter().copied()),
        )
    }

    /// Any program (a Node script, a server from a package), with its
    /// output collected as the project's binaries' is.
    pub fn spawn_program(program: &str, args: &[&str], dir: &Path) -> Self {
        Self::spawn_command(program, Command::new(program).args(args).current_dir(dir))
    }

    fn spawn_command(name: &str, command: &mut Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let output = Arc::new(Lines {
            open: 2.into(),
            ..Lines::default()
        });
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    output
                        .lines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(line);
                    output.changed.notify_all();
                }
                let _lines = output.lines.lock().unwrap_or_else(|e| e.into_inner());
                output.open.fetch_sub(1, Ordering::SeqCst);
                output.changed.notify_all();
            });
        }
        Self {
            name: name.into(),
            child,
            output,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an output line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_output(&format!("line containing {needle:?}"), timeout, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Waits until `n` output lines contain `needle`; returns them.
    pub fn wait_lines(&self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_output(
            &format!("{n} lines containing {needle:?}"),
            timeout,
            |lines| {
                let found: Vec<String> = lines
                    .iter()
                    .filter(|l| l.contains(needle))
                    .cloned()
                    .collect();
                (found.len() >= n).then_some(found)
            },
        )
    }

    /// Waits until `check` finds what it looks for in the output so far,
    /// looking again as each line arrives; returns what it found.
    pub fn wait_output<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut lines = self.output.lines.lock().unwrap();
        loop {
            if let Some(found) = check(&lines) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no {what} in {timeout:?}; output:\n{}",
                self.name,
                lines.join("\n")
            );
            lines = self.output.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Asserts the edge logged a failed request for `path` that it ended
    /// within `limit` (its `duration_us`), waiting up to 5 s for the line.
    pub fn assert_request_failed_within(&self, path: &str, limit: Duration) {
        let line = self.wait_line(&format!("path=\"{path}\""), Duration::from_secs(5));
        let duration_us: u128 = line
            .split("duration_us=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no duration in {line}"));
        assert!(duration_us < limit.as_micros(), "{line}");
        assert!(line.contains("error="), "{line}");
    }

    /// After the process exits: waits (up to 5 s) for the reader threads
    /// to reach the end of its pipes, so [`Proc::output`] holds its last
    /// lines too. The exit is seen before the pipes are read out.
    fn wait_output_read(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = self.output.lines.lock().unwrap();
        while self.output.open.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return; // a grandchild may hold the pipes
            }
            lines = self.output.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn output(&self) -> String {
        self.output.lines.lock().unwrap().join("\n")
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        signal(self.pid(), "INT");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.wait_output_read();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the process exits with success within 15 s (its output in
    /// the failure message).
    pub fn assert_exits_cleanly(&mut self) {
        let status = self.wait_exit(Duration::from_secs(15));
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.name,
            self.output()
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The log scan: no process of any test run writes a token or hash.
        if !std::thread::panicking() {
            assert_no_secrets(&self.name, &self.output());
        }
    }
}

/// Resident memory of a process, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// A `redis-server` of the test's own, on a Unix socket in `dir`.
pub fn redis_server(dir: &Path) -> Proc {
    let socket = dir.join("redis.sock");
    let redis = Proc::spawn_program(
        "redis-server",
        &[
            "--port",
            "0",
            "--unixsocket",
            socket.to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        dir,
    );
    redis.wait_line("ready to accept connections", Duration::from_secs(20));
    redis
}

/// The edge's `redis:` section for [`redis_server`] in `dir`, then `more`.
pub fn redis_yaml(dir: &Path, more: &str) -> String {
    format!(
        "redis:\n  url: unix://{}\n{more}",
        dir.join("redis.sock").display()
    )
}

/// `redis-cli` against [`redis_server`] in `dir`: its output.
pub fn redis_cli(dir: &Path, command: &str) -> String {
    sh(&format!(
        "redis-cli -s {} {command}",
        dir.join("redis.sock").display()
    ))
}

/// Starts a `/hold` request on `host` that stays in flight until released
/// on the service itself ([`release`]); returns its connection once the
/// response has begun.
pub fn hold(stack: &Stack, host: &str, id: &str) -> BufReader<std::net::TcpStream> {
    hold_on(stack.http_port, host, id)
}

/// [`hold`] through the edge listening on `port`.
pub fn hold_on(port: u16, host: &str, id: &str) -> BufReader<std::net::TcpStream> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!("GET /hold?id={id} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    tcp.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    reader
}

/// Ends the `/hold` request `id` ([`hold`]).
pub fn release(stack: &Stack, id: &str) {
    release_on(&stack.upstream_addr, id)
}

/// [`release`] on the sample upstream at `upstream`.
pub fn release_on(upstream: &str, id: &str) {
    let url = format!("http://{upstream}/release?id={id}");
    assert!(curl(&[&url]).status.success());
}

/// Edge + sample upstream + sidecar, from YAML files in a temp directory.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub edge: Proc,
    pub upstream: Proc,
    pub sidecar: Option<Proc>,
    pub http_port: u16,
    pub https_port: Option<u16>,
    pub tunnel_addr: String,
    pub upstream_addr: String,
    pub tunnel: Tunnel,
    /// The admin listener (`listen.admin`), if the YAML has one.
    pub admin_addr: Option<String>,
    /// `tcp_ports:`, name and address.
    pub tcp_ports: Vec<(String, String)>,
    /// The proxy a [`Tunnel::WebSocket`] sidecar goes through.
    pub proxy: Option<test_support::connect_proxy::ConnectProxy>,
}

impl Stack {
    pub fn start() -> Self {
        Self::start_with_edge_yaml("")
    }

    /// `extra` is appended to the edge YAML (e.g. an `upstream:` section).
    pub fn start_with_edge_yaml(extra: &str) -> Self {
        Self::start_with(extra, &[])
    }

    /// [`Stack::start_with_edge_yaml`], with more flags for the sample
    /// upstream.
    pub fn start_with(extra: &str, upstream_args: &[&str]) -> Self {
        Self::start_full(extra, &[], upstream_args)
    }

    /// [`Stack::start_with`], with more flags for the edge.
    pub fn start_full(extra: &str, edge_args: &[&str], upstream_args: &[&str]) -> Self {
        Self::start_tunnel(Tunnel::from_env(), extra, edge_args, upstream_args)
    }

    /// [`Stack::start_full`] with the tunnel as `tunnel` says.
    pub fn start_tunnel(
        tunnel: Tunnel,
        extra: &str,
        edge_args: &[&str],
        upstream_args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = edge_yaml(extra);
        if tunnel == Tunnel::Tls {
            write_tunnel_certs(dir.path());
            yaml = with_tunnel_tls(&yaml);
        }
        std::fs::write(dir.path().join("edge.yaml"), yaml).unwrap();
        Self::start_in(dir, tunnel, edge_args, upstream_args)
    }

    /// [`Stack::start_with_edge_yaml`] with the admin listener on too
    /// ([`Stack::admin_addr`]).
    pub fn start_with_admin(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tunnel = Tunnel::from_env();
        let mut yaml = edge_yaml(extra).replacen(
            "  tunnel: 127.0.0.1:0\n",
            "  tunnel: 127.0.0.1:0\n  admin: 127.0.0.1:0\n",
            1,
        );
        if tunnel == Tunnel::Tls {
            write_tunnel_certs(dir.path());
            yaml = with_tunnel_tls(&yaml);
        }
        std::fs::write(dir.path().join("edge.yaml"), yaml).unwrap();
        Self::start_in(dir, tunnel, &[], &[])
    }

    /// [`Stack::start_with_edge_yaml`] with an HTTPS listener too, serving
    /// a certificate for `*.preview.localhost` from a local CA (`ca.pem`
    /// in [`Stack::dir`]); plain HTTP is not redirected.
    pub fn start_https(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        test_support::certs::write(dir.path(), "", &["*.preview.localhost".into()], false).unwrap();
        let tls = "tls:\n  certificates:\n    - { cert: cert.pem, key: key.pem }\n  redirect_http: false\n";
        let tunnel = Tunnel::from_env();
        let mut yaml = edge_yaml_with(&format!("{tls}{extra}"), true);
        if tunnel == Tunnel::Tls {
            write_tunnel_certs(dir.path());
            yaml = with_tunnel_tls(&yaml);
        }
        std::fs::write(dir.path().join("edge.yaml"), yaml).unwrap();
        Self::start_in(dir, tunnel, &[], &[])
    }

    fn start_in(
        dir: tempfile::TempDir,
        tunnel: Tunnel,
        edge_args: &[&str],
        upstream_args: &[&str],
    ) -> Self {
        let (edge, listening) = start_edge_with_args(dir.path(), edge_args);
        let (http_port, tunnel_addr) = (listening.http_port, listening.tunnel);
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(upstream_args);
        let upstream = Proc::spawn("sample-upstream", &args);
        let upstream_addr = upstream.wait_line("listening ", Duration::from_secs(10))
            ["listening ".len()..]
            .to_string();
        let mut stack = Self {
            dir,
            edge,
            upstream,
            sidecar: None,
            http_port,
            https_port: listening.https_port,
            tunnel_addr,
            upstream_addr,
            tunnel,
            admin_addr: listening.admin,
            tcp_ports: listening.tcp_ports,
            proxy: (tunnel == Tunnel::WebSocket)
                .then(test_support::connect_proxy::ConnectProxy::start),
        };
        stack.start_sidecar();
        stack
    }

    pub fn sidecar_yaml(&self) -> PathBuf {
        let path = self.dir.path().join("sidecar.yaml");
        let edge = match self.tunnel {
            Tunnel::Plain => format!("edge: http://{}\n", self.tunnel_addr),
            Tunnel::Tls => format!(
                "edge: https://{}\ntls:\n  ca: {}\n",
                self.tunnel_addr,
                self.dir.path().join("tunnel-ca/ca.pem").display()
            ),
            Tunnel::WebSocket => format!(
                "edge: ws://127.0.0.1:{}\nproxy: {}\n",
                self.http_port,
                self.proxy
                    .as_ref()
                    .expect("started with the stack")
                    .url(None)
            ),
        };
        let yaml = format!(
            "{edge}token: {TOKEN}\nenvironment: {ENV}\nreconnect:\n  min: 200ms\n  max: 2s\ntargets:\n  - service: hello\n    port: 8080\n    address: {}\n",
            self.upstream_addr
        );
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub fn start_sidecar(&mut self) {
        let path = self.sidecar_yaml();
        let sidecar = Proc::spawn("sidecar", &["run", "--config", path.to_str().unwrap()]);
        let forwarding = sidecar.wait_line("Forwarding ", Duration::from_secs(10));
        assert!(
            forwarding.contains("://hello-8080-demo.preview.localhost"),
            "{forwarding}"
        );
        // Every session (the default is two) up before tests count on them.
        sidecar.wait_lines("tunnel up", 2, Duration::from_secs(10));
        self.sidecar = Some(sidecar);
    }

    /// Stops the stack's sidecar and starts another with `edge_yaml` (its
    /// `edge:` and transport settings) serving `targets` (YAML list
    /// entries); does not wait for its sessions.
    pub fn replace_sidecar(&mut self, edge_yaml: &str, targets: &str) -> Proc {
        if let Some(mut own) = self.sidecar.take() {
            own.kill();
        }
        let path = self.dir.path().join("replacement-sidecar.yaml");
        let yaml = format!(
            "{edge_yaml}token: {TOKEN}\nenvironment: {ENV}\nreconnect:\n  min: 50ms\n  max: 200ms\ntargets:\n{targets}"
        );
        std::fs::write(&path, yaml).unwrap();
        Proc::spawn("sidecar", &["run", "--config", path.to_str().unwrap()])
    }

    /// Replaces the running edge's config file (hot reload picks it up).
    pub fn write_edge_yaml(&self, content: &str) {
        let path = self.dir.path().join("edge.yaml");
        let tmp = self.dir.path().join("edge.yaml.tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, path).unwrap(); // atomic, as config managers do
    }

    /// The sample service's preview host name (`hello-8080-demo.preview.localhost`).
    pub fn preview_host(&self) -> String {
        format!("hello-8080-{ENV}.preview.localhost")
    }

    /// `http://<service>-<port>-demo.preview.localhost:<edge port><path>`
    pub fn url(&self, service_port: &str, path: &str) -> String {
        format!(
            "http://{service_port}-{ENV}.preview.localhost:{}{path}",
            self.http_port
        )
    }
}

/// The edge YAML the harness uses: one cluster (`TOKEN`, `ENV`), ephemeral
/// ports, plus `extra` (more top-level sections).
pub fn edge_yaml(extra: &str) -> String {
    edge_yaml_with(extra, false)
}

/// [`edge_yaml`], with an HTTPS listener when `https` (the caller adds `tls:`).
pub fn edge_yaml_with(extra: &str, https: bool) -> String {
    let hash = test_support::harness::token_hash(TOKEN);
    let https = if https { "  https: 127.0.0.1:0\n" } else { "" };
    format!(
        "listen:\n  http: 127.0.0.1:0\n{https}  tunnel: 127.0.0.1:0\npreview:\n  domains: [preview.localhost]\nclusters:\n  - name: conformance\n    token_sha256: \"{hash}\"\n    environments: [{ENV}]\n{extra}"
    )
}

/// Writes `dir/edge.yaml` (see [`edge_yaml`]), starts the edge, and returns
/// it with its HTTP port and tunnel address.
pub fn start_edge(dir: &Path, extra: &str) -> (Proc, u16, String) {
    std::fs::write(dir.join("edge.yaml"), edge_yaml(extra)).unwrap();
    start_edge_file(dir)
}

/// Where a started edge listens, from its `edge-proxy listening …` line.
pub struct Listening {
    pub http_port: u16,
    pub https_port: Option<u16>,
    pub tunnel: String,
    /// `listen.admin`, when the YAML has one.
    pub admin: Option<String>,
    /// `tcp_ports:`, name and address.
    pub tcp_ports: Vec<(String, String)>,
}

/// Starts the edge on an existing `dir/edge.yaml`; returns it and where it listens.
pub fn start_edge_listening(dir: &Path) -> (Proc, Listening) {
    start_edge_with_args(dir, &[])
}

/// [`start_edge_listening`], with more command-line flags.
pub fn start_edge_with_args(dir: &Path, args: &[&str]) -> (Proc, Listening) {
    let path = dir.join("edge.yaml");
    let mut argv = vec!["--config", path.to_str().unwrap()];
    argv.extend_from_slice(args);
    let edge = Proc::spawn("edge-proxy", &argv);
    let line = edge.wait_line("edge-proxy listening", Duration::from_secs(10));
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    let port = |addr: String| addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let listening = Listening {
        http_port: port(field("http=").unwrap()),
        https_port: field("https=").map(port),
        tunnel: field("tunnel=").unwrap(),
        admin: field("admin="),
        tcp_ports: line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("tcp:")?.split_once('='))
            .map(|(name, addr)| (name.to_owned(), addr.to_owned()))
            .collect(),
    };
    (edge, listening)
}

/// Starts the edge on an existing `dir/edge.yaml`; returns it with its HTTP
/// port and tunnel address.
pub fn start_edge_file(dir: &Path) -> (Proc, u16, String) {
    let (edge, l) = start_edge_listening(dir);
    (edge, l.http_port, l.tunnel)
}

/// Runs curl; panics if it cannot start.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "120"])
        .args(args)
        .output()
        .expect("curl is installed")
}

/// The HTTP status curl got for `args` (a URL and any options), as text:
/// `"200"`, or `"000"` when no response came.
pub fn http_status(args: &[&str]) -> String {
    let mut argv = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    argv.extend_from_slice(args);
    String::from_utf8_lossy(&curl(&argv).stdout).into_owned()
}

/// A response as `curl -i` got it: the status (0 when none came), the
/// headers with lowercase names, and the body.
pub type Reply = (u16, Vec<(String, String)>, String);

/// `curl -si` to the edge's HTTP port for `path` with `Host: host`, plus
/// `args` (more options).
pub fn exchange(stack: &Stack, host: &str, path: &str, args: &[&str]) -> Reply {
    let url = format!("http://127.0.0.1:{}{path}", stack.http_port);
    let host = format!("Host: {host}");
    let mut argv = vec!["-i", "--max-time", "10", "-H", &host];
    argv.extend_from_slice(args);
    argv.push(&url);
    let out = String::from_utf8(curl(&argv).stdout).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The first value of `name` (lowercase) in a [`Reply`]'s headers.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `edge-proxy check-config` on the harness's edge YAML plus `extra`,
/// written in `dir` (relative paths in it start there): whether it
/// passed, and what it printed on stderr.
pub fn check_config(dir: &Path, extra: &str) -> (bool, String) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, edge_yaml(extra)).unwrap();
    let out = Command::new(bin("edge-proxy"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a shell pipeline; returns stdout, panics on failure.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Streams `chunks` into `curl`'s stdin (for uploads too large to buffer).
pub fn curl_with_stdin<I, C>(args: &[&str], chunks: I) -> Output
where
    I: Iterator<Item = C> + Send + 'static,
    C: AsRef<[u8]>,
{
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "300"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for chunk in chunks {
            if stdin.write_all(chunk.as_ref()).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// A loopback port free now, for a server that cannot report the one it
/// chose (redis-server, nginx, PostgreSQL, sshd).
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// nginx (Debian's package) in front of the edge, as a load balancer:
/// runs from `dir` with `http` inside its `http` block, on the port it
/// returns (`{port}` in `http` is replaced by it).
pub fn nginx(dir: &Path, http: &str) -> (Proc, u16) {
    let port = free_port();
    let d = dir.display();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    // nginx's workers run as `nobody` unless told, and could not write
    // their temporary files in a root-owned test directory.
    let user = if sh("id -u").trim() == "0" {
        "user root;"
    } else {
        ""
    };
    let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|k| format!("  {k}_temp_path {d}/tmp/{k};\n"))
        .collect();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\n{user}\npid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n{temp}{}\n}}\n",
        http.replace("{port}", &port.to_string())
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let error_log = dir.join("nginx-error.log");
    let nginx = Proc::spawn_program(
        "nginx",
        &[
            "-p",
            dir.to_str().unwrap(),
            "-c",
            path.to_str().unwrap(),
            "-e",
            error_log.to_str().unwrap(),
        ],
        dir,
    );
    test_support::wait::until_blocking("nginx to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (nginx, port)
}

/// A response: status, headers (lowercase names), body.
pub type Response = (u16, Vec<(String, String)>, String);

/// One visitor's keep-alive HTTP/1.1 connection.
pub struct Conn {
    /// The connection, for a test that writes or reads by hand.
    pub reader: BufReader<std::net::TcpStream>,
}

impl Conn {
    /// To the stack's edge.
    pub fn open(stack: &Stack) -> Self {
        Self::to(("127.0.0.1", stack.http_port))
    }

    pub fn to(addr: impl std::net::ToSocketAddrs) -> Self {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        // One write per request, sent at once.
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    pub fn get(&mut self, host: &str, path: &str, headers: &str) -> Response {
        self.try_get(host, path, headers).unwrap()
    }

    /// [`Conn::get`], for a test that counts failures (a connection
    /// closed or reset) rather than stops at the first.
    pub fn try_get(&mut self, host: &str, path: &str, headers: &str) -> std::io::Result<Response> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        read_response(&mut self.reader)
    }

    /// `n` requests on this one connection (a limit's refusal keeps it
    /// open: a client held back does not pay for a new connection too);
    /// the statuses in order, and the last response.
    pub fn get_n(&mut self, n: usize, host: &str, path: &str) -> (Vec<u16>, Response) {
        let mut statuses = Vec::new();
        let mut last = None;
        for _ in 0..n {
            let response = self.get(host, path, "");
            assert_ne!(
                header(&response.1, "connection"),
                Some("close"),
                "{response:?}"
            );
            statuses.push(response.0);
            last = Some(response);
        }
        (statuses, last.unwrap())
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body (none: empty);
/// status 0 when no status line came.
pub fn read_response(reader: &mut BufReader<std::net::TcpStream>) -> std::io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = header(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    std::io::Read::read_exact(reader, &mut body)?;
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}
