//! Scale rows against a running edge: memory per idle tunnel, memory per open
//! proxied connection, and that nothing is dropped.
//!
//! `bench-scale run --edge-pid PID --http ADDR --tunnel ADDR --token T
//! --sidecars N --connections M` does, printing one JSON object at the end:
//!
//! 1. reads the edge's RSS (`/proc/PID/status`);
//! 2. starts a child process (`bench-scale upstream`) that answers
//!    `GET /hold/<i>` with a head and `ready <i>\n`, then holds the response
//!    open until told to release it, then sends `done <i>\n`;
//! 3. starts a child process (`bench-scale sidecars`) running N in-process
//!    sidecars (the `sidecar` crate, `connections: 1` each), environments
//!    `<prefix>0 … <prefix>N-1`, waits until all are connected, reads the
//!    edge's RSS again → memory per idle tunnel;
//! 4. opens M client connections to the edge, spread over the N sidecars,
//!    each waiting until its `ready <i>` line has come through, reads the
//!    edge's RSS → memory per open proxied connection;
//! 5. releases the upstream, checks every response is complete and exactly
//!    `ready <i>\ndone <i>\n`, and that every sidecar is still connected.
//!
//! Three processes because each holds up to M sockets and the open-files
//! limit may be ~20k. Children exit when their stdin closes.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench::http1::{parse_head, BodyDecoder};
use bench::procfs;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Many sidecars and many open connections through one running edge")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole scale test (starts the two helpers below).
    Run(RunArgs),
    /// Helper: the holding upstream. Prints `listening ADDR`; reads
    /// `release` on stdin.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Helper: N sidecars in one process. Prints `connected K`; answers
    /// `status` on stdin with `connected K errors E`.
    Sidecars(SidecarArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// PID of the running edge-proxy (for its RSS).
    #[arg(long)]
    edge_pid: u32,
    /// The edge's visitor (HTTP) address.
    #[arg(long)]
    http: String,
    #[command(flatten)]
    sidecars: SidecarCommon,
    /// Concurrent proxied connections to hold open.
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// Seconds allowed for all sidecars to connect, and for all connections to open.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Seconds to let memory settle before each RSS reading.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
}

#[derive(clap::Args, Clone)]
struct SidecarCommon {
    /// The edge's tunnel address (host:port).
    #[arg(long)]
    tunnel: String,
    /// The sidecars' token.
    #[arg(long)]
    token: String,
    /// The tunnel speaks TLS, its certificate signed by this CA (PEM) for
    /// `localhost`; without it, plaintext.
    #[arg(long)]
    tunnel_ca: Option<String>,
    /// Environments are `<prefix>0 … <prefix>N-1` (the edge's config must list them).
    #[arg(long, default_value = "s")]
    env_prefix: String,
    /// Number of sidecars (one tunnel session each).
    #[arg(long, default_value_t = 20)]
    sidecars: usize,
    /// Sidecars connecting at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

#[derive(clap::Args)]
struct SidecarArgs {
    #[command(flatten)]
    common: SidecarCommon,
    /// Where the sidecars' `hold:8080` service is.
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// The service name and port every sidecar exposes.
const SERVICE: &str = "hold";
const PORT: u16 = 8080;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Run(args) => run(args).await,
            Cmd::Upstream { listen } => upstream(&listen).await,
            Cmd::Sidecars(args) => sidecars(args).await,
        }
    })
}

/// Lines of stdin (read on a plain thread: tokio's stdin needs a feature the
/// workspace does not enable); the channel closes at EOF.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

// ---------------------------------------------------------------- upstream

async fn upstream(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    let (release_tx, release) = watch::channel(false);
    let accepted = Arc::new(AtomicU64::new(0));
    let accept_count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            accept_count.fetch_add(1, Ordering::Relaxed);
            let release = release.clone();
            tokio::spawn(async move {
                let _ = hold(tcp, release).await;
            });
        }
    });
    let mut stdin = stdin_lines();
    while let Some(line) = stdin.recv().await {
        if line.trim() == "release" {
            let _ = release_tx.send(true);
            println!("released accepted={}", accepted.load(Ordering::Relaxed));
        }
    }
    Ok(())
}

