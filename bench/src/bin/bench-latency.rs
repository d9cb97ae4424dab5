//! Latency at one connection: one keep-alive HTTP/1.1 connection, one GET at
//! a time (blocking sockets, `TCP_NODELAY`, no runtime), every request timed.
//! Prints one JSON object: requests, errors, p50/p90/p99/p99.9/max in µs.
//!
//! `bench-latency --addr 127.0.0.1:8080 --host example.localhost --duration 10`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench::http1::{parse_head, BodyDecoder};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Exact per-request latency over one keep-alive HTTP/1.1 connection")]
struct Cli {
    /// Address to connect to.
    #[arg(long)]
    addr: String,
    /// Host header (default: the address).
    #[arg(long)]
    host: Option<String>,
    #[arg(long, default_value = "/")]
    path: String,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of requests before measuring (not recorded).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Stop after this many measured requests even if time is left.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: usize,
    /// Requests per second at most (one every 1/rate s, as an ordinary
    /// client would send them); default: back to back.
    #[arg(long)]
    rate: Option<f64>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Conn {
    fn open(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            stream,
            buf: vec![0; 64 * 1024],
            filled: 0,
        })
    }

    fn read_more(&mut self) -> anyhow::Result<()> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..])?;
        if n == 0 {
            bail!("connection closed");
        }
        self.filled += n;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Sends `request`, reads one whole response; returns its status and
    /// whether the server will close the connection.
    fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, bool)> {
        self.stream.write_all(request)?;
        let head = loop {
            if let Some(head) = parse_head(&self.buf[..self.filled])? {
                break head;
            }
            self.read_more()?;
        };
        self.consume(head.len);
        let mut body = BodyDecoder::new(head.framing);
        loop {
            let used = body.feed(&self.buf[..self.filled], None)?;
            self.consume(used);
            if body.is_done() {
                return Ok((head.status, head.close));
            }
            if let Err(e) = self.read_more() {
                body.finish_on_eof().map_err(|_| e)?;
                return Ok((head.status, true));
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let host = cli.host.clone().unwrap_or_else(|| cli.addr.clone());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-latency\r\n\r\n",
        cli.path
    );
    let request = request.as_bytes();
    let mut conn = Conn::open(&cli.addr)?;
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(cli.warmup);
    let end = warmup_end + Duration::from_secs_f64(cli.duration);
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 20);
    let (mut errors, mut reconnects) = (0u64, 0u64);
    let mut first_error = None;
    let mut measured_from = None;
    let pace = cli.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next = Instant::now();
    loop {
        if let Some(pace) = pace {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += pace;
        }
        let t0 = Instant::now();
        if t0 >= end || samples.len() >= cli.max_requests {
            break;
        }
        let result = conn.exchange(request);
        let elapsed = t0.elapsed();
        let measuring = t0 >= warmup_end;
        if measuring && measured_from.is_none() {
            measured_from = Some(t0);
        }
        match result {
            Ok((status, close)) => {
                if status != 200 {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("status {status}"));
                } else if measuring {
                    samples.push(elapsed.as_nanos() as u64);
                }
                if close {
                    reconnects += 1;
                    conn = Conn::open(&cli.addr)?;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
                if errors > 1000 {
                    break;
                }
                reconnects += 1;
                conn = Conn::open(&cli.addr)?;
            }
        }
    }
    let measured_secs = measured_from
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    samples.sort_unstable();
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0
    };
    let out = serde_json::json!({
        "requests": samples.len(),
        "seconds": measured_secs,
        "rps": if measured_secs > 0.0 { samples.len() as f64 / measured_secs } else { 0.0 },
        "errors": errors,
        "first_error": first_error,
        "reconnects": reconnects,
        "mean_us": mean,
        "p50_us": percentile(&samples, 50.0),
        "p90_us": percentile(&samples, 90.0),
        "p99_us": percentile(&samples, 99.0),
        "p999_us": percentile(&samples, 99.9),
        "max_us": samples.last().map(|&n| n as f64 / 1000.0).unwrap_or(0.0),
    });
    println!("{out}");
    if samples.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
