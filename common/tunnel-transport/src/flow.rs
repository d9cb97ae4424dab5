//! Per-stream flow control: how much a data stream's sender may have in
//! flight, and how the receiver sizes that amount.
//!
//! HTTP/2 gives every stream of a connection the same window, and its
//! connection window is shared: a few streams whose readers stopped hold
//! the whole connection window and everything else on the connection,
//! the control stream's heartbeats included, waits behind them. So the
//! tunnel runs its own credit per stream ([`tunnel_proto::Credit`]) and
//! sets HTTP/2's windows so large that they never bind (see
//! [`crate::settings`]).
//!
//! A stream's receive window starts small ([`INITIAL_STREAM_CREDIT`]): a
//! reader that never reads, or reads slowly, holds no more than that. A
//! window grows only when it, and nothing else, limits the stream:
//!
//! - the sender ran out of credit and says so (`blocked`) only when, the
//!   last time it ran out, it waited for credit longer than it had taken
//!   to send what it had ([`SendStarvation`]): the window, not the sender
//!   or the path's speed, set the pace. Where credit comes back quickly
//!   (loopback, a reader whose socket buffers are still filling) it never
//!   says so;
//! - and the reader has handed on everything that arrived before that
//!   `blocked`: a slow reader never gets there (what it has not read is
//!   still buffered), a fast one on a long path gets there every round
//!   trip.
//!
//! Then the window doubles, as TCP's does in slow start. Growth is bounded
//! four ways, so that a large window is worth what it costs when its
//! reader stops:
//!
//! - a window doubles at most once per [`GROWTH_INTERVAL`]: a burst (a
//!   visitor's kernel socket buffer taking the first megabytes at memory
//!   speed before the visitor turns out to read nothing) is over before
//!   it counts;
//!
//! - a window is at most a quarter of what the stream has handed on so far
//!   ([`VOLUME_SHARE`]): a reader that stops after a burst (a service whose
//!   socket buffers filled, a visitor whose kernel and proxy buffers took
//!   the first megabytes at once) leaves behind a fraction of what it took;
//! - at most [`MAX_STREAM_CREDIT`] per stream;
//! - out of a budget each tunnel connection has ([`GROWTH_BUDGET`]).
//!
//! A stream quiet for [`QUIET_RESET`] goes back to the initial window (its
//! grown credit is paid back out of what it receives next).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

pub use tunnel_proto::{INITIAL_STREAM_CREDIT, MAX_STREAM_CREDIT};

/// Window growth all streams of one tunnel connection may hold together,
/// beyond their initial windows: two streams at the largest window.
pub const GROWTH_BUDGET: u64 = 2 * MAX_STREAM_CREDIT;
/// A stream whose reader took nothing for this long shrinks back to the
/// initial window.
pub const QUIET_RESET: Duration = Duration::from_secs(1);
/// A stream's window is at most what it has handed on, divided by this.
pub const VOLUME_SHARE: u64 = 4;

/// Credit goes back once half the window, or this much, has been handed on.
pub const GRANT_STEP: u64 = 1024 * 1024;
/// A window doubles at most this often (from the stream's start, then from
/// its last growth).
pub const GROWTH_INTERVAL: Duration = Duration::from_millis(20);

/// What the streams of one tunnel connection share: the window growth
/// budget.
#[derive(Debug)]
pub struct ConnectionFlow {
    budget: AtomicI64,
}

impl Default for ConnectionFlow {
    fn default() -> Self {
        Self::with_budget(GROWTH_BUDGET)
    }
}

impl ConnectionFlow {
    pub fn with_budget(budget: u64) -> Self {
        Self {
            budget: AtomicI64::new(budget as i64),
        }
    }

    /// Takes `n` bytes of growth if the budget has them.
    fn take_exactly(&self, n: u64) -> bool {
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left >= n as i64).then_some(left - n as i64)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        if n > 0 {
            self.budget.fetch_add(n as i64, Ordering::Relaxed);
        }
    }

    /// Growth not taken by any stream.
    pub fn budget_left(&self) -> u64 {
        self.budget.load(Ordering::Relaxed).max(0) as u64
    }
}

