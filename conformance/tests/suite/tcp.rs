//! Raw TCP services through the edge: `sidecar access tcp` on the
//! visitor's side, a WebSocket to the edge, the sidecar answering it and
//! dialing the service. Real clients: `redis-cli` against `redis-server`,
//! `psql` against PostgreSQL, `ssh` against `sshd`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use conformance::{exchange, free_port, Proc, Stack, ENV};
use sha2::{Digest, Sha256};
use test_support::pattern;

const WAIT: Duration = Duration::from_secs(20);
/// What the checksum service sends after reading the upload.
const DOWNLOAD: u64 = 1024 * 1024 * 1024;
const UPLOAD: u64 = 64 * 1024 * 1024;

/// A TCP service that reads until the client's half-close, answers the
/// upload's SHA-256 (64 hex digits), then sends [`DOWNLOAD`] pattern
/// bytes and closes.
fn checksum_service() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            std::thread::spawn(move || {
                let mut hash = Sha256::new();
                let mut buf = vec![0; 64 * 1024];
                loop {
                    let n = conn.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                }
                conn.write_all(hex::encode(hash.finalize()).as_bytes())
                    .unwrap();
                for chunk in pattern::chunks(DOWNLOAD) {
                    conn.write_all(&chunk).unwrap();
                }
            });
        }
    });
    addr
}

fn host(service: &str, port: u16) -> String {
    format!("{service}-{port}-{ENV}.preview.localhost")
}

/// Replaces `stack`'s sidecar with one serving `targets` (YAML list
/// entries) through the stack's tunnel; waits for its sessions.
fn serve(stack: &mut Stack, targets: &str) -> Proc {
    let edge = format!("edge: http://{}\n", stack.tunnel_addr);
    let sidecar = stack.replace_sidecar(&edge, targets);
    sidecar.wait_lines("tunnel up", 2, WAIT);
    sidecar
}

/// `sidecar access tcp HOST` against `stack`'s edge; returns it and the
/// local port it listens on.
fn access(stack: &Stack, host: &str, more: &[&str]) -> (Proc, u16) {
    let edge = format!("http://127.0.0.1:{}", stack.http_port);
    let mut args = vec!["access", "tcp", host, "--edge", &edge];
    args.extend_from_slice(more);
    let access = Proc::spawn("sidecar", &args);
    let line = access.wait_line("listening ", WAIT);
    let addr = line.split_whitespace().nth(1).unwrap();
    (access, addr.rsplit_once(':').unwrap().1.parse().unwrap())
}

/// A `redis-server` of its own on a TCP port; returns it and the port.
fn redis_on_tcp(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let args = ["--port", &port.to_string(), "--bind", "127.0.0.1"];
    let args = [&args[..], &["--save", "", "--appendonly", "no"]].concat();
    let redis = Proc::spawn_program("redis-server", &args, dir);
    redis.wait_line("eady to accept connections", WAIT);
    (redis, port)
}

/// `redis-cli` against a local port.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Uploads [`UPLOAD`] bytes to a [`checksum_service`] at `addr`, ends with
/// a half-close, and checks both the checksum it answers and the
/// [`DOWNLOAD`] bytes it sends after.
fn transfer_intact(addr: impl std::net::ToSocketAddrs) {
    let mut conn = TcpStream::connect(addr).unwrap();
    let mut reader = conn.try_clone().unwrap();
    let download = std::thread::spawn(move || {
        let mut answer = [0u8; 64];
        reader.read_exact(&mut answer).unwrap();
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            hash.update(&buf[..n]);
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            total,
            hex::encode(hash.finalize()),
        )
    });
    for chunk in pattern::chunks(UPLOAD) {
        conn.write_all(&chunk).unwrap();
    }
    conn.shutdown(Shutdown::Write).unwrap();
    let (uploaded, total, downloaded) = download.join().unwrap();
    assert_eq!(
        uploaded,
        pattern::sha256(UPLOAD),
        "the upload arrived whole"
    );
    assert_eq!((total, downloaded), (DOWNLOAD, pattern::sha256(DOWNLOAD)));
}

