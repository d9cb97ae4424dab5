//! The edge's replicas: every address the edge URLs' host names resolve
//! to, looked up again every `resolve_interval`. The sidecar keeps its
//! sessions with each replica, so whichever replica a visitor reaches holds
//! a tunnel of its own (no hop between replicas), and a replica that
//! appears (a new pod behind a headless Service) is dialed at the next
//! lookup. The edge may tell of more replicas (`Welcome.replicas`,
//! `Replicas`): with `learn_replicas`, those are kept too.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::config::Edge;

/// One replica to keep sessions with: an edge URL (its index among the
/// edges known: the configured ones first, then those the edge told of)
/// and one address its host resolves to, or `None` while the name
/// does not resolve (the sessions then dial by name and report why they
/// cannot connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Replica {
    pub edge: usize,
    pub addr: Option<SocketAddr>,
}

/// The host (without IPv6 brackets) and port of an edge URL, the port
/// defaulting by scheme; `None` without a host.
pub fn host_port(uri: &http::Uri) -> Option<(&str, u16)> {
    let host = uri.host()?.trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if matches!(uri.scheme_str(), Some("https" | "wss")) {
            443
        } else {
            80
        });
    Some((host, port))
}

/// The replicas now: for each URL (with its index), the addresses its host
/// resolves to.
pub async fn resolve(edges: &[(usize, &Edge)], previous: &HashSet<Replica>) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for &(edge, e) in edges {
        // Not a URL with a host: the session says why.
        let uri: Option<http::Uri> = e.url.parse().ok();
        let looked_up = match uri.as_ref().and_then(host_port) {
            Some((host, port)) => match host.parse::<IpAddr>() {
                Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
                Err(_) => tokio::net::lookup_host((host, port))
                    .await
                    .map(|addrs| addrs.collect()),
            },
            None => Ok(Vec::new()),
        };
        let looked_up = looked_up.unwrap_or_else(|error| {
            tracing::debug!(edge = %e.url, %error, "cannot resolve the edge's name");
            Vec::new()
        });
        replicas.extend(choose(edge, looked_up, previous));
    }
    replicas
}

/// One URL's replicas from what its name resolved to. Addresses of one
/// family only, the resolver's first choice (RFC 6724 order): `localhost`
/// is one replica, not an IPv4 and an IPv6 one of which only one listens.
/// Nothing resolved (a DNS failure, an empty answer): the replicas found
/// last time stay, rather than sessions that work being dropped; none
/// ever found: the URL by name.
fn choose(edge: usize, resolved: Vec<SocketAddr>, previous: &HashSet<Replica>) -> Vec<Replica> {
    let Some(first) = resolved.first() else {
        let mut kept: Vec<_> = previous
            .iter()
            .filter(|r| r.edge == edge && r.addr.is_some())
            .copied()
            .collect();
        if kept.is_empty() {
            kept.push(Replica { edge, addr: None });
        }
        kept.sort();
        return kept;
    };
    let v4 = first.is_ipv4();
    let mut chosen: Vec<_> = resolved
        .iter()
        .filter(|a| a.is_ipv4() == v4)
        .map(|&a| Replica {
            edge,
            addr: Some(a),
        })
        .collect();
    chosen.sort();
    chosen.dedup();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn at(edge: usize, a: &str) -> Replica {
        Replica {
            edge,
            addr: Some(addr(a)),
        }
    }

    #[test]
    fn every_address_of_the_preferred_family_is_a_replica() {
        let resolved = vec![
            addr("10.0.0.2:7000"),
            addr("[fd00::1]:7000"),
            addr("10.0.0.1:7000"),
            addr("10.0.0.2:7000"),
        ];
        assert_eq!(
            choose(0, resolved, &HashSet::new()),
            [at(0, "10.0.0.1:7000"), at(0, "10.0.0.2:7000")]
        );
        let v6_first = vec![addr("[::1]:7000"), addr("127.0.0.1:7000")];
        assert_eq!(choose(1, v6_first, &HashSet::new()), [at(1, "[::1]:7000")]);
    }

    #[test]
    fn a_failed_lookup_keeps_the_replicas_found_before_or_dials_by_name() {
        let previous = HashSet::from([
            at(0, "10.0.0.1:7000"),
            at(1, "10.0.1.1:7000"),
            Replica {
                edge: 0,
                addr: None,
            },
        ]);
        assert_eq!(choose(0, Vec::new(), &previous), [at(0, "10.0.0.1:7000")]);
        assert_eq!(
            choose(2, Vec::new(), &previous),
            [Replica {
                edge: 2,
                addr: None
            }]
        );
    }

    #[tokio::test]
    async fn literal_addresses_need_no_lookup_and_names_resolve() {
        let edges = [
            Edge::plaintext("http://127.0.0.1:7000"),
            Edge::plaintext("http://[::1]:7001"),
            Edge::plaintext("http://localhost:7002"),
            Edge::plaintext("not a URL"),
        ];
        let edges: Vec<_> = edges.iter().enumerate().collect();
        let replicas = resolve(&edges, &HashSet::new()).await;
        assert_eq!(
            replicas[..2],
            [at(0, "127.0.0.1:7000"), at(1, "[::1]:7001")]
        );
        assert!(
            replicas[2].edge == 2
                && replicas[2]
                    .addr
                    .is_some_and(|a| a.ip().is_loopback() && a.port() == 7002),
            "{replicas:?}"
        );
        assert_eq!(
            replicas[3..],
            [Replica {
                edge: 3,
                addr: None
            }]
        );
    }
}
