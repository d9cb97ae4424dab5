//! In-process builders: `TestEdge::builder()...start()`,
//! `TestSidecar::builder(&edge)...start()`. Each runs on its own runtime, so
//! a test can stop one gracefully or kill it outright (all its tasks and
//! sockets dropped at once, as when a process dies).
//!
//! Waiting: a sidecar's status is a watch channel (waited on); the edge's
//! registry announces nothing, so it is re-checked every few milliseconds
//! until [`crate::wait::PATIENCE`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_proxy::config::token::TokenHash;
use edge_proxy::tunnel::registry::{Session, TunnelRegistry};
use edge_proxy::{Edge, EdgeConfig};
use sidecar::config::{Allowlist, Secret, SidecarConfig};
use sidecar::{Sidecar, Status};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

pub const PREVIEW_DOMAIN: &str = "preview.localhost";
pub const DEFAULT_TOKEN: &str = "test-token";
pub const DEFAULT_ENV: &str = "demo";

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Logs for tests: set `RUST_LOG=debug` to see them.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct TestEdgeBuilder {
    clusters: Vec<(String, String, Vec<String>)>,
    extra: Vec<String>,
}

impl TestEdgeBuilder {
    /// A cluster whose sidecars authenticate with `token` and may serve `environments`.
    pub fn cluster(mut self, name: &str, token: &str, environments: &[&str]) -> Self {
        self.clusters.push((
            name.into(),
            token.into(),
            environments.iter().map(|e| e.to_string()).collect(),
        ));
        self
    }

    /// A raw YAML setting, e.g. `("upstream", "read_timeout: 300ms")`.
    pub fn set(mut self, section: &str, line: &str) -> Self {
        self.extra.push(format!("{section}:\n  {line}\n"));
        self
    }

    pub fn yaml(&self) -> String {
        let clusters = if self.clusters.is_empty() {
            vec![(
                "demo".to_string(),
                DEFAULT_TOKEN.to_string(),
                vec![DEFAULT_ENV.to_string()],
            )]
        } else {
            self.clusters.clone()
        };
        let mut yaml = format!(
            "listen:\n  http: 127.0.0.1:0\n  tunnel: 127.0.0.1:0\npreview:\n  domains: [{PREVIEW_DOMAIN}]\nclusters:\n"
        );
        for (name, token, envs) in clusters {
            yaml += &format!(
                "  - name: {name}\n    token_sha256: \"{}\"\n    environments: [{}]\n",
                TokenHash::of(&token).to_hex(),
                envs.join(", ")
            );
        }
        // Merge repeated sections into one mapping each.
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for block in &self.extra {
            let (head, body) = block.split_once(":\n").unwrap();
            match sections.iter_mut().find(|(h, _)| h == head) {
                Some((_, lines)) => lines.push(body.to_string()),
                None => sections.push((head.to_string(), vec![body.to_string()])),
            }
        }
        for (head, lines) in sections {
            yaml += &format!("{head}:\n{}", lines.concat());
        }
        yaml
    }

    pub async fn start(self) -> TestEdge {
        init_tracing();
        let config = EdgeConfig::parse(&self.yaml(), "test-edge.yaml").expect("test edge config");
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tunnel = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        TestEdge::start_on(config, http, tunnel)
    }
}