/// The sending side: whether running out of credit is worth telling the
/// receiver. It is when, the previous time, the sender waited for credit
/// longer than it had taken to send what it had: the window halved its
/// throughput or worse.
#[derive(Debug)]
pub struct SendStarvation {
    /// When the sender last got credit after waiting for it.
    round_start: Instant,
    /// From `round_start` to running out.
    active: Duration,
    /// Out of credit since.
    blocked_since: Option<Instant>,
    /// The last wait was longer than the sending before it.
    starved: bool,
}

impl SendStarvation {
    pub fn new(now: Instant) -> Self {
        Self {
            round_start: now,
            active: Duration::ZERO,
            blocked_since: None,
            starved: false,
        }
    }

    /// The sender has more to send and no credit: whether to say
    /// `blocked` (at most once per wait).
    pub fn exhausted(&mut self, now: Instant) -> bool {
        if self.blocked_since.is_some() {
            return false;
        }
        self.active = now.duration_since(self.round_start);
        self.blocked_since = Some(now);
        self.starved
    }

    /// Credit arrived.
    pub fn credited(&mut self, now: Instant) {
        if let Some(since) = self.blocked_since.take() {
            self.starved = now.duration_since(since) > self.active;
            self.round_start = now;
        }
    }
}

/// The peer sent more than it was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer sent {received} bytes on a stream granted {granted}")]
pub struct Overrun {
    pub received: u64,
    pub granted: u64,
}

/// The receiving side of one stream's flow control.
#[derive(Debug)]
pub struct RecvWindow {
    /// Credit the sender may have outstanding.
    window: u64,
    /// Consumed bytes not yet granted back.
    unacked: u64,
    /// Grown window given up while quiet, paid back out of the bytes
    /// consumed next before anything is granted.
    debt: u64,
    granted: u64,
    received: u64,
    consumed: u64,
    /// The sender said it has used up its credit, and nothing it sent after
    /// saying so has arrived yet.
    peer_blocked: bool,
    last_consumed: Instant,
    last_growth: Instant,
}

