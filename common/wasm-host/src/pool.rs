//! A filter shared by a server's threads: one [`FilterInstance`] per slot,
//! each thread on a slot of its own ([`FilterPool`]), and a request's
//! stream tied to the slot that started it ([`PooledStream`]), ended when
//! the request is dropped.
//!
//! A thread keeps its slot for life, so a server whose requests stay on
//! one thread (the edge's single-threaded workers) never waits for a lock
//! that another thread holds; a request that moves thread finds its slot
//! through the stream and waits at most one callback's time limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use header_policy::Headers;

use crate::filter::{FilterError, FilterInstance, Outcome, Stream, WasmFilter};
use crate::props::StreamInfo;

/// A filter with an instance per slot (each started with its first stream).
pub struct FilterPool {
    filter: WasmFilter,
    slots: Box<[Mutex<FilterInstance>]>,
}

impl std::fmt::Debug for FilterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterPool")
            .field("filter", &self.filter.name())
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// The calling thread's slot number, assigned on first use.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    SLOT.with(|s| *s)
}

impl FilterPool {
    /// `slots` instances at most (at least one): as many as the threads
    /// that run requests, so that none shares.
    pub fn new(filter: WasmFilter, slots: usize) -> Self {
        let slots = (0..slots.max(1)).map(|_| Mutex::new(filter.instantiate()));
        FilterPool {
            slots: slots.collect(),
            filter,
        }
    }

    /// Starts a stream for a request on the calling thread's instance.
    pub fn start(self: &Arc<Self>) -> Result<PooledStream, FilterError> {
        let slot = thread_slot() % self.slots.len();
        let stream = self.lock(slot).new_stream()?;
        Ok(PooledStream {
            pool: self.clone(),
            slot,
            stream: Some(stream),
        })
    }

    /// An instance whose holder panicked is still sound: a callback that
    /// fails leaves the instance replaced, not half-changed.
    fn lock(&self, slot: usize) -> MutexGuard<'_, FilterInstance> {
        self.slots[slot]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One request's stream through a pooled filter; dropping it ends the
/// stream (`proxy_on_done`, `proxy_on_log`, `proxy_on_delete`).
pub struct PooledStream {
    pool: Arc<FilterPool>,
    slot: usize,
    stream: Option<Stream>,
}

impl std::fmt::Debug for PooledStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledStream")
            .field("filter", &self.pool.filter.name())
            .field("slot", &self.slot)
            .finish()
    }
}

impl PooledStream {
    /// [`FilterInstance::on_request_headers`] on this stream's instance.
    pub fn on_request_headers(
        &mut self,
        headers: &mut impl Headers,
        info: &StreamInfo<'_>,
        end_of_stream: bool,
    ) -> Result<Outcome, FilterError> {
        let stream = self.stream.as_ref().expect("live until dropped");
        self.pool
            .lock(self.slot)
            .on_request_headers(stream, headers, info, end_of_stream)
    }

    /// [`FilterInstance::on_response_headers`] on this stream's instance.
    pub fn on_response_headers(
        &mut self,
        headers: &mut impl Headers,
        info: &StreamInfo<'_>,
        end_of_stream: bool,
    ) -> Result<Outcome, FilterError> {
        let stream = self.stream.as_ref().expect("live until dropped");
        self.pool
            .lock(self.slot)
            .on_response_headers(stream, headers, info, end_of_stream)
    }
}

impl Drop for PooledStream {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.pool.lock(self.slot).end_stream(stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_their_streams_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<FilterPool>();
        send::<PooledStream>();
    }
}
