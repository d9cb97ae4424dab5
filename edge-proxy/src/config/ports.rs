//! `tcp_ports:`: ports on the edge carried as raw TCP to one service each,
//! as rathole's and frp's server ports are and ngrok's TCP endpoints: for
//! clients that cannot run the access client (`sidecar access tcp`), and
//! the cheapest path for a TCP service (no WebSocket, no hop on the
//! visitor's machine). A raw port takes no credentials, so who may connect
//! is said by address, always: `allow` is required.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;

use yaml_config::is_label;

use super::{cidrs, socket_addr, target};
use crate::routing::preview::ServiceRef;

pub mod raw {
    use super::*;

    /// One entry of `tcp_ports:`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TcpPort {
        pub name: String,
        pub listen: String,
        pub target: String,
        pub allow: Option<Vec<String>>,
    }
}

/// A raw TCP port, as validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpPort {
    /// Unique: what a connection's port is found by in the config in force
    /// (the addresses are bound at start), and what logs and metrics say.
    pub name: String,
    /// Port 0 binds any free port (tests).
    pub listen: SocketAddr,
    pub target: ServiceRef,
    /// Who may connect; anyone else's connection is closed at once.
    pub allow: Vec<IpNet>,
}

impl TcpPort {
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// `tcp_ports:`. `taken` are the `listen.*` addresses, by key.
pub fn validate(
    raw: Vec<raw::TcpPort>,
    owner_of_env: &HashMap<String, String>,
    taken: &[(&str, Option<SocketAddr>)],
    problems: &mut Vec<String>,
) -> Vec<TcpPort> {
    let mut ports = Vec::new();
    let mut names = HashSet::new();
    let mut addresses: HashMap<SocketAddr, String> = taken
        .iter()
        .filter_map(|(key, addr)| Some(((*addr)?, (*key).to_owned())))
        .filter(|(addr, _)| addr.port() != 0)
        .collect();
    for (i, p) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("tcp_ports[{i}].{key}");
        if !is_label(&p.name) {
            problems.push(format!(
                "{}: {:?} is not a name (lowercase letters, digits and '-')",
                at("name"),
                p.name
            ));
        } else if !names.insert(p.name.clone()) {
            problems.push(format!(
                "{}: {:?} names another port too",
                at("name"),
                p.name
            ));
        }
        let listen = socket_addr(&p.listen, &at("listen"), problems);
        if let Some(addr) = listen.filter(|a| a.port() != 0) {
            if let Some(other) = addresses.insert(addr, at("listen")) {
                problems.push(format!("{}: {addr} is {other} too", at("listen")));
            }
        }
        let target = target(&p.target, &at("target"), owner_of_env, problems);
        let allow = match &p.allow {
            None => {
                problems.push(format!(
                    "{}: required: the addresses that may connect, as IPs or CIDRs (a raw port takes \
                     no credentials; [0.0.0.0/0, '::/0'] lets anyone)",
                    at("allow")
                ));
                Vec::new()
            }
            Some(list) => cidrs(list, &at("allow"), problems),
        };
        if let (Some(listen), Some(target)) = (listen, target) {
            ports.push(TcpPort {
                name: p.name,
                listen,
                target,
                allow,
            });
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::super::{tests::GOOD, EdgeConfig};

    fn check(ports: &str) -> Result<Vec<super::TcpPort>, String> {
        let text = format!("{GOOD}tcp_ports:\n{ports}");
        EdgeConfig::parse(&text, "edge.yaml")
            .map(|c| c.tcp_ports)
            .map_err(|e| e.to_string())
    }

    /// Problems listed in a config error.
    fn problems(err: &str) -> usize {
        err.lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .count()
    }

    #[test]
    fn a_port_names_its_listener_target_and_who_may_connect() {
        let ports = check(
            "- { name: db, listen: '0.0.0.0:15432', target: demo/postgres:5432, allow: [10.0.0.0/8, '::1'] }",
        )
        .unwrap();
        let db = &ports[0];
        assert_eq!(db.listen, "0.0.0.0:15432".parse().unwrap());
        assert_eq!(db.target.service, "postgres");
        assert!(db.allows("10.1.2.3".parse().unwrap()));
        assert!(db.allows("::1".parse().unwrap()));
        assert!(
            db.allows("::ffff:10.0.0.1".parse().unwrap()),
            "an IPv4 client on a dual-stack socket"
        );
        assert!(!db.allows("192.168.0.1".parse().unwrap()));
    }

    #[test]
    fn every_mistake_is_named_by_its_path() {
        let err = check(
            "
- { name: db, listen: '127.0.0.1:8080', target: demo/postgres, allow: [10.0.0.0/33] }
- { name: db, listen: 'nowhere', target: other/redis:6379 }
- { name: Bad_Name, listen: '127.0.0.1:0', target: demo/redis:6379, allow: [any] }
",
        )
        .unwrap_err();
        let expected = [
            "tcp_ports[0].listen: 127.0.0.1:8080 is listen.http too",
            "tcp_ports[0].target: \"demo/postgres\" is not environment/service:port",
            "tcp_ports[0].allow[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
            "tcp_ports[1].name: \"db\" names another port too",
            "tcp_ports[1].listen: \"nowhere\" is not an address",
            "tcp_ports[1].target: environment \"other\" is not listed",
            "tcp_ports[1].allow: required",
            "tcp_ports[2].name: \"Bad_Name\" is not a name",
            "tcp_ports[2].allow[0]: \"any\" is not an IP address or CIDR",
        ];
        for e in expected {
            assert!(err.contains(e), "{e:?} not in {err}");
        }
        assert_eq!(problems(&err), expected.len(), "{err}");
    }

    #[test]
    fn ports_may_not_share_an_address_but_may_all_take_a_free_one() {
        let err = check(
            "
- { name: a, listen: '127.0.0.1:9000', target: demo/a:1, allow: ['127.0.0.1'] }
- { name: b, listen: '127.0.0.1:9000', target: demo/b:1, allow: ['127.0.0.1'] }
",
        )
        .unwrap_err();
        assert!(
            err.contains("tcp_ports[1].listen: 127.0.0.1:9000 is tcp_ports[0].listen too"),
            "{err}"
        );
        assert_eq!(problems(&err), 1, "{err}");
        let free = check(
            "
- { name: a, listen: '127.0.0.1:0', target: demo/a:1, allow: ['127.0.0.1'] }
- { name: b, listen: '127.0.0.1:0', target: demo/b:1, allow: ['127.0.0.1'] }
",
        )
        .unwrap();
        assert_eq!(free.len(), 2);
    }
}
