//! The gRPC echo service (`echo.v1.Echo`) as a process, for the conformance
//! suite. Prints `listening <addr>` once bound, and `cancelled <n>` as
//! calls are cancelled.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Parser;
use test_support::grpc::{serve, EchoService, GrpcCounters};

/// Prints `cancelled <n>` whenever calls are cancelled (the suite checks
/// that deadlines and resets reach the service).
async fn report_cancellations(counters: Arc<GrpcCounters>) {
    let mut seen = 0;
    loop {
        let changed = counters.cancelled_changed.notified();
        tokio::pin!(changed);
        // Registered before the check: a cancellation in between still wakes us.
        changed.as_mut().enable();
        let now = counters.cancelled.load(Ordering::SeqCst);
        if now != seen {
            seen = now;
            println!("cancelled {now}");
        }
        changed.await;
    }
}

#[derive(Parser)]
#[command(about = "gRPC echo service for the conformance suite (h2c, or TLS with ALPN h2)")]
struct Cli {
    #[command(flatten)]
    listen: test_support::tls::ListenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = cli.listen.tls(&["h2"])?;
    let listener = tokio::net::TcpListener::bind(&cli.listen.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let service = EchoService::default();
    tokio::spawn(report_cancellations(service.counters.clone()));
    tokio::select! {
        r = serve(listener, tls, service, stop.clone()) => r?,
        _ = tokio::signal::ctrl_c() => stop.cancel(),
    }
    Ok(())
}