impl RecvWindow {
    pub fn new(now: Instant) -> Self {
        Self {
            window: INITIAL_STREAM_CREDIT,
            unacked: 0,
            debt: 0,
            granted: INITIAL_STREAM_CREDIT,
            received: 0,
            consumed: 0,
            peer_blocked: false,
            last_consumed: now,
            last_growth: now,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> u64 {
        self.received - self.consumed
    }

    /// `n` payload bytes arrived.
    pub fn on_received(&mut self, n: u64) -> Result<(), Overrun> {
        self.received += n;
        // Sent after a grant reached the sender: it is no longer waiting.
        self.peer_blocked = false;
        if self.received > self.granted {
            return Err(Overrun {
                received: self.received,
                granted: self.granted,
            });
        }
        Ok(())
    }

    /// The sender has used up its credit (`blocked`); returns the credit to
    /// grant now, if any (when the reader has already handed on
    /// everything).
    pub fn on_blocked(&mut self, now: Instant, flow: &ConnectionFlow) -> Option<u64> {
        self.peer_blocked = true;
        self.grow_if_drained(now, flow)
    }

    /// The reader took `n` bytes; returns the credit to grant now, if any.
    pub fn on_consumed(&mut self, n: u64, now: Instant, flow: &ConnectionFlow) -> Option<u64> {
        self.consumed += n;
        if self.window > INITIAL_STREAM_CREDIT
            && now.duration_since(self.last_consumed) >= QUIET_RESET
        {
            self.debt += self.window - INITIAL_STREAM_CREDIT;
            self.window = INITIAL_STREAM_CREDIT;
        }
        self.last_consumed = now;
        self.unacked += n;
        if self.debt > 0 {
            let paid = self.debt.min(self.unacked);
            self.debt -= paid;
            self.unacked -= paid;
            flow.give_back(paid);
        }
        if let Some(credit) = self.grow_if_drained(now, flow) {
            return Some(credit);
        }
        if self.unacked < (self.window / 2).min(GRANT_STEP) {
            return None;
        }
        Some(self.grant(0))
    }

    /// The window limits the stream when the reader has handed on all the
    /// sender could send before it ran out of credit, before anything sent
    /// after that arrived: then the window doubles (within the bounds) and
    /// the credit goes out at once.
    fn grow_if_drained(&mut self, now: Instant, flow: &ConnectionFlow) -> Option<u64> {
        if !self.peer_blocked || self.buffered() > 0 || self.debt > 0 {
            return None;
        }
        self.peer_blocked = false;
        let grown = now.duration_since(self.last_growth) >= GROWTH_INTERVAL
            && 2 * self.window <= MAX_STREAM_CREDIT.min(self.consumed / VOLUME_SHARE)
            && flow.take_exactly(self.window);
        if grown {
            self.last_growth = now;
        }
        if !grown && self.unacked == 0 {
            return None;
        }
        let growth = if grown { self.window } else { 0 };
        self.window += growth;
        Some(self.grant(growth))
    }

    fn grant(&mut self, growth: u64) -> u64 {
        let credit = self.unacked + growth;
        self.unacked = 0;
        self.granted += credit;
        credit
    }

    /// Gives the stream's growth back to the connection (the stream ended).
    pub fn release(&mut self, flow: &ConnectionFlow) {
        flow.give_back(self.window - INITIAL_STREAM_CREDIT + self.debt);
        self.window = INITIAL_STREAM_CREDIT;
        self.debt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: u64 = INITIAL_STREAM_CREDIT;
    const STEP: Duration = GROWTH_INTERVAL;

    /// One round trip of a window-limited stream: the sender sends its
    /// whole credit and says `blocked`; the reader hands it all on. Returns
    /// the credit granted over the round.
    fn round(w: &mut RecvWindow, flow: &ConnectionFlow, t: &mut Instant) -> u64 {
        *t += STEP;
        let credit = w.granted - w.received;
        w.on_received(credit).unwrap();
        let mut granted = w.on_blocked(*t, flow).unwrap_or(0);
        // Handed on in two halves.
        for half in [credit / 2, credit - credit / 2] {
            granted += w.on_consumed(half, *t, flow).unwrap_or(0);
        }
        assert!(
            w.window() <= INITIAL.max(w.consumed / VOLUME_SHARE),
            "a window is never more than a quarter of what was handed on"
        );
        granted
    }

    #[test]
    fn a_sender_says_blocked_only_after_waiting_longer_than_it_sent() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = SendStarvation::new(t0);
        // The first wait has nothing to compare with.
        assert!(!s.exhausted(t0 + ms(1)));
        assert!(!s.exhausted(t0 + ms(2)), "once per wait");
        // Waited 10 ms after sending for 1 ms: the window is the limit.
        s.credited(t0 + ms(11));
        assert!(s.exhausted(t0 + ms(12)));
        // Credit came back quickly (a fast loop, a reader draining into
        // socket buffers): nothing to tell.
        s.credited(t0 + ms(12) + Duration::from_micros(100));
        assert!(!s.exhausted(t0 + ms(13)));
        // Credit that arrives while the sender still has some is no wait.
        s.credited(t0 + ms(30));
        assert!(
            s.exhausted(t0 + ms(31)),
            "waited 17 ms after 1 ms of sending"
        );
    }

    #[test]
    fn credit_is_granted_back_once_half_the_window_was_read() {
        let flow = ConnectionFlow::default();
        let t = Instant::now();
        let mut w = RecvWindow::new(t);
        w.on_received(INITIAL).unwrap();
        assert_eq!(w.on_consumed(INITIAL / 2 - 1, t, &flow), None);
        assert_eq!(w.on_consumed(1, t, &flow), Some(INITIAL / 2));
        assert_eq!(w.buffered(), INITIAL / 2);
    }

    #[test]
    fn a_large_window_is_granted_back_each_mib() {
        let flow = ConnectionFlow::default();
        let t = Instant::now();
        let mut w = RecvWindow::new(t);
        let mut at = t;
        while w.window() < 4 * GRANT_STEP {
            round(&mut w, &flow, &mut at);
        }
        let window = w.window();
        w.on_received(w.granted - w.received).unwrap();
        assert_eq!(w.on_consumed(GRANT_STEP - 1, at, &flow), None);
        assert_eq!(
            w.on_consumed(1, at, &flow),
            Some(GRANT_STEP),
            "not half of {window}"
        );
    }

    #[test]
    fn a_reader_that_never_reads_holds_one_initial_window() {
        let flow = ConnectionFlow::default();
        let mut w = RecvWindow::new(Instant::now());
        w.on_received(INITIAL).unwrap();
        assert_eq!(
            w.on_blocked(Instant::now(), &flow),
            None,
            "nothing was handed on"
        );
        assert_eq!(
            w.on_received(1),
            Err(Overrun {
                received: INITIAL + 1,
                granted: INITIAL
            })
        );
        assert_eq!(flow.budget_left(), GROWTH_BUDGET);
    }

    #[test]
    fn a_window_limited_stream_doubles_its_window_each_round_up_to_the_cap() {
        let flow = ConnectionFlow::default();
        let mut t = Instant::now();
        let mut w = RecvWindow::new(t);
        let mut windows = vec![w.window()];
        for _ in 0..40 {
            round(&mut w, &flow, &mut t);
            windows.push(w.window());
        }
        // A window doubles once the stream has moved eight times it.
        let first_growth = windows.iter().position(|&w| w > INITIAL).unwrap();
        assert_eq!(first_growth, 8);
        assert!(windows.windows(2).all(|p| p[1] == p[0] || p[1] == 2 * p[0]));
        assert_eq!(*windows.last().unwrap(), MAX_STREAM_CREDIT);
        assert_eq!(
            flow.budget_left(),
            GROWTH_BUDGET - (MAX_STREAM_CREDIT - INITIAL)
        );
        w.release(&flow);
        assert_eq!(flow.budget_left(), GROWTH_BUDGET);
    }

    #[test]
    fn a_burst_does_not_grow_a_window() {
        // Rounds a hundred times faster than the growth interval: a
        // reader's socket buffers taking a few MiB at once.
        let flow = ConnectionFlow::default();
        let t0 = Instant::now();
        let mut w = RecvWindow::new(t0);
        let mut t = t0;
        for _ in 0..40 {
            t += GROWTH_INTERVAL / 100;
            let credit = w.granted - w.received;
            w.on_received(credit).unwrap();
            w.on_blocked(t, &flow);
            w.on_consumed(credit, t, &flow);
        }
        assert_eq!(w.window(), INITIAL);
        // The same stream, still window-limited a growth interval later.
        round(&mut w, &flow, &mut { t0 + GROWTH_INTERVAL });
        assert_eq!(w.window(), 2 * INITIAL);
    }

    #[test]
    fn a_slow_reader_keeps_its_window() {
        let flow = ConnectionFlow::default();
        let mut t = Instant::now();
        let mut w = RecvWindow::new(t);
        // The sender fills the window and waits; the reader takes half of
        // it before the grant brings the next half.
        w.on_received(INITIAL).unwrap();
        assert_eq!(w.on_blocked(t, &flow), None);
        for _ in 0..100 {
            t += STEP;
            let credit = w.on_consumed(INITIAL / 2, t, &flow).expect("a grant");
            assert_eq!(credit, INITIAL / 2);
            w.on_received(credit).unwrap();
            assert_eq!(w.on_blocked(t, &flow), None, "never drained");
        }
        assert_eq!(w.window(), INITIAL);
    }

    #[test]
    fn growth_stops_when_the_connection_budget_is_spent() {
        let flow = ConnectionFlow::with_budget(INITIAL);
        let mut t = Instant::now();
        let (mut a, mut b) = (RecvWindow::new(t), RecvWindow::new(t));
        for _ in 0..12 {
            round(&mut a, &flow, &mut t);
            round(&mut b, &flow, &mut t);
        }
        assert_eq!(a.window(), 2 * INITIAL);
        assert_eq!(b.window(), INITIAL, "nothing left to grow with");
    }

    #[test]
    fn a_quiet_stream_shrinks_back_and_pays_its_growth_back_first() {
        let flow = ConnectionFlow::default();
        let mut t = Instant::now();
        let mut w = RecvWindow::new(t);
        while w.window() == INITIAL {
            round(&mut w, &flow, &mut t);
        }
        assert_eq!(w.window(), 2 * INITIAL);
        assert_eq!(flow.budget_left(), GROWTH_BUDGET - INITIAL);
        // Quiet for a while; the sender still holds the grown credit and
        // sends it all: the grown part is paid back, not granted again.
        t += QUIET_RESET;
        w.on_received(2 * INITIAL).unwrap();
        assert_eq!(w.on_consumed(INITIAL, t, &flow), None);
        assert_eq!(w.window(), INITIAL);
        assert_eq!(flow.budget_left(), GROWTH_BUDGET);
        t += STEP;
        assert_eq!(w.on_consumed(INITIAL / 2, t, &flow), Some(INITIAL / 2));
    }
}
