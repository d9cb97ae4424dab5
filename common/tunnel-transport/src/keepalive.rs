//! HTTP/2 keep-alive for tunnel connections: PINGs that notice a dead peer
//! without traffic, and whose pongs measure the round trip the data
//! streams' windows are sized by ([`ConnectionFlow::set_rtt`]).

use std::time::Duration;

use h2::{Ping, PingPong};
use tokio::time::Instant;

use crate::flow::ConnectionFlow;

/// Pings sent back to back when a connection starts: the smallest round
/// trip of a few is the path's, not a busy moment's.
const FIRST_PINGS: usize = 3;

/// Pings the peer at once, a few times (the pongs give the streams a
/// round-trip time to grow their windows by), then every `interval`.
/// Resolves, with the reason, when a ping is not answered within `timeout`.
pub async fn keepalive(
    mut pings: PingPong,
    flow: &ConnectionFlow,
    interval: Duration,
    timeout: Duration,
) -> String {
    for sent in 0.. {
        if sent >= FIRST_PINGS {
            tokio::time::sleep(interval).await;
        }
        let start = Instant::now();
        match tokio::time::timeout(timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => flow.set_rtt(start.elapsed()),
            Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
            Err(_) => return format!("no keep-alive pong within {timeout:?}"),
        }
    }
    unreachable!("the loop only ends by returning")
}
