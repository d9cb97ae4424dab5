//! A TCP proxy that adds latency without limiting bandwidth: every chunk read
//! from one side is stamped with `now + delay` and queued; a writer task
//! sends each chunk when its time comes. Chunks pipeline (a full queue of
//! chunks in flight, like a long link), they are not delayed one after the
//! other. `--delay-ms 5` each way gives a 10 ms round trip.
//!
//! `bench-delay --to 127.0.0.1:7000 --delay-ms 5` prints `listening ADDR`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "TCP proxy that delays each direction by a fixed time, bandwidth unlimited")]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Address to forward to.
    #[arg(long)]
    to: String,
    /// Delay added in each direction, milliseconds.
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
    /// Bytes in flight per direction before reading pauses (back-pressure), MiB.
    #[arg(long, default_value_t = 64)]
    max_queued_mib: u32,
}

const READ_CHUNK: usize = 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(&cli.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let delay = Duration::from_millis(cli.delay_ms);
    let max_queued = ((cli.max_queued_mib as usize) << 20).max(READ_CHUNK);
    let target: Arc<str> = cli.to.into();
    loop {
        let (inbound, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let outbound = match TcpStream::connect(&*target).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("bench-delay: connect {target}: {e}");
                    return;
                }
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_r, in_w) = inbound.into_split();
            let (out_r, out_w) = outbound.into_split();
            let up = tokio::spawn(pump(in_r, out_w, delay, max_queued));
            let down = tokio::spawn(pump(out_r, in_w, delay, max_queued));
            let _ = tokio::join!(up, down);
        });
    }
}

/// Copies `from` → `to`, each chunk `delay` later than it was read. EOF is
/// forwarded (half-close) after the same delay.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration, max_queued: usize) {
    let budget = Arc::new(Semaphore::new(max_queued));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Bytes>)>();
    let reader_budget = budget.clone();
    let reader = tokio::spawn(async move {
        loop {
            // Back-pressure: room for a whole read in the queue first (so the
            // time stamp is taken when the bytes arrive), the unused rest
            // given back after the read.
            let Ok(permit) = reader_budget.acquire_many(READ_CHUNK as u32).await else {
                return;
            };
            permit.forget();
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let n = from.read_buf(&mut buf).await.unwrap_or(0);
            let due = Instant::now() + delay;
            reader_budget.add_permits(READ_CHUNK - n);
            if n == 0 {
                let _ = tx.send((due, None));
                return;
            }
            if tx.send((due, Some(buf.freeze()))).is_err() {
                return;
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        match chunk {
            Some(bytes) => {
                let n = bytes.len();
                if to.write_all(&bytes).await.is_err() {
                    break;
                }
                budget.add_permits(n);
            }
            None => {
                let _ = to.shutdown().await;
                break;
            }
        }
    }
    reader.abort();
}