#[test]
fn redis_cli_and_a_checksummed_transfer_reach_tcp_services_through_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = redis_on_tcp(dir.path());
    let checksum = checksum_service();

    let mut stack = Stack::start();
    let targets = format!(
        "  - {{ service: hello, port: 8080, address: {} }}\n\
         \x20 - {{ service: redis, port: 6379, address: 127.0.0.1:{redis_port}, protocol: tcp }}\n\
         \x20 - {{ service: bulk, port: 9000, address: {checksum}, protocol: tcp }}\n",
        stack.upstream_addr
    );
    let _sidecar = serve(&mut stack, &targets);

    // redis-cli, a real client of a real server, through the edge.
    let (_redis_access, port) = access(&stack, &host("redis", 6379), &[]);
    let cli = |args: &[&str]| redis_cli(port, args);
    assert_eq!(cli(&["SET", "greeting", "through the tunnel"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "through the tunnel");
    assert_eq!(cli(&["PING"]), "PONG");

    // Through an HTTP proxy (`--proxy`, or HTTPS_PROXY), as from an office.
    let proxy = test_support::connect_proxy::ConnectProxy::start();
    let via = proxy.url(None);
    let (_proxied, port) = access(&stack, &host("redis", 6379), &["--proxy", &via]);
    assert_eq!(redis_cli(port, &["GET", "greeting"]), "through the tunnel");
    let edge = format!("127.0.0.1:{}", stack.http_port);
    assert_eq!(proxy.targets(), vec![edge]);

    // An upload ended by a half-close, then a download: both intact.
    let (_bulk_access, port) = access(&stack, &host("bulk", 9000), &[]);
    transfer_intact(("127.0.0.1", port));

    // Anything but the WebSocket is told how to reach a TCP service.
    let (status, _, body) = exchange(&stack, &host("redis", 6379), "/", &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("sidecar access tcp"), "{body}");
}

/// A TCP route of the edge's YAML (`upstream: { protocol: tcp }`) under
/// `auth:`: without a token the edge refuses the WebSocket and the access
/// client says why; with one, redis-cli works.
#[test]
fn a_tcp_route_needs_what_an_http_route_needs() {
    use crate::auth::{auth_yaml, claims, token};
    use jsonwebtoken::Algorithm;

    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = redis_on_tcp(dir.path());
    let route =
        "  - { host: db.example.test, target: demo/redis:6379, upstream: { protocol: tcp } }\n";
    let mut stack = Stack::start_with_edge_yaml(&format!("{}{route}", auth_yaml()));
    let targets =
        format!("  - {{ service: redis, port: 6379, address: 127.0.0.1:{redis_port} }}\n",);
    let _sidecar = serve(&mut stack, &targets);

    let (refused, port) = access(&stack, "db.example.test", &[]);
    assert_eq!(redis_cli(port, &["PING"]), "");
    let said = refused.wait_line("cannot reach the service", WAIT);
    assert!(said.contains("401"), "{said}");

    let good = token(Algorithm::ES256, "ec.key", claims("a@example.com"));
    let (_admitted, port) = access(&stack, "db.example.test", &["--token", &good]);
    assert_eq!(redis_cli(port, &["PING"]), "PONG");

    // Pasted once, saved for the domain, private to the user, used after.
    let config = tempfile::tempdir().unwrap();
    let xdg = config.path().to_str().unwrap();
    let mut login = std::process::Command::new(conformance::bin("sidecar"))
        .args(["access", "login", "example.test"])
        .env("XDG_CONFIG_HOME", xdg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{good}\n").as_bytes())
        .unwrap();
    let saved = login.wait_with_output().unwrap();
    assert!(saved.status.success(), "{saved:?}");
    use std::os::unix::fs::PermissionsExt;
    let file = config.path().join("preview-edge/tokens/example.test");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let edge = format!("http://127.0.0.1:{}", stack.http_port);
    let args = ["access", "tcp", "db.example.test", "--edge", &edge];
    let remembered = Proc::spawn_env("sidecar", &args, &[("XDG_CONFIG_HOME", xdg)]);
    let line = remembered.wait_line("listening ", WAIT);
    let addr = line.split_whitespace().nth(1).unwrap();
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    remembered.wait_line("using the token saved for the domain", WAIT);
}

/// PostgreSQL's server programs (Debian's `postgresql` package).
fn postgres_bin() -> std::path::PathBuf {
    let versions =
        std::fs::read_dir("/usr/lib/postgresql").expect("the postgresql package is installed");
    let mut dirs: Vec<_> = versions.flatten().map(|e| e.path().join("bin")).collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL version")
}

/// `program` with `args`, as the `postgres` user when this is root
/// (PostgreSQL refuses to run as root); `setpriv` execs, so a kill
/// reaches the server itself.
fn as_postgres(program: &std::path::Path, args: &[&str]) -> (String, Vec<String>) {
    let program = program.to_string_lossy().into_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if !is_root() {
        return (program, args);
    }
    let mut wrapped = [
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ]
    .map(String::from)
    .to_vec();
    wrapped.push(program);
    wrapped.extend(args);
    ("setpriv".into(), wrapped)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next().map(|id| id == "0"))
        .unwrap_or(false)
}

/// A PostgreSQL server of its own in `dir` on a TCP port (trust auth,
/// superuser `app`); returns it and the port.
fn postgres_on_tcp(dir: &std::path::Path) -> (Proc, u16) {
    use std::os::unix::fs::PermissionsExt;
    let bin = postgres_bin();
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let data_arg = data.to_string_lossy().into_owned();
    let (program, args) = as_postgres(
        &bin.join("initdb"),
        &["-D", &data_arg, "--auth=trust", "-U", "app", "--no-sync"],
    );
    let init = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(init.status.success(), "initdb: {init:?}");
    let port = free_port();
    let (port_arg, socket_dir) = (port.to_string(), dir.to_string_lossy().into_owned());
    let (program, args) = as_postgres(
        &bin.join("postgres"),
        &[
            "-D",
            &data_arg,
            "-p",
            &port_arg,
            "-k",
            &socket_dir,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Proc::spawn_program(&program, &args, dir);
    server.wait_line("ready to accept connections", WAIT);
    (server, port)
}

/// psql, the PostgreSQL client, against a real server through a TCP
/// route: a session of several statements, and the server's answers.
#[test]
fn psql_reaches_postgres_through_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (_postgres, pg_port) = postgres_on_tcp(dir.path());

    let mut stack = Stack::start();
    let targets = format!(
        "  - {{ service: postgres, port: 5432, address: 127.0.0.1:{pg_port}, protocol: tcp }}\n",
    );
    let _sidecar = serve(&mut stack, &targets);

    let (_access, port) = access(&stack, &host("postgres", 5432), &[]);
    let sql = "create table visits (n int); insert into visits select generate_series(1, 1000); \
               select count(*), sum(n) from visits;";
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-d",
            "postgres",
        ])
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql is installed");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000|500500");
}

