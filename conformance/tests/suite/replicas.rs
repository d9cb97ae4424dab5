//! Several replicas of the edge on one Redis (rate limits shared are in
//! `limits.rs`, sign-outs in `login.rs`): which replica holds which
//! tunnel, published with a lapse time.
//!
//! Needs `redis-server` and `redis-cli` (`scripts/test` installs them).

use std::time::Duration;

use conformance::{exchange, redis_cli, Stack};
use serde_json::Value;

/// `(replica, lapses at)` of each claim on environment `demo`, and
/// Redis's clock (unix seconds).
fn claims(dir: &std::path::Path) -> (Vec<(String, u64)>, u64) {
    let listed = redis_cli(dir, "ZRANGE preview-edge:tunnels:demo 0 -1 WITHSCORES");
    let lines: Vec<&str> = listed.lines().collect();
    let claims = lines
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_owned(), pair[1].parse().unwrap()))
        .collect();
    let now = redis_cli(dir, "TIME");
    let now = now.lines().next().unwrap().parse().unwrap();
    (claims, now)
}

fn held_by(dir: &std::path::Path, stack: &Stack) -> bool {
    let pid = format!("/{}", stack.edge.pid());
    claims(dir)
        .0
        .iter()
        .any(|(replica, _)| replica.ends_with(&pid))
}

/// Each replica claims the environments it holds a tunnel of, for 30 s at
/// a time; one that loses its last tunnel of an environment, or shuts
/// down, withdraws at once; and one without the tunnel tells its visitors
/// that other replicas hold it.
#[test]
fn replicas_publish_the_tunnels_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let _redis = conformance::redis_server(dir.path());
    let yaml = conformance::redis_yaml(dir.path(), "");
    let mut a = Stack::start_with_edge_yaml(&yaml);
    let mut b = Stack::start_with_edge_yaml(&yaml);
    test_support::wait::until_blocking("both replicas to claim demo", || {
        held_by(dir.path(), &a) && held_by(dir.path(), &b)
    });
    let (claims_now, now) = claims(dir.path());
    assert_eq!(claims_now.len(), 2, "{claims_now:?}");
    for (replica, lapses) in &claims_now {
        assert!(
            *lapses > now && *lapses <= now + 30,
            "{replica} lapses at {lapses}, now {now}"
        );
    }

    // B's sidecar goes: B withdraws, and tells its visitors where the
    // tunnel is not.
    b.sidecar.as_mut().unwrap().kill();
    test_support::wait::until_blocking("B to withdraw its claim", || !held_by(dir.path(), &b));
    assert!(held_by(dir.path(), &a));
    let (status, _, body) = exchange(&b, &b.preview_host(), "/", &[]);
    assert_eq!(status, 503, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "TUNNEL_UNAVAILABLE");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("other replicas"),
        "{error}"
    );
    // A alone holds it: its visitors are served.
    let (status, _, body) = exchange(&a, &a.preview_host(), "/", &[]);
    assert_eq!(status, 200, "{body}");

    // Without the tunnel anywhere, B says only that it is not connected.
    a.edge.interrupt();
    a.edge.wait_exit(Duration::from_secs(30));
    assert!(claims(dir.path()).0.is_empty(), "A withdrew at shutdown");
    let (status, _, body) = exchange(&b, &b.preview_host(), "/", &[]);
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("other replicas"), "{body}");
}

/// The sidecar names one replica; the replicas announce their
/// `tunnel.advertise` through Redis and tell it of each other, so it keeps
/// sessions with both and either serves the preview. A replica leaving is
/// taken out of the set at once, and the sidecar drains its sessions there.
#[test]
fn sidecars_learn_the_other_replicas_from_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let _redis = conformance::redis_server(dir.path());
    let yaml = conformance::redis_yaml(dir.path(), "");
    let plain = conformance::Tunnel::Plain;
    let a = Stack::start_tunnel(plain, &yaml, &[], &[]);
    let mut b = Stack::start_tunnel(plain, &yaml, &[], &[]);
    // B's own sidecar goes: the only one left names A alone.
    b.sidecar.as_mut().unwrap().kill();
    let sidecar = a.sidecar.as_ref().unwrap();
    for stack in [&a, &b] {
        let advertise = format!("tunnel:\n  advertise: http://{}\n", stack.tunnel_addr);
        stack.write_edge_yaml(&conformance::edge_yaml(&format!("{yaml}{advertise}")));
    }

    let told = sidecar.wait_line("the edge told of a replica", Duration::from_secs(30));
    assert!(told.contains(&b.tunnel_addr), "{told}");
    // Two sessions with each replica (the default `connections`).
    sidecar.wait_lines("tunnel up", 4, Duration::from_secs(10));
    let announced = redis_cli(dir.path(), "ZRANGE preview-edge:replicas 0 -1");
    for stack in [&a, &b] {
        assert!(announced.contains(&stack.tunnel_addr), "{announced}");
    }
    for stack in [&a, &b] {
        let (status, _, body) = exchange(stack, &stack.preview_host(), "/", &[]);
        assert_eq!(status, 200, "{body}");
    }

    // B leaves: out of the set at once, its sessions drained by the sidecar.
    b.edge.interrupt();
    b.edge.wait_exit(Duration::from_secs(30));
    let announced = redis_cli(dir.path(), "ZRANGE preview-edge:replicas 0 -1");
    assert!(!announced.contains(&b.tunnel_addr), "{announced}");
    sidecar.wait_line("edge replica gone", Duration::from_secs(10));
    let (status, _, body) = exchange(&a, &a.preview_host(), "/", &[]);
    assert_eq!(status, 200, "{body}");
}