pub struct TestEdge {
    pub http_addr: SocketAddr,
    pub tunnel_addr: SocketAddr,
    pub registry: Arc<TunnelRegistry>,
    runtime: Option<Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl TestEdge {
    /// Tasks alive on the edge's runtime.
    pub fn alive_tasks(&self) -> usize {
        self.runtime
            .as_ref()
            .map_or(0, |rt| rt.metrics().num_alive_tasks())
    }

    pub fn builder() -> TestEdgeBuilder {
        TestEdgeBuilder {
            clusters: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Starts an edge on already-bound listeners (e.g. to restart on the
    /// same ports).
    pub fn start_on(
        config: EdgeConfig,
        http: std::net::TcpListener,
        tunnel: std::net::TcpListener,
    ) -> Self {
        let http_addr = http.local_addr().unwrap();
        let tunnel_addr = tunnel.local_addr().unwrap();
        http.set_nonblocking(true).unwrap();
        tunnel.set_nonblocking(true).unwrap();
        let edge = Edge::new(config);
        let registry = edge.registry();
        let runtime = runtime("test-edge");
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        runtime.spawn(async move {
            let http = tokio::net::TcpListener::from_std(http).unwrap();
            let tunnel = tokio::net::TcpListener::from_std(tunnel).unwrap();
            let listeners = edge_proxy::Listeners {
                http,
                https: None,
                tunnel,
                admin: None,
                tcp_ports: Vec::new(),
                workers: 1,
            };
            let _ = edge
                .serve(listeners, async {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = done_tx.send(());
        });
        Self {
            http_addr,
            tunnel_addr,
            registry,
            runtime: Some(runtime),
            stop: Some(stop_tx),
            done: Some(done_rx),
        }
    }

    pub fn tunnel_url(&self) -> String {
        format!("http://{}", self.tunnel_addr)
    }

    /// `http://<service>-<port>-<env>.preview.localhost:<port><path>`
    pub fn url(&self, service: &str, port: u16, env: &str, path: &str) -> String {
        format!(
            "http://{service}-{port}-{env}.{PREVIEW_DOMAIN}:{}{path}",
            self.http_addr.port()
        )
    }

    /// Graceful shutdown; waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), done).await;
        }
    }

    /// Dies on the spot: every task dropped and every socket closed by the
    /// time this returns, so its ports can be bound again.
    pub async fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            shut_down(rt).await;
        }
    }

    /// Waits until `n` usable sessions serve `env`.
    pub async fn wait_sessions(&self, env: &str, n: usize) {
        self.wait_usable_sessions(env, &format!("{n} sessions for {env}"), |live| {
            live.len() >= n
        })
        .await
    }

    /// Waits until `done` holds for the usable sessions serving `env`.
    pub async fn wait_usable_sessions(
        &self,
        env: &str,
        what: &str,
        done: impl Fn(&[Arc<Session>]) -> bool,
    ) {
        crate::wait::until_ok(&format!("the edge to have {what}"), || {
            let live: Vec<_> = self
                .registry
                .all()
                .into_iter()
                .filter(|s| s.environment == env && s.is_usable())
                .collect();
            if done(&live) {
                Ok(())
            } else {
                let ids: Vec<&str> = live.iter().map(|s| s.id.as_str()).collect();
                Err(format!("usable sessions for {env}: {ids:?}"))
            }
        })
        .await
    }
}

/// Shuts `runtime` down and waits until its threads are gone (and with
/// them every task and socket). Off the async thread: waiting for a
/// runtime to end is blocking.
async fn shut_down(runtime: Runtime) {
    tokio::task::spawn_blocking(move || runtime.shutdown_timeout(crate::wait::PATIENCE))
        .await
        .expect("runtime shut down");
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub struct TestSidecarBuilder {
    config: SidecarConfig,
    targets: Vec<(String, u16, String)>,
}

impl TestSidecarBuilder {
    pub fn token(mut self, token: &str) -> Self {
        self.config.token = Secret::new(token);
        self
    }
    pub fn environment(mut self, env: &str) -> Self {
        self.config.environment = env.into();
        self
    }
    /// Visitors' `service:port` → the address this sidecar dials.
    pub fn target(mut self, service: &str, port: u16, address: SocketAddr) -> Self {
        self.targets
            .push((service.into(), port, address.to_string()));
        self
    }
    pub fn connections(mut self, n: u32) -> Self {
        self.config.connections = n;
        self
    }
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.config.reconnect_min = min;
        self.config.reconnect_max = max;
        self
    }
    /// Dial the edge at this address instead (e.g. a [`crate::FaultProxy`]).
    pub fn via(mut self, addr: SocketAddr) -> Self {
        self.config.edges = vec![sidecar::config::Edge::plaintext(format!("http://{addr}"))];
        self
    }

    /// Starts without waiting for the edge to accept it.
    pub fn spawn(mut self) -> TestSidecar {
        init_tracing();
        self.config.targets = Allowlist::new(self.targets);
        let sidecar = Sidecar::new(self.config);
        let status = sidecar.status();
        let runtime = runtime("test-sidecar");
        let shutdown = CancellationToken::new();
        let (done_tx, done_rx) = oneshot::channel();
        let token = shutdown.clone();
        runtime.spawn(async move {
            sidecar.run(token).await;
            let _ = done_tx.send(());
        });
        TestSidecar {
            status,
            runtime: Some(runtime),
            shutdown,
            done: Some(done_rx),
        }
    }

    /// Starts and waits until every session is connected.
    pub async fn start(self) -> TestSidecar {
        let n = self.config.connections as usize;
        let sidecar = self.spawn();
        sidecar.wait_connected(n).await;
        sidecar
    }
}

pub struct TestSidecar {
    status: watch::Receiver<Status>,
    runtime: Option<Runtime>,
    shutdown: CancellationToken,
    done: Option<oneshot::Receiver<()>>,
}

impl TestSidecar {
    pub fn builder(edge: &TestEdge) -> TestSidecarBuilder {
        TestSidecarBuilder {
            config: SidecarConfig {
                edges: vec![sidecar::config::Edge::plaintext(edge.tunnel_url())],
                resolve_interval: sidecar::config::DEFAULT_RESOLVE_INTERVAL,
                learn_replicas: Some(Default::default()),
                token: Secret::new(DEFAULT_TOKEN),
                environment: DEFAULT_ENV.into(),
                access: String::new(),
                owner: String::new(),
                name: "test-sidecar".into(),
                connections: 1,
                connect_timeout: Duration::from_secs(2),
                reconnect_min: Duration::from_millis(100),
                reconnect_max: Duration::from_secs(1),
                admin: None,
                proxy: None,
                fallback: None,
                targets: Allowlist::default(),
                kubernetes: None,
            },
            targets: Vec::new(),
        }
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Tasks alive on the sidecar's runtime.
    pub fn alive_tasks(&self) -> usize {
        self.runtime
            .as_ref()
            .map_or(0, |rt| rt.metrics().num_alive_tasks())
    }

    pub async fn wait_connected(&self, n: usize) {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.connected >= n),
        )
        .await;
        assert!(
            waited.is_ok(),
            "sidecar did not connect: {:?}",
            self.status()
        );
    }

    /// Waits until the sidecar reports an error; returns it.
    pub async fn wait_error(&self) -> String {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.last_error.is_some()),
        )
        .await;
        assert!(
            waited.is_ok(),
            "sidecar reported no error: {:?}",
            self.status()
        );
        self.status().last_error.unwrap()
    }

    /// Graceful shutdown (drain); waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), done).await;
        }
    }

    /// Starts a graceful shutdown without waiting.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Dies on the spot: every task dropped and every socket closed by the
    /// time this returns.
    pub async fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            shut_down(rt).await;
        }
    }
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An HTTP client that resolves every name to 127.0.0.1 (as browsers and
/// curl do for `*.localhost`).
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(Loopback))
        .no_proxy()
}

struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

/// The hex SHA-256 an edge config stores for `token`.
pub fn token_hash(token: &str) -> String {
    TokenHash::of(token).to_hex()
}

/// An edge, a sample upstream, and a connected sidecar exposing it as
/// `hello:8080` in the default environment.
pub async fn stack() -> (TestEdge, crate::TestUpstream, TestSidecar) {
    stack_with(TestEdge::builder()).await
}

/// [`stack`] with an edge built by `edge` (more settings).
pub async fn stack_with(edge: TestEdgeBuilder) -> (TestEdge, crate::TestUpstream, TestSidecar) {
    let edge = edge.start().await;
    let upstream = crate::TestUpstream::start().await;
    let sidecar = TestSidecar::builder(&edge)
        .target("hello", 8080, upstream.addr)
        .start()
        .await;
    (edge, upstream, sidecar)
}