/// An `sshd` of its own in `dir` on a TCP port, letting the user running
/// the test in with a fresh key; returns it, the port and the key's path.
fn sshd_on_tcp(dir: &std::path::Path) -> (Proc, u16, std::path::PathBuf) {
    let keygen = |path: &std::path::Path| {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .output()
            .expect("ssh-keygen is installed");
        assert!(out.status.success(), "{out:?}");
    };
    let (host_key, user_key) = (dir.join("host_key"), dir.join("user_key"));
    keygen(&host_key);
    keygen(&user_key);
    std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
    // Privilege separation wants its empty directory (made by the
    // service's unit, which never runs here).
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let sshd = Proc::spawn_program("/usr/sbin/sshd", &["-D", "-e", "-f", &config], dir);
    sshd.wait_line(&format!("Server listening on 127.0.0.1 port {port}"), WAIT);
    (sshd, port, user_key)
}

/// ssh, through a TCP route, runs a command on the far side.
#[test]
fn ssh_reaches_sshd_through_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (_sshd, ssh_port, key) = sshd_on_tcp(dir.path());

    let mut stack = Stack::start();
    let targets = format!(
        "  - {{ service: ssh, port: 22, address: 127.0.0.1:{ssh_port}, protocol: tcp }}\n",
    );
    let _sidecar = serve(&mut stack, &targets);

    let (_access, port) = access(&stack, &host("ssh", 22), &[]);
    let id = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let user = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let out = std::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(&key)
        .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1")])
        .args(["echo", "through", "the", "edge"])
        .output()
        .expect("ssh is installed");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "through the edge"
    );
}

