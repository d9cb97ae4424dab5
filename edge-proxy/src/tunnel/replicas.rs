//! The edge's replicas as sidecars are told of them: this replica's own
//! `tunnel.advertise`, the `tunnel.replicas` of the config, and the URLs
//! the other replicas announced through Redis. Sidecars keep sessions with
//! each, so any replica serves any preview with no hop between replicas.

use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::config::TunnelSettings;

#[derive(Default)]
pub struct ReplicaSet {
    /// From the config in force: `advertise` and `replicas`.
    configured: Mutex<Vec<String>>,
    /// Announced in Redis by the replicas alive now (this one included).
    learned: Mutex<Vec<String>>,
    /// This replica's own URL, announced to the others.
    advertise: Mutex<Option<String>>,
    advertise_changed: Arc<Notify>,
    /// The union, sorted, as sessions tell it.
    told: watch::Sender<Arc<[String]>>,
}

impl ReplicaSet {
    /// The config's part, at start and on every reload.
    pub fn configure(&self, tunnel: &TunnelSettings) {
        let configured = tunnel.advertise.iter().chain(&tunnel.replicas).cloned();
        *self.configured.lock().unwrap() = configured.collect();
        let mut advertise = self.advertise.lock().unwrap();
        if *advertise != tunnel.advertise {
            advertise.clone_from(&tunnel.advertise);
            self.advertise_changed.notify_one();
        }
        drop(advertise);
        self.update();
    }

    /// What Redis says the live replicas are.
    pub fn learned(&self, urls: Vec<String>) {
        *self.learned.lock().unwrap() = urls;
        self.update();
    }

    /// This replica's URL, for the others (`tunnel.advertise`).
    pub fn advertise(&self) -> Option<String> {
        self.advertise.lock().unwrap().clone()
    }

    /// Notified when [`Self::advertise`] changes.
    pub fn advertise_changed(&self) -> Arc<Notify> {
        self.advertise_changed.clone()
    }

    /// The set to tell a sidecar (empty when nothing is known), and each
    /// change of it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<[String]>> {
        self.told.subscribe()
    }

    fn update(&self) {
        let mut all: Vec<String> = self.configured.lock().unwrap().clone();
        all.extend(self.learned.lock().unwrap().iter().cloned());
        all.sort();
        all.dedup();
        self.told.send_if_modified(|told| {
            let changed = **told != *all;
            if changed {
                *told = all.into();
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_told_set_is_config_and_redis_together_and_changes_are_seen() {
        let set = ReplicaSet::default();
        let mut seen = set.subscribe();
        let second = std::time::Duration::from_secs(1);
        let tunnel = TunnelSettings {
            tls: None,
            idle_streams: 1,
            open_stream_timeout: second,
            heartbeat_interval: second,
            session_wait: second,
            advertise: Some("https://edge-1.example.com:7000".into()),
            replicas: vec!["https://edge-0.example.com:7000".into()],
        };
        set.configure(&tunnel);
        assert!(seen.has_changed().unwrap());
        assert_eq!(
            **seen.borrow_and_update(),
            [
                "https://edge-0.example.com:7000".to_string(),
                "https://edge-1.example.com:7000".into()
            ]
        );
        // Redis knows the same two and a third: only the third is news.
        set.learned(vec![
            "https://edge-2.example.com:7000".into(),
            "https://edge-1.example.com:7000".into(),
        ]);
        assert_eq!(seen.borrow().len(), 3);
        assert!(seen.has_changed().unwrap());
        seen.borrow_and_update();
        set.learned(vec!["https://edge-2.example.com:7000".into()]);
        assert!(!seen.has_changed().unwrap(), "the same set is no change");
        assert_eq!(
            set.advertise().as_deref(),
            Some("https://edge-1.example.com:7000")
        );
    }
}
