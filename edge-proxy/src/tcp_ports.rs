//! Raw TCP ports (`tcp_ports:`). A connection on one is checked against
//! the port's `allow` list and the pre-auth guard (`limits.guard`, per
//! client address, counted per connection), then carried over one tunnel
//! stream to the port's service: bytes both ways, each direction ending
//! with a half-close, until both have. The sidecar dials the service from
//! its allowlist, as for any stream. One log line per connection, with
//! its bytes; the port's counters in `/metrics`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::info;

use crate::config::EdgeConfig;
use crate::http::context::InFlight;
use crate::http::forwarding::new_request_id;
use crate::limits::{ip_key, Gauges};
use crate::metrics::Metrics;
use crate::tunnel::connector::TunnelConnector;
use crate::tunnel::registry::{RouteError, TunnelRegistry};

/// Buffer for each direction of a connection: enough for bulk transfers
/// to move in few writes, small beside a connection's socket buffers.
const COPY_BUFFER: usize = 32 * 1024;

/// What every TCP port's connections need.
pub struct TcpPorts {
    pub config: Arc<ArcSwap<EdgeConfig>>,
    pub registry: Arc<TunnelRegistry>,
    pub gauges: Arc<Gauges>,
    pub metrics: Arc<Metrics>,
    /// Connections count as requests in progress: a drain waits for them.
    pub in_flight: Arc<AtomicUsize>,
}

impl TcpPorts {
    /// Serves a connection accepted on the port named `name`.
    pub async fn serve(&self, mut visitor: TcpStream, peer: SocketAddr, name: &str) {
        let started = Instant::now();
        let config = self.config.load_full();
        let Some(port) = config.tcp_ports.iter().find(|p| p.name == name) else {
            // Removed by a reload: its listener stays bound until restart.
            return info!(
                port = name,
                client = %peer,
                "tcp connection closed: the port is no longer in the config"
            );
        };
        let target = port.target.to_string();
        let stats = self.metrics.port(name);
        let id = new_request_id();
        let refused = |reason: &dyn std::fmt::Display| {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            info!(
                port = name, client = %peer.ip(), %target, request_id = %id,
                %reason, "tcp connection refused"
            );
        };
        let ip = peer.ip().to_canonical();
        if !port.allows(ip) {
            return refused(&"the address is not in the port's allow list");
        }
        if let Some(Err(over)) = config.limits.guard.as_ref().map(|g| g.check(ip_key(ip))) {
            self.gauges.count_refusal(&over);
            if !over.dry_run {
                return refused(&format_args!(
                    "over the per-address rate (limits.guard: {})",
                    over.policy
                ));
            }
            info!(port = name, request_id = %id, policy = %over.policy,
                "a dry-run limit would refuse this connection");
        }
        let lease = match self.registry.route(&port.target) {
            Ok(lease) => lease,
            Err(RouteError::NotFound) => {
                return refused(&format_args!("no sidecar registered {target}"))
            }
            Err(e) => return refused(&e),
        };
        let connector = TunnelConnector {
            session: lease.clone(),
            service: port.target.service.clone(),
            port: port.target.port,
            request_id: id.clone(),
            open_stream_timeout: config.tunnel.open_stream_timeout,
            connect_timeout: config.upstream.connect_timeout,
            websocket: false,
        };
        drop(config); // a reload meanwhile frees the old one
        let mut service = match connector.socket().await {
            Ok(socket) => socket,
            Err(e) => return refused(&e),
        };
        let _in_flight = InFlight::new(&self.in_flight);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let mut counted = Counted::new(&mut visitor);
        let result = tokio::io::copy_bidirectional_with_sizes(
            &mut counted,
            &mut service,
            COPY_BUFFER,
            COPY_BUFFER,
        )
        .await;
        let (bytes_in, bytes_out) = (counted.read, counted.written);
        stats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        stats.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        let duration_ms = started.elapsed().as_millis() as u64;
        let client = peer.ip();
        match result {
            Ok(_) => info!(port = name, %client, %target, request_id = %id, bytes_in, bytes_out,
                duration_ms, "tcp connection"),
            Err(e) => info!(port = name, %client, %target, request_id = %id, bytes_in, bytes_out,
                duration_ms, error = %e, "tcp connection cut"),
        }
    }
}

/// The visitor's side of a connection, counting its bytes.
struct Counted<'a> {
    io: &'a mut TcpStream,
    read: u64,
    written: u64,
}

impl<'a> Counted<'a> {
    fn new(io: &'a mut TcpStream) -> Self {
        Self {
            io,
            read: 0,
            written: 0,
        }
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut *this.io).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        result
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut *this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            this.written += n as u64;
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