/// A raw TCP port on the edge (`tcp_ports:`), as rathole and frp expose
/// ports: redis-cli and the checksummed transfer straight at the edge, no
/// access client; an address outside `allow` and a service no sidecar
/// serves are closed at once, each said in the edge's log; the
/// bytes are logged and counted.
#[test]
fn a_tcp_port_on_the_edge_carries_raw_connections_to_its_service() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = redis_on_tcp(dir.path());
    let checksum = checksum_service();
    let port = |name: &str, target: &str, allow: &str| {
        format!("  - {{ name: {name}, listen: '127.0.0.1:0', target: {ENV}/{target}, allow: [{allow}] }}\n")
    };
    let yaml = [
        "tcp_ports:\n".to_owned(),
        port("redis", "redis:6379", "'127.0.0.1'"),
        port("bulk", "bulk:9000", "'127.0.0.0/8', '::1'"),
        port("elsewhere", "redis:6379", "'10.0.0.0/8'"),
        port("unlisted", "postgres:5432", "'127.0.0.1'"),
    ]
    .concat();
    let mut stack = Stack::start_with_admin(&yaml);
    let targets = format!(
        "  - {{ service: redis, port: 6379, address: 127.0.0.1:{redis_port}, protocol: tcp }}\n\
         \x20 - {{ service: bulk, port: 9000, address: {checksum}, protocol: tcp }}\n"
    );
    let _sidecar = serve(&mut stack, &targets);
    let addr = |name: &str| -> String {
        let (_, addr) = stack.tcp_ports.iter().find(|(n, _)| n == name).unwrap();
        addr.clone()
    };
    let port_of = |name: &str| -> u16 { addr(name).rsplit_once(':').unwrap().1.parse().unwrap() };

    let cli = |args: &[&str]| redis_cli(port_of("redis"), args);
    assert_eq!(cli(&["SET", "greeting", "through a port"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "through a port");
    let logged = stack.edge.wait_line("tcp connection ", WAIT);
    assert!(
        logged.contains("port=\"redis\"") && logged.contains("bytes_in="),
        "{logged}"
    );
    transfer_intact(addr("bulk"));

    // Closed at once, and the log says why.
    let closed = |name: &str| {
        let mut conn = TcpStream::connect(addr(name)).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("{name} stayed open: {other:?}"),
        }
    };
    closed("elsewhere");
    let said = stack.edge.wait_line("port=\"elsewhere\"", WAIT);
    assert!(said.contains("not in the port's allow list"), "{said}");
    closed("unlisted");
    let said = stack.edge.wait_line("port=\"unlisted\"", WAIT);
    assert!(said.contains("tcp connection refused"), "{said}");

    let admin = stack.admin_addr.clone().unwrap();
    let metrics = String::from_utf8_lossy(
        &conformance::curl(&["-f", &format!("http://{admin}/metrics")]).stdout,
    )
    .into_owned();
    let value = |series: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("{series} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("edge_tcp_port_connections_total{port=\"bulk\"}"), 1);
    assert!(value("edge_tcp_port_received_bytes_total{port=\"bulk\"}") >= UPLOAD);
    assert!(value("edge_tcp_port_sent_bytes_total{port=\"bulk\"}") >= DOWNLOAD + 64);
    assert_eq!(
        value("edge_tcp_port_refused_connections_total{port=\"elsewhere\"}"),
        1
    );
    assert_eq!(
        value("edge_tcp_port_refused_connections_total{port=\"unlisted\"}"),
        1
    );

    // A reload applies a port's allow list at once (its listener stays).
    let path = stack.dir.path().join("edge.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let open = format!(
        "name: redis, listen: '127.0.0.1:0', target: {ENV}/redis:6379, allow: ['127.0.0.1']"
    );
    assert!(yaml.contains(&open), "{yaml}");
    stack.write_edge_yaml(&yaml.replace(&open, &open.replace("'127.0.0.1'", "'10.0.0.0/8'")));
    stack.edge.wait_line("config reloaded", WAIT);
    closed("redis");
    let said = stack
        .edge
        .wait_line("tcp connection refused port=\"redis\"", WAIT);
    assert!(said.contains("not in the port's allow list"), "{said}");
}

/// A TCP port's open connection is work a leaving edge waits for: after
/// SIGINT the port takes no new connection, the open one still carries
/// bytes both ways, and the end of the grace period ends it (its tunnel
/// stream with the rest) before the edge exits.
#[test]
fn a_leaving_edge_carries_a_tcp_ports_open_connection_until_its_grace_period_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = redis_on_tcp(dir.path());
    let mut stack = Stack::start_with_edge_yaml(&format!(
        "shutdown_grace: 2s\ntcp_ports:\n  - {{ name: redis, listen: '127.0.0.1:0', \
         target: {ENV}/redis:6379, allow: ['127.0.0.1'] }}\n"
    ));
    let targets = format!(
        "  - {{ service: redis, port: 6379, address: 127.0.0.1:{redis_port}, protocol: tcp }}\n"
    );
    let _sidecar = serve(&mut stack, &targets);
    let addr = stack.tcp_ports[0].1.clone();
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let ping = |conn: &mut TcpStream| -> String {
        conn.write_all(b"PING\r\n").unwrap();
        let mut answer = [0u8; 7];
        conn.read_exact(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert_eq!(ping(&mut conn), "+PONG\r\n");

    stack.edge.interrupt();
    stack.edge.wait_line(
        "shutting down: draining tunnels and in-flight requests",
        WAIT,
    );
    match TcpStream::connect(&addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut late) => {
            late.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = [0u8; 1];
            assert!(
                matches!(late.read(&mut buf), Ok(0) | Err(_)),
                "a leaving edge took a new connection on its TCP port"
            );
        }
    }
    assert_eq!(
        ping(&mut conn),
        "+PONG\r\n",
        "the open connection is still carried"
    );
    assert!(
        stack.edge.is_running(),
        "the edge left with a connection open"
    );

    let over = stack.edge.wait_line("grace period over", WAIT);
    assert!(over.contains("in_flight=1"), "{over}");
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the connection outlived the grace period: {other:?}"),
    }
    stack.edge.assert_exits_cleanly();
}
