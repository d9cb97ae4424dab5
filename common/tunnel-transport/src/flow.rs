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
//! window grows only for a reader that proves both speed and volume, so
//! that a large window is worth what it costs when the reader stops:
//!
//! - speed: it handed on half a window within one round trip of the
//!   previous grant, so the window, not the reader, limits throughput
//!   (yamux and QUIC stacks grow theirs the same way; with one round trip
//!   rather than two, windows settle near twice the bandwidth-delay
//!   product);
//! - volume: a window is at most what the stream has handed on so far, so
//!   a reader that stops after a burst (a service whose socket buffers
//!   filled, a visitor who reads fast and then not at all) leaves behind no
//!   more than it took, and a window-limited transfer still doubles its
//!   window about every other round trip;
//! - and out of a budget each tunnel connection has ([`GROWTH_BUDGET`]),
//!   up to [`MAX_STREAM_CREDIT`] per stream.
//!
//! A stream quiet for [`QUIET_RESET`] goes back to the initial window (its
//! grown credit is paid back out of what it receives next).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use tunnel_proto::{INITIAL_STREAM_CREDIT, MAX_STREAM_CREDIT};

/// Window growth all streams of one tunnel connection may hold together,
/// beyond their initial windows: two streams at the largest window.
pub const GROWTH_BUDGET: u64 = 2 * MAX_STREAM_CREDIT;
/// A stream whose reader took nothing for this long shrinks back to the
/// initial window.
pub const QUIET_RESET: Duration = Duration::from_secs(1);

