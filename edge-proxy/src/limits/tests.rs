use super::*;

fn rate(rate: u32, period_secs: u64, burst: u32) -> Rate {
    Rate {
        rate: NonZeroU32::new(rate).unwrap(),
        period: Duration::from_secs(period_secs),
        burst: NonZeroU32::new(burst).unwrap(),
    }
}

#[test]
fn a_rate_admits_its_burst_then_says_when_to_retry() {
    // 60 a minute, 3 at once: the fourth waits about a second.
    let limit = RateLimit::new(Scope::Cluster, rate(60, 60, 3), false, None);
    for _ in 0..3 {
        limit.check(1).unwrap();
    }
    let refused = limit.check(1).unwrap_err();
    assert_eq!(refused.scope, Scope::Cluster);
    assert!(!refused.concurrency && !refused.dry_run);
    assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
    assert!(
        refused.retry_after > Duration::from_millis(900),
        "{refused:?}"
    );
    assert_eq!(refused.retry_after_secs(), 1);
    assert_eq!(refused.policy, "\"cluster\";q=60;w=60;burst=3");
    assert_eq!(refused.state(), "\"cluster\";r=0;t=1");
    // Another key has its own burst.
    limit.check(2).unwrap();
    assert_eq!(limit.len(), 2);
}

#[test]
fn a_dry_run_refusal_says_so() {
    let limit = RateLimit::new(Scope::ClientIp, rate(1, 3600, 1), true, None);
    limit.check(7).unwrap();
    let refused = limit.check(7).unwrap_err();
    assert!(refused.dry_run);
    assert_eq!(refused.policy, "\"client_ip\";q=1;w=3600");
    assert!(refused.retry_after_secs() > 3500);
}

#[test]
fn a_reload_keeps_the_counts_of_unchanged_limits_only() {
    let old = RateLimit::new(Scope::Route, rate(1, 3600, 1), false, Some("a".into()));
    old.check(1).unwrap();

    let mut same = RateLimit::new(Scope::Route, rate(1, 3600, 1), false, Some("a".into()));
    same.adopt(&old);
    assert!(same.check(1).is_err(), "the spent burst stays spent");

    let mut changed = RateLimit::new(Scope::Route, rate(2, 3600, 2), false, Some("a".into()));
    changed.adopt(&old);
    assert!(changed.check(1).is_ok(), "a new rate starts afresh");

    let mut other = RateLimit::new(Scope::Route, rate(1, 3600, 1), false, Some("b".into()));
    other.adopt(&old);
    assert!(other.check(1).is_ok(), "another route's limit is its own");
}

#[test]
fn a_set_adopts_by_scope_and_owner() {
    let mut old = LimitSet::default();
    old.defaults[Scope::Cluster as usize].rate = Some(RateLimit::new(
        Scope::Cluster,
        rate(1, 3600, 1),
        false,
        None,
    ));
    old.clusters.insert(
        "c".into(),
        Limit {
            rate: Some(RateLimit::new(
                Scope::Cluster,
                rate(1, 3600, 1),
                false,
                Some("c".into()),
            )),
            cap: None,
        },
    );
    old.default_for(Scope::Cluster)
        .rate
        .as_ref()
        .unwrap()
        .check(5)
        .unwrap();
    old.clusters["c"].rate.as_ref().unwrap().check(5).unwrap();
    let mut new = old.clone();
    // Fresh state, as a reload builds it.
    for limit in new.rates_mut() {
        *limit = RateLimit::new(limit.scope, limit.rate, false, limit.owner.clone());
    }
    assert!(new
        .default_for(Scope::Cluster)
        .rate
        .as_ref()
        .unwrap()
        .check(5)
        .is_ok());
    let mut new = LimitSet {
        defaults: std::array::from_fn(|_| Limit::default()),
        ..new
    };
    new.defaults[Scope::Cluster as usize].rate = Some(RateLimit::new(
        Scope::Cluster,
        rate(1, 3600, 1),
        false,
        None,
    ));
    adopt(new.rates_mut(), old.rates());
    assert!(new
        .default_for(Scope::Cluster)
        .rate
        .as_ref()
        .unwrap()
        .check(5)
        .is_err());
    assert!(new.clusters["c"].rate.as_ref().unwrap().check(5).is_err());
    assert_eq!(new.keys(), 2);
}

#[test]
fn a_cap_counts_what_is_in_flight() {
    let gauges = Arc::new(Gauges::default());
    let cap = Cap {
        scope: Scope::Tunnel,
        max: 2,
        dry_run: false,
    };
    let a = gauges.acquire(&cap, Use::Requests, 9).unwrap();
    let _b = gauges.acquire(&cap, Use::Requests, 9).unwrap();
    let (refused, permit) = gauges.acquire(&cap, Use::Requests, 9).unwrap_err();
    assert!(permit.is_none());
    assert!(refused.concurrency);
    assert_eq!(refused.policy, "\"tunnel\";q=2;qu=\"concurrent-requests\"");
    assert_eq!(gauges.count(Scope::Tunnel, Use::Requests, 9), 2);
    // Other keys and other uses are counted apart.
    let _c = gauges.acquire(&cap, Use::Requests, 10).unwrap();
    let _d = gauges.acquire(&cap, Use::Upgrades, 9).unwrap();
    drop(a);
    let _e = gauges.acquire(&cap, Use::Requests, 9).unwrap();
    drop((_b, _c, _d, _e));
    assert_eq!(gauges.keys(), 0, "no key stays behind at zero");
}

#[test]
fn a_dry_run_cap_counts_past_its_max() {
    let gauges = Arc::new(Gauges::default());
    let cap = Cap {
        scope: Scope::ClientIp,
        max: 1,
        dry_run: true,
    };
    let _a = gauges.acquire(&cap, Use::Requests, 1).unwrap();
    let (refused, permit) = gauges.acquire(&cap, Use::Requests, 1).unwrap_err();
    assert!(refused.dry_run && permit.is_some());
    assert_eq!(gauges.count(Scope::ClientIp, Use::Requests, 1), 2);
    gauges.count_refusal(&refused);
    assert_eq!(
        gauges.would_refuse[Scope::ClientIp as usize].load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        gauges.refused[Scope::ClientIp as usize].load(Ordering::Relaxed),
        0
    );
}

#[test]
fn ipv6_clients_count_by_their_64_prefix() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        ip_key(ip("2001:db8:1:2::1")),
        ip_key(ip("2001:db8:1:2:ffff::9"))
    );
    assert_ne!(ip_key(ip("2001:db8:1:2::1")), ip_key(ip("2001:db8:1:3::1")));
    assert_eq!(ip_key(ip("::ffff:192.0.2.1")), ip_key(ip("192.0.2.1")));
    assert_ne!(ip_key(ip("192.0.2.1")), ip_key(ip("192.0.2.2")));
}
