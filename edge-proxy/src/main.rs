use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_proxy::{config::token::TokenHash, Edge, EdgeConfig};

/// jemalloc: less CPU per request than glibc's allocator (whose large
/// frees consolidate the heap) and less memory per tunnel and connection
/// (measured in scripts/bench).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them). Each thread caches freed blocks per
/// size, by default as few as 20 of the larger sizes: fewer than a worker
/// has requests in flight, so under load (HTTP/2 with 100 streams) every
/// request overflowed those caches and refilled them, creating and
/// releasing whole slabs. A floor of 64 took that out: edge instructions
/// per request -3.5% over HTTP/2, -1.7% for HTTP/1.1 at 64 connections.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)] // jemalloc looks this symbol up by name
#[export_name = "_rjem_malloc_conf"]
#[used]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: a reference to the first byte of a static NUL-terminated string.
    Some(unsafe { &*c"tcache_nslots_small_min:64,tcache_nslots_large:64".as_ptr() });

/// The edge proxy: public front door for services behind sidecar tunnels.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Edge configuration file (YAML).
    #[arg(long, short, global = true, default_value = "configs/edge.yaml")]
    config: PathBuf,
    /// Worker threads (default: one per core). Each runs its own
    /// single-threaded runtime and serves the visitor and sidecar
    /// connections dealt to it; a request crosses no thread when its
    /// worker serves a tunnel connection of the sidecar it goes to.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Log lines as `text` (key=value; colour on a terminal) or `json`
    /// (one object per line, for log collectors).
    #[arg(long, global = true, default_value = "text")]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge (the default).
    Run,
    /// Validate a configuration file, print every problem, exit non-zero if any.
    CheckConfig { file: Option<PathBuf> },
    /// Print the SHA-256 of a sidecar token, for `clusters[].token_sha256`.
    /// The token is read from stdin (one line), or from `--file`: never
    /// from the command line, where `ps` and shell history would keep it.
    HashToken {
        /// Read the token from this file (e.g. a mounted Secret) instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Refused: a token on the command line is visible to every user.
        #[arg(hide = true)]
        token: Option<String>,
    },
    /// Print the SHA-256 of a certificate's public key (SPKI), for a
    /// sidecar's `tls.pin_sha256`.
    SpkiSha256 {
        /// PEM certificate (the first one in the file is used).
        cert: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::HashToken { file, token } => {
            if token.is_some() {
                eprintln!(
                    "edge-proxy hash-token: the token is not taken as an argument (ps and shell history would keep it); \
                     give it on stdin (`edge-proxy hash-token < token.txt`) or use --file FILE"
                );
                std::process::exit(2);
            }
            let secret = match &file {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            let secret = secret.trim();
            if secret.is_empty() {
                anyhow::bail!("no token on stdin or in the file");
            }
            println!("{}", TokenHash::of(secret).to_hex());
            Ok(())
        }
        Command::SpkiSha256 { cert } => {
            println!(
                "{}",
                edge_proxy::tls::spki_sha256(&cert).map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        Command::CheckConfig { file } => {
            let file = file.unwrap_or(cli.config);
            match EdgeConfig::load(&file) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Run => {
            telemetry::init(cli.log_format);
            run(&cli.config, cli.threads.map_or_else(cores, usize::from)).map_err(|e| {
                eprintln!("edge-proxy: {e:#}");
                std::process::exit(1)
            })
        }
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot bind {addr}"))
}

/// Cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(path: &std::path::Path, threads: usize) -> anyhow::Result<()> {
    let config = match EdgeConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            // Handlers first: a signal that arrives once we are listening
            // must shut down cleanly, not kill the process.
            let shutdown = shutdown_signal()?;
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            let http = bind(config.http_addr, "listen.http").await?;
            let tunnel = bind(config.tunnel_addr, "listen.tunnel").await?;
            let https = match config.https_addr {
                Some(addr) => Some(bind(addr, "listen.https").await?),
                None => None,
            };
            let admin = match config.admin_addr {
                Some(addr) => Some(bind(addr, "listen.admin").await?),
                None => None,
            };
            let mut tcp_ports = Vec::new();
            for port in &config.tcp_ports {
                let key = format!("tcp_ports {}", port.name);
                tcp_ports.push((port.name.clone(), bind(port.listen, &key).await?));
            }
            // One machine-readable line, for scripts and the conformance suite.
            let https_text = match &https {
                Some(l) => format!(" https={}", l.local_addr()?),
                None => String::new(),
            };
            let admin_text = match &admin {
                Some(l) => format!(" admin={}", l.local_addr()?),
                None => String::new(),
            };
            let mut ports_text = String::new();
            for (name, listener) in &tcp_ports {
                ports_text += &format!(" tcp:{name}={}", listener.local_addr()?);
            }
            println!(
                "edge-proxy listening http={}{https_text} tunnel={}{admin_text}{ports_text}",
                http.local_addr()?,
                tunnel.local_addr()?
            );
            let edge = Edge::new(config);
            tokio::spawn(edge_proxy::reload::watch(
                path.to_path_buf(),
                edge.reloader(),
                hangup,
            ));
            edge.serve(
                edge_proxy::Listeners {
                    http,
                    https,
                    tunnel,
                    admin,
                    tcp_ports,
                    workers: threads,
                },
                shutdown,
            )
            .await
        })
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed on call.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
