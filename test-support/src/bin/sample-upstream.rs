//! The demo's sample service. Prints `listening <addr>` once bound.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Sample HTTP service for the demo and the conformance suite")]
struct Cli {
    #[command(flatten)]
    listen: test_support::tls::ListenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = cli.listen.tls(&["http/1.1"])?;
    let listener = tokio::net::TcpListener::bind(&cli.listen.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let counters = Default::default();
    tokio::select! {
        _ = test_support::upstream::serve_with(listener, tls, counters, stop.clone()) => {}
        _ = tokio::signal::ctrl_c() => stop.cancel(),
    }
    Ok(())
}
