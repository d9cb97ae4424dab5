//! The demo's sample service. Prints `listening <addr>` once bound.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Sample HTTP service for the demo and the conformance suite")]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            Some(test_support::tls::server_config(cert, key, &["http/1.1"])?)
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let counters = Default::default();
    tokio::select! {
        _ = test_support::upstream::serve_with(listener, tls, counters, stop.clone()) => {}
        _ = tokio::signal::ctrl_c() => stop.cancel(),
    }
    Ok(())
}
