//! The demo's sample service. Prints `listening <addr>` once bound, and
//! with `--log-events` a line per request and per idle connection it
//! closes (what the conformance suite waits on).

use clap::Parser;

#[derive(Parser)]
#[command(about = "Sample HTTP service for the demo and the conformance suite")]
struct Cli {
    #[command(flatten)]
    listen: test_support::tls::ListenArgs,
    /// Close a kept-alive connection after it waited this many milliseconds
    /// for its next request (as servers with a keep-alive timeout do).
    #[arg(long)]
    idle_close_ms: Option<u64>,
    /// Print `request <method> <path>` as each request arrives, `done
    /// <method> <path>` when its handler returns or is dropped, and `idle
    /// connection closed`.
    #[arg(long)]
    log_events: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = cli.listen.tls(&["http/1.1"])?;
    let listener = tokio::net::TcpListener::bind(&cli.listen.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let counters = std::sync::Arc::new(test_support::upstream::Counters::default());
    counters
        .log_events
        .store(cli.log_events, std::sync::atomic::Ordering::Relaxed);
    if let Some(ms) = cli.idle_close_ms {
        let _ = counters
            .idle_close
            .set(std::time::Duration::from_millis(ms));
    }
    tokio::select! {
        _ = test_support::upstream::serve_with(listener, tls, counters, stop.clone()) => {}
        _ = tokio::signal::ctrl_c() => stop.cancel(),
    }
    Ok(())
}
