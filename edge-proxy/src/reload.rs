//! Hot reload: the config file is re-read when its content (or that of a
//! certificate or key it names) changes (polled,
//! which also sees Kubernetes ConfigMap symlink swaps) and on SIGHUP. A new
//! config that does not validate is refused with every reason logged; the
//! last good one keeps running.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::Signal;
use tracing::error;

use crate::config::EdgeConfig;
use crate::server::Reloader;

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Watches `path` until the task is dropped. `hangup` is a SIGHUP stream,
/// installed by the caller before it announces itself.
pub async fn watch(path: PathBuf, reloader: Reloader, mut hangup: Signal) {
    let mut last = fingerprint(&path, &reloader.watched_files());
    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            _ = tokio::time::sleep(POLL_INTERVAL) => {
                if fingerprint(&path, &reloader.watched_files()) == last {
                    continue;
                }
                "file changed"
            }
        };
        last = fingerprint(&path, &reloader.watched_files());
        match EdgeConfig::load(&path) {
            Ok(config) => reloader.apply(config, trigger),
            Err(e) => {
                error!(trigger, error = %e, "config reload refused; keeping the last good config")
            }
        }
    }
}

/// A hash of the config file and the certificate files it names (missing
/// files hash as absent, so their return is noticed too).
fn fingerprint(path: &Path, others: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for file in std::iter::once(path).chain(others.iter().map(PathBuf::as_path)) {
        std::fs::read(file).ok().hash(&mut h);
    }
    h.finish()
}
