//! HTTP/2 keep-alive for tunnel connections: PINGs that notice a dead peer
//! without traffic.

use std::time::Duration;

use h2::{Ping, PingPong};

/// Pings the peer every `interval`. Resolves, with the reason, when a ping
/// is not answered within `timeout`.
pub async fn keepalive(mut pings: PingPong, interval: Duration, timeout: Duration) -> String {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
            Err(_) => return format!("no keep-alive pong within {timeout:?}"),
        }
    }
}
