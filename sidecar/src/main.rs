use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sidecar::config::{
    edge_transport, wire_protocol, Allowlist, Edge, EdgeTlsOptions, Secret, SidecarConfig, Target,
};
use sidecar::Sidecar;
use tokio_util::sync::CancellationToken;
use tunnel_proto::{UpstreamProtocol, UpstreamTls};
use yaml_config::ServiceProtocol;

/// jemalloc: less CPU per request than glibc's allocator and less memory
/// kept per connection (measured in scripts/bench).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The sidecar: dials out to the edge and connects visitors to services.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log lines as `text` (key=value; colour on a terminal) or `json`
    /// (one object per line, for log collectors).
    #[arg(long, global = true, default_value = "text")]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run with a configuration file.
    Run {
        #[arg(long, short, default_value = "configs/sidecar.yaml")]
        config: PathBuf,
        /// Read the YAML from this environment variable instead (as the
        /// injected sidecar does).
        #[arg(long, value_name = "VAR")]
        config_env: Option<String>,
    },
    /// The mutating admission webhook that injects the sidecar into pods
    /// of labeled namespaces (HTTPS, `POST /inject`).
    Webhook {
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: std::net::SocketAddr,
        /// PEM certificate chain and key (read again when they change).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// The sidecar image injected.
        #[arg(long, env = "SIDECAR_IMAGE")]
        image: String,
        /// The edge's tunnel URL the injected sidecars dial.
        #[arg(long, env = "PREVIEW_EDGE")]
        edge: String,
        /// The Secret in each pod's namespace holding the cluster's token.
        #[arg(long, default_value = "preview-sidecar-token")]
        token_secret: String,
        #[arg(long, default_value = "token")]
        token_key: String,
    },
    /// Validate a configuration file and exit.
    CheckConfig { file: PathBuf },
    /// Laptop mode: expose a local address through the edge, print its URL.
    Expose {
        /// Local address to expose, e.g. 127.0.0.1:3000 (or just a port).
        address: String,
        /// The edge's tunnel address, e.g. https://edge.example.com:7000
        /// (without a scheme: https://).
        #[arg(long)]
        edge: String,
        /// PEM file of the CA that signed the edge's certificate (default:
        /// the system's roots).
        #[arg(long)]
        ca: Option<String>,
        /// SHA-256 (hex) of the edge's public key, instead of or besides a CA.
        #[arg(long)]
        pin_sha256: Vec<String>,
        /// Allow an http:// edge that is not on this machine (the token and
        /// all traffic then cross the network in clear).
        #[arg(long)]
        insecure_plaintext: bool,
        /// Sidecar token (or set SIDECAR_TOKEN).
        #[arg(long, env = "SIDECAR_TOKEN", hide_env_values = true)]
        token: String,
        /// Service name in the URL.
        #[arg(long, default_value = "app")]
        name: String,
        /// Environment (default: the one the token allows).
        #[arg(long)]
        env: Option<String>,
        /// Port in the URL (default: the local port).
        #[arg(long)]
        port: Option<u16>,
        /// How the edge speaks to the service: http1, h2c (e.g. gRPC without
        /// TLS) or tls (certificate checked against the edge's system roots).
        #[arg(long, default_value = "http1", value_parser = yaml_config::choice::<ServiceProtocol>)]
        protocol: ServiceProtocol,
    },
    /// On a visitor's machine: reach a service through the edge.
    #[command(subcommand)]
    Access(AccessCommand),
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Listen locally and carry each connection to a TCP service (a
    /// database, SSH) over a WebSocket to the edge, e.g.
    /// `sidecar access tcp postgres-5432-demo.preview.example.com --listen 127.0.0.1:15432`.
    Tcp {
        /// The service's host name at the edge.
        host: String,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Where the edge listens, if not `https://HOST`: e.g.
        /// `https://edge.example.com:8443`, or `http://127.0.0.1:8080` on
        /// this machine. The certificate is checked for HOST.
        #[arg(long)]
        edge: Option<String>,
        /// PEM file of the CA that signed the edge's certificate (default:
        /// the system's roots).
        #[arg(long)]
        ca: Option<String>,
        /// The visitor's bearer token, if the route asks for one (or set
        /// PREVIEW_TOKEN; else the one `sidecar access login` saved for
        /// HOST's domain).
        #[arg(long, env = "PREVIEW_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// An HTTP proxy to reach the edge through (`CONNECT`), as
        /// http://[user:password@]host:port (default: HTTPS_PROXY).
        #[arg(long)]
        proxy: Option<String>,
    },
    /// Save a visitor token for DOMAIN and the hosts under it (e.g.
    /// `preview.example.com`), read from the terminal or --token, in the
    /// user's config directory, readable by the user alone.
    Login {
        domain: String,
        #[arg(long, hide_env_values = true)]
        token: Option<String>,
    },
    /// Forget the token saved for DOMAIN.
    Logout { domain: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Command::Access(AccessCommand::Tcp {
            host,
            listen,
            edge,
            ca,
            token,
            proxy,
        }) => {
            telemetry::init(cli.log_format);
            let token = token.or_else(|| saved_token(&host));
            let access = access_tcp(host, edge, ca, token, proxy).unwrap_or_else(|problem| {
                eprintln!("sidecar access tcp: {problem}");
                std::process::exit(2)
            });
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(sidecar::tcp::access(listen, access))
                .map_err(Into::into);
        }
        Command::Access(AccessCommand::Login { domain, token }) => {
            let token = match token {
                Some(t) => t,
                None => {
                    eprint!("Paste the token for {domain} (it is not echoed to logs): ");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            let store = sidecar::tokens::Store::for_user().map_err(anyhow::Error::msg)?;
            let path = store.save(&domain, &token).unwrap_or_else(|problem| {
                eprintln!("sidecar access login: {problem}");
                std::process::exit(2)
            });
            println!(
                "saved for {domain} and the hosts under it: {}",
                path.display()
            );
            return Ok(());
        }
        Command::Access(AccessCommand::Logout { domain }) => {
            let store = sidecar::tokens::Store::for_user().map_err(anyhow::Error::msg)?;
            match store.remove(&domain).map_err(anyhow::Error::msg)? {
                true => println!("forgot the token for {domain}"),
                false => println!("no token was saved for {domain}"),
            }
            return Ok(());
        }
        Command::CheckConfig { file } => {
            if let Err(e) = SidecarConfig::load(&file) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            println!("{}: ok", file.display());
            return Ok(());
        }
        Command::Run { config, config_env } => {
            let loaded = match config_env {
                Some(var) => match std::env::var(&var) {
                    Ok(text) => SidecarConfig::parse(&text, &format!("${var}")),
                    Err(_) => {
                        eprintln!("--config-env: the environment variable {var:?} is not set");
                        std::process::exit(1)
                    }
                },
                None => SidecarConfig::load(&config),
            };
            loaded.unwrap_or_else(|e| {
                eprintln!("{e}");
                std::process::exit(1)
            })
        }
        Command::Webhook {
            listen,
            cert,
            key,
            image,
            edge,
            token_secret,
            token_key,
        } => {
            telemetry::init(cli.log_format);
            let cert = sidecar::webhook::ReloadingCert::new(cert, key).unwrap_or_else(|problem| {
                eprintln!("sidecar webhook: {problem}");
                std::process::exit(2)
            });
            let injection = sidecar::inject::Injection {
                image,
                edge,
                token_secret,
                token_key,
            };
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let listener = tokio::net::TcpListener::bind(listen).await?;
                    println!("webhook listening {}", listener.local_addr()?);
                    sidecar::webhook::serve(listener, cert, injection).await;
                    Ok(())
                });
        }
        Command::Expose {
            address,
            edge,
            ca,
            pin_sha256,
            insecure_plaintext,
            token,
            name,
            env,
            port,
            protocol,
        } => {
            let edge = if edge.contains("://") {
                edge
            } else {
                format!("https://{edge}")
            };
            let options = EdgeTlsOptions {
                ca,
                pin_sha256,
                ..Default::default()
            };
            let learn = sidecar::config::Learn {
                tls: options.clone(),
                insecure_plaintext,
            };
            let transport =
                edge_transport(&edge, options, insecure_plaintext).unwrap_or_else(|problems| {
                    for p in problems {
                        eprintln!(
                            "sidecar expose: {p} (flags: --ca, --pin-sha256, --insecure-plaintext)"
                        );
                    }
                    std::process::exit(2)
                });
            let edge = Edge {
                url: edge,
                transport,
            };
            expose_config(address, edge, learn, token, name, env, port, protocol)?
        }
    };
    telemetry::init(cli.log_format);
    // One thread: a stream's bytes go from socket to tunnel without
    // hand-offs between threads (measured faster than a thread pool).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

/// The token `sidecar access login` saved for `host`'s domain, if any (a
/// file others may read is refused, with why).
fn saved_token(host: &str) -> Option<String> {
    let store = sidecar::tokens::Store::for_user().ok()?;
    match store.find(host) {
        Ok(Some((domain, token))) => {
            tracing::info!(%domain, "using the token saved for the domain");
            Some(token)
        }
        Ok(None) => None,
        Err(problem) => {
            eprintln!("sidecar access tcp: {problem}");
            std::process::exit(2)
        }
    }
}

/// `sidecar access tcp`'s flags → where and how to reach the edge.
fn access_tcp(
    host: String,
    edge: Option<String>,
    ca: Option<String>,
    token: Option<String>,
    proxy: Option<String>,
) -> Result<sidecar::tcp::Access, String> {
    let edge = edge.unwrap_or_else(|| format!("https://{host}"));
    let uri: http::Uri = edge
        .parse()
        .map_err(|_| format!("--edge {edge:?} is not a URL"))?;
    let (edge_host, port) =
        sidecar::replicas::host_port(&uri).ok_or_else(|| format!("--edge {edge:?} has no host"))?;
    // The certificate is the service host's, wherever the edge is dialed.
    let scheme = uri.scheme_str().unwrap_or("https");
    let options = EdgeTlsOptions {
        ca,
        ..Default::default()
    };
    let on_this_machine = || {
        std::net::ToSocketAddrs::to_socket_addrs(&(edge_host, port))
            .is_ok_and(|mut a| a.next().is_some_and(|a| a.ip().is_loopback()))
    };
    let transport = edge_transport(&format!("{scheme}://{host}:{port}"), options, false)
        .or_else(|problems| match scheme {
            // Plaintext is for an edge on this machine only.
            "http" if on_this_machine() => {
                Ok(sidecar::config::EdgeTransport::Plaintext { warn: false })
            }
            _ => Err(problems),
        })
        .map_err(|problems| problems.join("; "))?;
    let proxy = sidecar::proxy::Proxy::chosen(proxy.as_deref(), "--proxy")?;
    Ok(sidecar::tcp::Access {
        host,
        edge_host: edge_host.to_string(),
        edge_port: port,
        transport,
        token,
        proxy,
    })
}

#[allow(clippy::too_many_arguments)]
fn expose_config(
    address: String,
    edge: Edge,
    learn: sidecar::config::Learn,
    token: String,
    name: String,
    env: Option<String>,
    url_port: Option<u16>,
    protocol: ServiceProtocol,
) -> anyhow::Result<SidecarConfig> {
    let address = if address.parse::<u16>().is_ok() {
        format!("127.0.0.1:{address}")
    } else {
        address
    };
    let port: u16 = address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{address:?} is not host:port"))?;
    let host = address.rsplit_once(':').map(|(h, _)| h.to_string());
    let mut target = Target::new(name, url_port.unwrap_or(port), address);
    target.protocol = wire_protocol(protocol);
    if target.protocol == UpstreamProtocol::Tls {
        target.tls = Some(UpstreamTls {
            server_name: host.unwrap_or_default(),
            ..Default::default()
        });
    }
    Ok(SidecarConfig {
        edges: vec![edge],
        resolve_interval: sidecar::config::DEFAULT_RESOLVE_INTERVAL,
        learn_replicas: Some(learn),
        token: Secret::new(token),
        environment: env.unwrap_or_default(),
        access: String::new(),
        owner: String::new(),
        name: sidecar::config::default_name(),
        connections: 1,
        connect_timeout: sidecar::config::DEFAULT_CONNECT_TIMEOUT,
        reconnect_min: sidecar::config::DEFAULT_RECONNECT_MIN,
        reconnect_max: sidecar::config::DEFAULT_RECONNECT_MAX,
        admin: None,
        proxy: sidecar::proxy::Proxy::chosen(None, "").map_err(anyhow::Error::msg)?,
        fallback: None,
        targets: Allowlist::new([target]),
        kubernetes: None,
    })
}

async fn run(config: SidecarConfig) -> anyhow::Result<()> {
    let admin = match config.admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("admin: cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    let sidecar = Sidecar::new(config);
    let shutdown = CancellationToken::new();
    if let Some(listener) = admin {
        tracing::info!(address = %listener.local_addr()?, "admin listener up: /healthz /readyz /metrics");
        tokio::spawn(sidecar::admin::serve(
            listener,
            sidecar.status(),
            sidecar.totals(),
            shutdown.clone(),
        ));
    }
    let mut status = sidecar.status();
    // Handlers are installed before anything is printed: Ctrl-C as soon as
    // the URL shows must drain, not kill.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            shutdown.cancel();
        }
    });
    // Print the public URLs the first time the edge accepts us.
    tokio::spawn(async move {
        if status.wait_for(|s| s.connected > 0).await.is_ok() {
            let s = status.borrow().clone();
            for url in &s.urls {
                println!("Forwarding {url}");
            }
            println!("(environment {}; Ctrl-C to stop)", s.environment);
        }
    });
    sidecar.run(shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expose(protocol: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([
            "sidecar",
            "expose",
            "3000",
            "--edge",
            "edge:7000",
            "--token",
            "t",
            "--protocol",
            protocol,
        ])
    }

    #[test]
    fn expose_protocol_is_spelled_as_in_the_config() {
        let Command::Expose { protocol, .. } = expose("h2c").unwrap().command else {
            panic!("expose")
        };
        assert_eq!(protocol, ServiceProtocol::H2c);
        let err = expose("HTTP2").err().unwrap().to_string();
        assert!(
            err.contains("unknown variant `HTTP2`, expected one of `http1`, `h2c`, `tls`"),
            "{err}"
        );
    }
}