/// What the streams of one tunnel connection share: the round-trip time
/// (from HTTP/2 PINGs) and the window growth budget.
#[derive(Debug)]
pub struct ConnectionFlow {
    /// Latest round-trip time in µs; 0 until measured.
    rtt_us: AtomicU64,
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
            rtt_us: AtomicU64::new(0),
            budget: AtomicI64::new(budget as i64),
        }
    }

    /// Records a round-trip sample. The smallest one is kept: a PING that
    /// waited behind data in a busy connection measures the queue, not the
    /// path.
    pub fn set_rtt(&self, rtt: Duration) {
        let us = (rtt.as_micros() as u64).max(1);
        let _ = self
            .rtt_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                (old == 0 || us < old).then_some(us)
            });
    }

    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
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
    last_grant: Instant,
    last_consumed: Instant,
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
            last_grant: now,
            last_consumed: now,
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
        if self.received > self.granted {
            return Err(Overrun {
                received: self.received,
                granted: self.granted,
            });
        }
        Ok(())
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
        if self.unacked < self.window / 2 {
            return None;
        }
        let mut credit = self.unacked;
        let fast = flow
            .rtt()
            .is_some_and(|rtt| now.duration_since(self.last_grant) < rtt);
        // Windows double (they stay powers of two, as the credit is granted
        // in halves of them), within the volume cap and the budget.
        let cap = MAX_STREAM_CREDIT.min(self.consumed);
        if fast && 2 * self.window <= cap && flow.take_exactly(self.window) {
            credit += self.window;
            self.window *= 2;
        }
        self.unacked = 0;
        self.granted += credit;
        self.last_grant = now;
        Some(credit)
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
    const RTT: Duration = Duration::from_millis(10);

    fn measured() -> ConnectionFlow {
        let flow = ConnectionFlow::default();
        flow.set_rtt(RTT);
        flow
    }

    #[test]
    fn credit_is_granted_back_once_half_the_window_was_read() {
        let flow = measured();
        let t = Instant::now();
        let mut w = RecvWindow::new(t);
        let slow = t + RTT * 10;
        w.on_received(INITIAL).unwrap();
        assert_eq!(w.on_consumed(INITIAL / 2 - 1, slow, &flow), None);
        assert_eq!(w.on_consumed(1, slow, &flow), Some(INITIAL / 2));
        assert_eq!(w.buffered(), INITIAL / 2);
        assert_eq!(
            w.window(),
            INITIAL,
            "a slow reader keeps the initial window"
        );
    }

    #[test]
    fn a_reader_that_never_reads_holds_one_initial_window() {
        let flow = measured();
        let mut w = RecvWindow::new(Instant::now());
        w.on_received(INITIAL).unwrap();
        assert_eq!(
            w.on_received(1),
            Err(Overrun {
                received: INITIAL + 1,
                granted: INITIAL
            })
        );
        assert_eq!(flow.budget_left(), GROWTH_BUDGET);
    }

    /// Feeds `w` half a window at a time, each within `step` of the last
    /// grant, until it has handed on `total` bytes.
    fn feed(
        w: &mut RecvWindow,
        flow: &ConnectionFlow,
        t: &mut Instant,
        step: Duration,
        total: u64,
    ) {
        let mut moved = 0;
        while moved < total {
            *t += step;
            let half = w.window() / 2;
            w.on_received(half).unwrap();
            let credit = w.on_consumed(half, *t, flow).unwrap();
            assert!(credit >= half);
            moved += half;
            assert!(
                w.window() <= INITIAL.max(w.consumed),
                "a window is never more than what was handed on"
            );
        }
    }

    #[test]
    fn a_fast_reader_grows_its_window_with_what_it_moved_up_to_the_cap() {
        let flow = measured();
        let mut t = Instant::now();
        let mut w = RecvWindow::new(t);
        feed(&mut w, &flow, &mut t, RTT / 2, INITIAL);
        assert_eq!(w.window(), INITIAL, "not enough moved yet to grow");
        feed(&mut w, &flow, &mut t, RTT / 2, INITIAL);
        assert_eq!(w.window(), 2 * INITIAL);
        feed(&mut w, &flow, &mut t, RTT / 2, 2 * MAX_STREAM_CREDIT);
        assert_eq!(w.window(), MAX_STREAM_CREDIT);
        assert_eq!(
            flow.budget_left(),
            GROWTH_BUDGET - (MAX_STREAM_CREDIT - INITIAL)
        );
        w.release(&flow);
        assert_eq!(flow.budget_left(), GROWTH_BUDGET);
    }

    #[test]
    fn a_reader_slower_than_the_round_trip_keeps_its_window() {
        let flow = measured();
        let mut t = Instant::now();
        let mut w = RecvWindow::new(t);
        feed(&mut w, &flow, &mut t, RTT * 2, 64 * INITIAL);
        assert_eq!(w.window(), INITIAL);
    }

    #[test]
    fn growth_stops_when_the_connection_budget_is_spent() {
        let flow = ConnectionFlow::with_budget(INITIAL);
        flow.set_rtt(RTT);
        let mut t = Instant::now();
        let (mut a, mut b) = (RecvWindow::new(t), RecvWindow::new(t));
        feed(&mut a, &flow, &mut t, RTT / 2, 16 * INITIAL);
        feed(&mut b, &flow, &mut t, RTT / 2, 16 * INITIAL);
        assert_eq!(a.window(), 2 * INITIAL);
        assert_eq!(b.window(), INITIAL, "nothing left to grow with");
    }

    #[test]
    fn the_smallest_round_trip_is_kept() {
        let flow = ConnectionFlow::default();
        flow.set_rtt(Duration::from_millis(5));
        flow.set_rtt(Duration::from_millis(1));
        flow.set_rtt(Duration::from_millis(30));
        assert_eq!(flow.rtt(), Some(Duration::from_millis(1)));
    }

    #[test]
    fn without_a_measured_round_trip_windows_do_not_grow() {
        let flow = ConnectionFlow::default();
        let t = Instant::now();
        let mut w = RecvWindow::new(t);
        w.on_received(INITIAL / 2).unwrap();
        assert_eq!(w.on_consumed(INITIAL / 2, t, &flow), Some(INITIAL / 2));
        assert_eq!(w.window(), INITIAL);
    }

    #[test]
    fn a_quiet_stream_shrinks_back_and_pays_its_growth_back_first() {
        let flow = measured();
        let mut t = Instant::now();
        let mut w = RecvWindow::new(t);
        feed(&mut w, &flow, &mut t, RTT / 2, 2 * INITIAL);
        assert_eq!(w.window(), 2 * INITIAL);
        assert_eq!(flow.budget_left(), GROWTH_BUDGET - INITIAL);
        // Quiet for a while; the sender still holds the grown credit and
        // sends it all: the grown part is paid back, not granted again.
        t += QUIET_RESET;
        w.on_received(2 * INITIAL).unwrap();
        assert_eq!(w.on_consumed(INITIAL, t, &flow), None);
        assert_eq!(w.window(), INITIAL);
        assert_eq!(flow.budget_left(), GROWTH_BUDGET);
        t += RTT * 10;
        assert_eq!(w.on_consumed(INITIAL / 2, t, &flow), Some(INITIAL / 2));
    }
}
