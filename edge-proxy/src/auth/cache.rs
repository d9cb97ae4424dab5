//! A bounded map from a credential (a bearer token, a session cookie) to
//! what verifying it proved, each entry kept until a time: a hot client
//! costs a lookup, and a flood of distinct credentials costs verification
//! work, never memory.

use std::collections::HashMap;
use std::sync::Mutex;

/// Entries kept, per cache.
pub const CACHE_ENTRIES: usize = 4096;

#[derive(Debug)]
pub struct Cache<V> {
    map: Mutex<HashMap<Box<str>, (V, u64), foldhash::fast::FixedState>>,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Cache {
            map: Mutex::new(HashMap::default()),
        }
    }
}

impl<V: Clone> Cache<V> {
    /// The value for `key` if it holds at `now` (unix seconds).
    pub fn get(&self, key: &str, now: u64) -> Option<V> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (value, until) = map.get(key)?;
        if *until >= now {
            return Some(value.clone());
        }
        map.remove(key);
        None
    }

    /// Remembers `value` for `key` until `until`. When full, lapsed
    /// entries go; if none had, everything does.
    pub fn insert(&self, key: &str, value: V, until: u64, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_ENTRIES {
            map.retain(|_, (_, u)| *u >= now);
            if map.len() >= CACHE_ENTRIES {
                map.clear();
            }
        }
        map.insert(key.into(), (value, until));
    }

    pub fn remove(&self, key: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
impl<V> Cache<V> {
    pub fn entries(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}
