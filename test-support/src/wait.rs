//! Waiting in tests. Wait on an event whenever something announces it (a
//! ready line, a counter's notification, a status channel); where nothing
//! does, re-check the condition every few milliseconds until a generous
//! deadline, and fail saying what never happened. Never sleep a fixed time
//! and then assert (docs/testing.md).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once: long
/// enough for a busy machine, short enough that a broken feature fails the
/// test in seconds rather than hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often a condition no event announces is re-checked.
const RECHECK: Duration = Duration::from_millis(10);

/// Awaits `event`; panics if it has not happened within [`PATIENCE`].
pub async fn within<F: Future>(what: &str, event: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, event).await {
        Ok(output) => output,
        Err(_) => panic!("gave up after {PATIENCE:?} waiting for {what}"),
    }
}

/// Re-checks `done` until it holds; panics after [`PATIENCE`].
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    until_ok(what, || if done() { Ok(()) } else { Err("no") }).await
}

/// Re-checks `check` until it returns `Ok`, and returns its value; panics
/// after [`PATIENCE`] with the last `Err` (what it saw instead).
pub async fn until_ok<T, E: Display>(what: &str, mut check: impl FnMut() -> Result<T, E>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("gave up after {PATIENCE:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(RECHECK).await,
        }
    }
}

/// [`until`], for tests without a runtime (the conformance suite).
pub fn until_blocking(what: &str, mut done: impl FnMut() -> bool) {
    until_ok_blocking(what, || if done() { Ok(()) } else { Err("no") })
}

/// [`until_ok`], for tests without a runtime.
pub fn until_ok_blocking<T, E: Display>(what: &str, check: impl FnMut() -> Result<T, E>) -> T {
    until_ok_blocking_within(PATIENCE, what, check)
}

/// [`until_ok_blocking`], giving up after `timeout` (when how soon is part
/// of what the test checks).
pub fn until_ok_blocking_within<T, E: Display>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("gave up after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(RECHECK),
        }
    }
}
