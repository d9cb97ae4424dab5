//! Differential, two of the three ways: every corpus case through the
//! policy crate directly and through the built filter in our host must
//! give the same headers to the upstream and the visitor, with nothing
//! normalized (the third way, Envoy, is `envoy.rs`).

use crate::common;

use common::corpus::{self, POLICIES};
use common::{load_policy, semantic, through_filter, Exchange};

#[test]
fn native_and_our_host_agree_on_every_case() {
    let policies = corpus::policies();
    let mut instances: Vec<_> = POLICIES
        .iter()
        .map(|p| load_policy(p).instantiate())
        .collect();
    let cases = corpus::cases();
    let (mut local, mut with_claims, mut mismatches) = (0, 0, Vec::new());
    for case in &cases {
        let want = corpus::native(&policies[case.policy], case, true);
        let claims = case.claim_pairs();
        let got = through_filter(
            &mut instances[case.policy],
            &case.request_list(),
            &case.response_list(),
            &case.stream_info(&claims),
        );
        local += matches!(want, Exchange::Local { .. }) as usize;
        with_claims += !claims.is_empty() as usize;
        if semantic(&want) != semantic(&got) {
            mismatches.push(format!(
                "case {} (policy {}): {} {} {}\n--- native\n{}--- our host\n{}",
                case.id,
                case.policy,
                case.method,
                case.host,
                case.path,
                semantic(&want),
                semantic(&got)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // The corpus exercises what it claims to.
    assert!(cases.len() >= 500);
    assert!(local >= 20, "preflights answered locally: {local}");
    assert!(with_claims >= 100);
    for i in &instances {
        assert_eq!(i.crashes(), 0);
    }
}