/// One upstream connection: `GET /hold/<i>` → head and `ready <i>\n` now,
/// `done <i>\n` on release. Anything else: a short 200 (health checks).
async fn hold(mut tcp: TcpStream, mut release: watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            bail!("request head too long");
        }
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let path = head.split(' ').nth(1).unwrap_or("/");
    let Some(id) = path.strip_prefix("/hold/") else {
        tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            .await?;
        return Ok(());
    };
    let (first, second) = (format!("ready {id}\n"), format!("done {id}\n"));
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        first.len() + second.len()
    );
    tcp.write_all(response.as_bytes()).await?;
    let _ = release.wait_for(|r| *r).await;
    tcp.write_all(second.as_bytes()).await?;
    tcp.shutdown().await?;
    // Let the peer read to the end before the socket is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await;
    Ok(())
}

// ---------------------------------------------------------------- sidecars

async fn sidecars(args: SidecarArgs) -> anyhow::Result<()> {
    use sidecar::config::{Allowlist, Secret, SidecarConfig};
    let common = &args.common;
    let shutdown = CancellationToken::new();
    let mut statuses = Vec::with_capacity(common.sidecars);
    let mut tasks = tokio::task::JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let (edge, transport) = match &common.tunnel_ca {
        None => (
            format!("http://{}", common.tunnel),
            sidecar::config::EdgeTransport::Plaintext { warn: false },
        ),
        Some(ca) => {
            let edge = format!("https://{}", common.tunnel);
            let options = sidecar::config::EdgeTlsOptions {
                ca: Some(ca.clone()),
                server_name: Some("localhost".into()),
                ..Default::default()
            };
            let transport = sidecar::config::edge_transport(&edge, options, false)
                .map_err(|problems| anyhow::anyhow!("{}", problems.join("; ")))?;
            (edge, transport)
        }
    };
    let connected = |statuses: &Vec<watch::Receiver<sidecar::Status>>| {
        statuses.iter().map(|s| s.borrow().connected).sum::<usize>()
    };
    for i in 0..common.sidecars {
        // At most `connect_concurrency` sidecars still connecting.
        while statuses.len() - connected(&statuses) >= common.connect_concurrency.max(1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let config = SidecarConfig {
            edges: vec![sidecar::config::Edge {
                url: edge.clone(),
                transport: transport.clone(),
            }],
            resolve_interval: sidecar::config::DEFAULT_RESOLVE_INTERVAL,
            learn_replicas: None,
            token: Secret::new(&common.token),
            environment: format!("{}{i}", common.env_prefix),
            access: String::new(),
            owner: String::new(),
            name: format!("bench-{i}"),
            connections: 1,
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(5),
            admin: None,
            proxy: None,
            fallback: None,
            targets: Allowlist::new([(SERVICE.to_string(), PORT, args.target.clone())]),
            kubernetes: None,
        };
        let sidecar = sidecar::Sidecar::new(config);
        statuses.push(sidecar.status());
        let token = shutdown.clone();
        tasks.spawn(async move { sidecar.run(token).await });
    }
    while connected(&statuses) < common.sidecars && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("connected {}", connected(&statuses));
    let mut stdin = stdin_lines();
    while let Some(line) = stdin.recv().await {
        if line.trim() == "status" {
            let errors = statuses
                .iter()
                .filter(|s| s.borrow().last_error.is_some())
                .count();
            let first_error = statuses
                .iter()
                .find_map(|s| s.borrow().last_error.clone())
                .unwrap_or_default();
            println!(
                "connected {} errors {errors} {first_error}",
                connected(&statuses)
            );
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

// ---------------------------------------------------------------- run

/// A helper child process, talked to by lines.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Helper {
    fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    async fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!("helper exited"),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("helper did not answer in {timeout:?}"),
        }
    }

    async fn say(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    ConnectFailed,
    NotReady,
    BadStatus,
    Incomplete,
    WrongBody,
}

/// Counts shared by the client tasks.
#[derive(Default)]
struct Progress {
    ready: AtomicU64,
    failed_before_ready: AtomicU64,
}

struct ClientError(Outcome, String);

async fn client(
    i: usize,
    http: Arc<str>,
    host: String,
    open: Arc<Semaphore>,
    progress: Arc<Progress>,
    mut released: watch::Receiver<bool>,
    ready_deadline: tokio::time::Instant,
) -> Result<(), ClientError> {
    let fail = |o: Outcome| move |e: anyhow::Error| ClientError(o, format!("#{i}: {e:#}"));
    let permit = open.acquire_owned().await.ok();
    // How far this client got, for the message if the deadline passes.
    let mut waiting_for = "the connection to open";
    let opened = tokio::time::timeout_at(ready_deadline, async {
        let mut tcp = TcpStream::connect(&*http)
            .await
            .map_err(|e| fail(Outcome::ConnectFailed)(e.into()))?;
        let _ = tcp.set_nodelay(true);
        let request =
            format!("GET /hold/{i} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| fail(Outcome::ConnectFailed)(e.into()))?;
        let mut buf = Vec::with_capacity(1024);
        waiting_for = "the response head";
        let head = loop {
            if let Some(head) = parse_head(&buf).map_err(fail(Outcome::NotReady))? {
                break head;
            }
            read_some(&mut tcp, &mut buf)
                .await
                .map_err(fail(Outcome::NotReady))?;
        };
        if head.status != 200 {
            let body = String::from_utf8_lossy(&buf[head.len..]).into_owned();
            return Err(ClientError(
                Outcome::BadStatus,
                format!("#{i}: status {} {}", head.status, body.trim()),
            ));
        }
        buf.drain(..head.len);
        let mut decoder = BodyDecoder::new(head.framing);
        let mut body = Vec::new();
        let first = format!("ready {i}\n");
        waiting_for = "the first body bytes (the head arrived)";
        loop {
            let used = decoder
                .feed(&buf, Some(&mut body))
                .map_err(fail(Outcome::NotReady))?;
            buf.drain(..used);
            if body.len() >= first.len() || decoder.is_done() {
                break;
            }
            read_some(&mut tcp, &mut buf)
                .await
                .map_err(fail(Outcome::NotReady))?;
        }
        if !body.starts_with(first.as_bytes()) {
            return Err(ClientError(
                Outcome::WrongBody,
                format!("#{i}: first line {:?}", String::from_utf8_lossy(&body)),
            ));
        }
        Ok((tcp, buf, decoder, body))
    })
    .await;
    drop(permit);
    let (mut tcp, mut buf, mut decoder, mut body) = match opened {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            progress.failed_before_ready.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        Err(_) => {
            progress.failed_before_ready.fetch_add(1, Ordering::Relaxed);
            return Err(ClientError(
                Outcome::NotReady,
                format!("#{i}: still waiting for {waiting_for} at the deadline"),
            ));
        }
    };
    progress.ready.fetch_add(1, Ordering::Relaxed);
    let _ = released.wait_for(|r| *r).await;
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let used = decoder
                .feed(&buf, Some(&mut body))
                .map_err(fail(Outcome::Incomplete))?;
            buf.drain(..used);
            if decoder.is_done() {
                return Ok(());
            }
            if let Err(e) = read_some(&mut tcp, &mut buf).await {
                decoder
                    .finish_on_eof()
                    .map_err(|_| fail(Outcome::Incomplete)(e))?;
                return Ok(());
            }
        }
    })
    .await;
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(ClientError(
                Outcome::Incomplete,
                format!("#{i}: not complete 60 s after release"),
            ))
        }
    }
    let expected = format!("ready {i}\ndone {i}\n");
    if body != expected.as_bytes() {
        return Err(ClientError(
            Outcome::WrongBody,
            format!("#{i}: body {:?}", String::from_utf8_lossy(&body)),
        ));
    }
    Ok(())
}

