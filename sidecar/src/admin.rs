//! The sidecar's admin listener (`admin: IP:port`), as the edge's:
//! `GET /healthz` (200 while the process runs), `GET /readyz` (200 while
//! at least one session is up and the sidecar is not shutting down) and
//! `GET /metrics` (Prometheus, `sidecar_` names).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use telemetry::admin::{counter, gauge};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::stream::Stats;
use crate::Status;

/// What `/metrics` reads when scraped.
#[derive(Clone)]
struct Gauges {
    status: watch::Receiver<Status>,
    totals: Arc<Stats>,
    shutdown: CancellationToken,
}

impl fmt::Debug for Gauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gauges")
    }
}

impl Gauges {
    fn ready(&self) -> bool {
        self.status.borrow().connected > 0 && !self.shutdown.is_cancelled()
    }

    fn render(&self) -> String {
        telemetry::admin::exposition(self.clone())
    }
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = self.status.borrow().clone();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let gauges = [
            (
                "sidecar_sessions_connected",
                "Tunnel sessions the edge accepts now",
                status.connected as i64,
            ),
            (
                "sidecar_edge_replicas",
                "Edge replicas (addresses) this sidecar keeps sessions with",
                status.replicas as i64,
            ),
            (
                "sidecar_streams_active",
                "Connections to services being piped now",
                load(&self.totals.active) as i64,
            ),
            (
                "sidecar_draining",
                "The sidecar is shutting down (1) or serving (0)",
                i64::from(self.shutdown.is_cancelled()),
            ),
        ];
        for (name, help, value) in gauges {
            gauge(&mut encoder, name, help, [(vec![], value)])?;
        }
        let counters = [
            (
                "sidecar_session_failures",
                "Tunnel sessions that ended in a failure (lost, refused)",
                status.failures,
            ),
            (
                "sidecar_streams_opened",
                "Connections to services the edge asked for",
                load(&self.totals.opened),
            ),
            (
                "sidecar_streams_failed",
                "Connections to services that could not be made (refused, not allowed, timed out)",
                load(&self.totals.failed),
            ),
            (
                "sidecar_service_sent_bytes",
                "Bytes sent to services",
                load(&self.totals.bytes_to_targets),
            ),
            (
                "sidecar_service_received_bytes",
                "Bytes received from services",
                load(&self.totals.bytes_from_targets),
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut encoder, name, help, [(vec![], value)])?;
        }
        gauge(
            &mut encoder,
            "sidecar_build_info",
            "The sidecar's version",
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)],
        )
    }
}

/// Serves `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    status: watch::Receiver<Status>,
    totals: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let gauges = Gauges {
        status,
        totals,
        shutdown,
    };
    let handler = Arc::new(move |method: &Method, path: &str, _: &HeaderMap| {
        telemetry::admin::probes(method, path, || gauges.ready(), || gauges.render())
            .unwrap_or_else(|| {
                telemetry::admin::text(StatusCode::NOT_FOUND, "/healthz, /readyz or /metrics\n")
            })
    });
    telemetry::admin::serve(listener, handler).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_with_a_session_until_shutdown_and_counted() {
        let (tx, status) = watch::channel(Status::default());
        let totals = Arc::new(Stats::default());
        let session = Stats::under(totals.clone());
        session.add(|s| &s.opened, 2);
        session.add(|s| &s.bytes_to_targets, 100);
        let gauges = Gauges {
            status,
            totals,
            shutdown: CancellationToken::new(),
        };
        assert!(!gauges.ready());
        tx.send_modify(|s| {
            s.connected = 1;
            s.replicas = 2;
        });
        assert!(gauges.ready());
        let text = gauges.render();
        for line in [
            "sidecar_sessions_connected 1",
            "sidecar_edge_replicas 2",
            "sidecar_streams_opened_total 2",
            "sidecar_service_sent_bytes_total 100",
            "sidecar_draining 0",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        gauges.shutdown.cancel();
        assert!(!gauges.ready());
    }
}
