//! Prometheus metrics, served as text at `GET /metrics` on the admin
//! listener (`listen.admin`).
//!
//! A request adds to its route's [`RouteStats`], found by the route's key
//! (a `u64` the request already has for its limits): no label strings are
//! built or hashed per request. Everything else (tunnels, limits, refusals,
//! Redis) is read from where it already lives when Prometheus scrapes.
//! Names follow Prometheus's conventions: an `edge_` prefix, base units
//! (seconds, bytes), `_total` on counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use telemetry::admin::counter;

/// Upper bounds of the latency buckets, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `status` label: the class of the status sent, or `none` when the
/// visitor left before one was.
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `hop` label: the hop that failed, empty when none did.
const HOPS: [&str; 6] = ["", "visitor", "edge", "tunnel", "sidecar", "service"];

fn hop_index(hop: &str) -> usize {
    HOPS.iter().position(|h| *h == hop).unwrap_or(0)
}

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100),
        _ => 0,
    }
}

/// What one route has served.
#[derive(Debug)]
pub struct RouteStats {
    environment: Box<str>,
    route: Box<str>,
    responses: [AtomicU64; CLASSES.len() * HOPS.len()],
    duration: Histogram,
    upstream: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl RouteStats {
    fn new(environment: &str, route: &str) -> Self {
        Self {
            environment: environment.into(),
            route: route.into(),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: Histogram::new(LATENCY_BUCKETS),
            upstream: Histogram::new(LATENCY_BUCKETS),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

/// One finished request, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// The status sent (0: none).
    pub status: u16,
    /// The hop that failed, as errors name it (`""`: none did).
    pub hop: &'static str,
    pub duration: Duration,
    /// From asking the tunnel for a connection to the service's response
    /// head (`None`: the request never reached the service).
    pub upstream: Option<Duration>,
    /// Body bytes from the visitor, and to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The counters the request path adds to; the rest is read at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: DashMap<u64, Arc<RouteStats>, foldhash::fast::RandomState>,
    /// `tcp_ports:`, by name.
    ports: DashMap<Box<str>, Arc<PortStats>>,
    pub reloads_applied: AtomicU64,
    pub reloads_refused: AtomicU64,
}

/// A route's labels, made only the first time the route is seen.
pub struct RouteName<'a> {
    pub environment: &'a str,
    pub route: std::borrow::Cow<'a, str>,
}

/// What one TCP port (`tcp_ports:`) has carried.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Connections carried to the service.
    pub connections: AtomicU64,
    /// Connections closed at once (allow list, limit, no tunnel, the
    /// service refused).
    pub refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Metrics {
    /// The counters of the TCP port `name`.
    pub fn port(&self, name: &str) -> Arc<PortStats> {
        if let Some(stats) = self.ports.get(name) {
            return stats.clone();
        }
        self.ports.entry(name.into()).or_default().clone()
    }

    /// Writes the TCP ports' families.
    pub fn encode_ports(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut ports: Vec<(Box<str>, Arc<PortStats>)> = self
            .ports
            .iter()
            .map(|p| (p.key().clone(), p.value().clone()))
            .collect();
        ports.sort_by(|a, b| a.0.cmp(&b.0));
        let of = |pick: fn(&PortStats) -> &AtomicU64| {
            ports.iter().map(move |(name, p)| {
                (
                    vec![("port", name.to_string())],
                    pick(p).load(Ordering::Relaxed),
                )
            })
        };
        counter(
            encoder,
            "edge_tcp_port_connections",
            "Connections a TCP port carried to its service",
            of(|p| &p.connections),
        )?;
        counter(
            encoder,
            "edge_tcp_port_refused_connections",
            "Connections a TCP port closed at once (allow list, limits, no tunnel, the service refused)",
            of(|p| &p.refused),
        )?;
        counter(
            encoder,
            "edge_tcp_port_received_bytes",
            "Bytes received from clients on a TCP port",
            of(|p| &p.bytes_in),
        )?;
        counter(
            encoder,
            "edge_tcp_port_sent_bytes",
            "Bytes sent to clients on a TCP port",
            of(|p| &p.bytes_out),
        )
    }

    /// Counts a finished request on the route with key `key` (0: a request
    /// refused before it was routed). `name` gives the labels of a route
    /// not seen before.
    pub fn finished<'a>(&self, key: u64, name: impl FnOnce() -> RouteName<'a>, f: Finished) {
        let stats = match self.routes.get(&key) {
            Some(stats) => stats.clone(),
            None => {
                let name = name();
                self.routes
                    .entry(key)
                    .or_insert_with(|| Arc::new(RouteStats::new(name.environment, &name.route)))
                    .clone()
            }
        };
        stats.responses[class_index(f.status) * HOPS.len() + hop_index(f.hop)]
            .fetch_add(1, Ordering::Relaxed);
        stats.duration.observe(f.duration.as_secs_f64());
        if let Some(upstream) = f.upstream {
            stats.upstream.observe(upstream.as_secs_f64());
        }
        stats.bytes_in.fetch_add(f.bytes_in, Ordering::Relaxed);
        stats.bytes_out.fetch_add(f.bytes_out, Ordering::Relaxed);
    }

    /// Writes the per-route families: requests, latency histograms, bytes.
    pub fn encode_routes(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let routes: Vec<Arc<RouteStats>> = self.routes.iter().map(|r| r.value().clone()).collect();
        let route_labels = |r: &RouteStats| {
            vec![
                ("environment", r.environment.to_string()),
                ("route", r.route.to_string()),
            ]
        };

        counter(
            encoder,
            "edge_requests",
            "Requests answered, by route, status class (none: the visitor left first) and the hop that failed (empty: none)",
            routes.iter().flat_map(|r| {
                r.responses.iter().enumerate().filter_map(move |(i, n)| {
                    let n = n.load(Ordering::Relaxed);
                    (n > 0).then(|| {
                        let mut labels = route_labels(r);
                        labels.push(("status", CLASSES[i / HOPS.len()].into()));
                        labels.push(("hop", HOPS[i % HOPS.len()].into()));
                        (labels, n)
                    })
                })
            }),
        )?;
        for (name, help, pick) in [
            (
                "edge_request_duration_seconds",
                "Time from the request's arrival to its end",
                (|r: &RouteStats| &r.duration) as fn(&RouteStats) -> &Histogram,
            ),
            (
                "edge_upstream_duration_seconds",
                "Time from asking the tunnel for a connection to the service's response head",
                |r: &RouteStats| &r.upstream,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for r in &routes {
                pick(r).encode(family.encode_family(&route_labels(r))?)?;
            }
        }
        counter(
            encoder,
            "edge_request_body_bytes",
            "Body bytes received from visitors",
            routes
                .iter()
                .map(|r| (route_labels(r), r.bytes_in.load(Ordering::Relaxed))),
        )?;
        counter(
            encoder,
            "edge_response_body_bytes",
            "Body bytes sent to visitors",
            routes
                .iter()
                .map(|r| (route_labels(r), r.bytes_out.load(Ordering::Relaxed))),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_hops_fall_into_their_labels() {
        assert_eq!(CLASSES[class_index(204)], "2xx");
        assert_eq!(CLASSES[class_index(503)], "5xx");
        assert_eq!(CLASSES[class_index(0)], "none");
        assert_eq!(HOPS[hop_index("sidecar")], "sidecar");
        assert_eq!(HOPS[hop_index("")], "");
    }

    #[test]
    fn a_route_is_named_once_and_counted_each_time() {
        let metrics = Metrics::default();
        let mut named = 0;
        for status in [200, 200, 502] {
            metrics.finished(
                7,
                || {
                    named += 1;
                    RouteName {
                        environment: "demo",
                        route: "web-80".into(),
                    }
                },
                Finished {
                    status,
                    hop: if status == 502 { "service" } else { "" },
                    duration: Duration::from_millis(3),
                    upstream: Some(Duration::from_millis(2)),
                    bytes_in: 10,
                    bytes_out: 100,
                },
            );
        }
        assert_eq!(named, 1);
        let sources = crate::inspect::Sources {
            metrics: Arc::new(metrics),
            registry: Default::default(),
            failures: Default::default(),
            gauges: Default::default(),
            shared: Default::default(),
            in_flight: Default::default(),
            health: Default::default(),
        };
        let text = sources.render();
        for line in [
            r#"edge_requests_total{environment="demo",route="web-80",status="2xx",hop=""} 2"#,
            r#"edge_requests_total{environment="demo",route="web-80",status="5xx",hop="service"} 1"#,
            r#"edge_request_duration_seconds_bucket{le="0.005",environment="demo",route="web-80"} 3"#,
            r#"edge_upstream_duration_seconds_count{environment="demo",route="web-80"} 3"#,
            r#"edge_response_body_bytes_total{environment="demo",route="web-80"} 300"#,
            r#"edge_refusals_total{code="RATE_LIMITED"} 0"#,
            "edge_draining 0",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