async fn read_some(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = tcp.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn kib_per(delta_kib: i64, count: usize) -> Option<f64> {
    (count > 0).then(|| delta_kib as f64 / count as f64)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let pid = args.edge_pid;
    let n = args.sidecars.sidecars;
    let m = args.connections;
    let settle = Duration::from_secs_f64(args.settle);
    let timeout = Duration::from_secs(args.timeout);
    if let Some(limit) = procfs::open_files_limit() {
        if (limit as usize) < m + 100 {
            eprintln!(
                "bench-scale: open-files limit {limit} is below {} connections; raise `ulimit -n`",
                m
            );
        }
    }
    let rss = || procfs::rss_kib(pid).map(|k| k as i64);
    let rss_start = rss().context("edge process not found")?;
    let started = Instant::now();

    let mut upstream = Helper::spawn(&["upstream".into()])?;
    let line = upstream.line(Duration::from_secs(10)).await?;
    let target = line
        .strip_prefix("listening ")
        .context("upstream did not start")?
        .to_string();

    let c = &args.sidecars;
    let mut helper_args = vec![
        "sidecars".into(),
        format!("--tunnel={}", c.tunnel),
        format!("--token={}", c.token),
        format!("--env-prefix={}", c.env_prefix),
        format!("--sidecars={}", c.sidecars),
        format!("--connect-concurrency={}", c.connect_concurrency),
        format!("--target={target}"),
        format!("--timeout={}", args.timeout),
    ];
    helper_args.extend(c.tunnel_ca.iter().map(|ca| format!("--tunnel-ca={ca}")));
    let mut sidecars = Helper::spawn(&helper_args)?;
    let line = sidecars.line(timeout + Duration::from_secs(10)).await?;
    let connected: usize = line
        .strip_prefix("connected ")
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("sidecars said {line:?}"))?;
    let tunnels_secs = started.elapsed().as_secs_f64();
    eprintln!("bench-scale: {connected}/{n} sidecars connected in {tunnels_secs:.1} s");
    tokio::time::sleep(settle).await;
    let rss_tunnels = rss().context("edge exited")?;
    let fds_tunnels = procfs::fd_count(pid);

    // M connections, spread over the sidecars.
    let http: Arc<str> = args.http.clone().into();
    let open = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let progress = Arc::new(Progress::default());
    let (release_tx, released) = watch::channel(false);
    let ready_deadline = tokio::time::Instant::now() + timeout;
    let opening = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..m {
        let host = format!(
            "{SERVICE}-{PORT}-{}{}.preview.localhost",
            c.env_prefix,
            i % n.max(1)
        );
        clients.spawn(client(
            i,
            http.clone(),
            host,
            open.clone(),
            progress.clone(),
            released.clone(),
            ready_deadline,
        ));
    }
    loop {
        let ready = progress.ready.load(Ordering::Relaxed) as usize;
        let failed = progress.failed_before_ready.load(Ordering::Relaxed) as usize;
        if ready + failed >= m || tokio::time::Instant::now() >= ready_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_secs = opening.elapsed().as_secs_f64();
    let ready = progress.ready.load(Ordering::Relaxed) as usize;
    eprintln!("bench-scale: {ready}/{m} connections open in {open_secs:.1} s");
    tokio::time::sleep(settle).await;
    let rss_open = rss().context("edge exited")?;
    let fds_open = procfs::fd_count(pid);
    sidecars.say("status").await?;
    let status_open = sidecars.line(Duration::from_secs(10)).await?;

    let _ = release_tx.send(true);
    upstream.say("release").await?;
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    // Up to three messages per kind of failure.
    let mut samples = std::collections::BTreeMap::<String, Vec<String>>::new();
    let finish_deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while let Ok(Some(result)) = tokio::time::timeout_at(finish_deadline, clients.join_next()).await
    {
        let (outcome, msg) = match result {
            Ok(Ok(())) => (Outcome::Ok, None),
            Ok(Err(ClientError(o, msg))) => (o, Some(msg)),
            Err(e) => (Outcome::Incomplete, Some(format!("client task: {e}"))),
        };
        let kind = format!("{outcome:?}");
        if let Some(msg) = msg {
            let list = samples.entry(kind.clone()).or_default();
            if list.len() < 3 {
                list.push(msg);
            }
        }
        *counts.entry(kind).or_default() += 1;
    }
    let unfinished = clients.len();
    if unfinished > 0 {
        *counts.entry("Unfinished".into()).or_default() += unfinished as u64;
        clients.abort_all();
    }
    sidecars.say("status").await?;
    let status_end = sidecars.line(Duration::from_secs(10)).await?;
    let still_connected: usize = status_end
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(settle).await;
    let rss_end = rss().unwrap_or(0);
    sidecars.stop().await;
    upstream.stop().await;

    let ok = counts.get("Ok").copied().unwrap_or(0) as usize;
    let failures = m - ok;
    let out = serde_json::json!({
        "sidecars": n,
        "sidecars_connected": connected,
        "sidecars_connected_at_end": still_connected,
        "tunnels_dropped": n.saturating_sub(still_connected),
        "connections": m,
        "connections_open": ready,
        "connections_ok": ok,
        "connection_failures": failures,
        "outcomes": counts,
        "failure_samples": samples,
        "sidecar_status_open": status_open,
        "sidecar_status_end": status_end,
        "edge_rss_kib": { "start": rss_start, "tunnels": rss_tunnels, "open": rss_open, "end": rss_end },
        "edge_fds": { "tunnels": fds_tunnels, "open": fds_open },
        "kib_per_tunnel": kib_per(rss_tunnels - rss_start, connected),
        // Only meaningful while (nearly) all of them are open.
        "kib_per_connection": if ready * 10 >= m * 9 { kib_per(rss_open - rss_tunnels, ready) } else { None },
        "seconds": { "tunnels": tunnels_secs, "open": open_secs, "total": started.elapsed().as_secs_f64() },
    });
    println!("{out}");
    Ok(())
}
