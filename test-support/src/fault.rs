//! A fault-injecting TCP proxy, for what `tc netem` would do between edge
//! and sidecar: latency, bandwidth caps, stalls, cuts (FIN), resets (RST),
//! refusing new connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    None,
    Cut,
    Reset,
}

#[derive(Debug)]
struct Faults {
    latency_us: AtomicU64,
    bytes_per_sec: AtomicU64,
    stalled: AtomicBool,
    resumed: Notify,
    refuse: AtomicBool,
    accepted: AtomicU64,
    /// When each connection was accepted; notified on each.
    accepted_at: std::sync::Mutex<Vec<Instant>>,
    accepted_changed: Notify,
    kill: watch::Sender<(u64, Kill)>,
    /// Keep a copy of every byte relayed, both directions.
    record: AtomicBool,
    recorded: std::sync::Mutex<Vec<u8>>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Proxies `127.0.0.1:<ephemeral>` → `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault proxy");
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults {
            latency_us: AtomicU64::new(0),
            bytes_per_sec: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            resumed: Notify::new(),
            refuse: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            accepted_at: std::sync::Mutex::new(Vec::new()),
            accepted_changed: Notify::new(),
            kill: watch::Sender::new((0, Kill::None)),
            record: AtomicBool::new(false),
            recorded: std::sync::Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, target, faults.clone(), stop.clone()));
        Self { addr, faults, stop }
    }

    /// From now on, keep a copy of every byte relayed (both directions,
    /// interleaved as they arrive): what an eavesdropper on the wire sees.
    pub fn record(&self) {
        self.faults.record.store(true, Ordering::SeqCst);
    }

    /// The bytes recorded so far.
    pub fn recorded(&self) -> Vec<u8> {
        self.faults.recorded.lock().unwrap().clone()
    }

    /// One-way delay added to every chunk, each direction (RTT = 2×).
    pub fn set_latency(&self, one_way: Duration) {
        self.faults
            .latency_us
            .store(one_way.as_micros() as u64, Ordering::SeqCst);
    }

    /// Caps each direction of each connection; 0 = unlimited.
    pub fn set_bandwidth(&self, bytes_per_sec: u64) {
        self.faults
            .bytes_per_sec
            .store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Stops forwarding (connections stay open) until [`Self::resume`].
    pub fn stall(&self) {
        self.faults.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.faults.stalled.store(false, Ordering::SeqCst);
        self.faults.resumed.notify_waiters();
    }

    /// New connections are accepted and immediately reset.
    pub fn refuse_new(&self, refuse: bool) {
        self.faults.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Closes every open connection with FIN.
    pub fn cut_all(&self) {
        self.faults.kill.send_modify(|(gen, kill)| {
            *gen += 1;
            *kill = Kill::Cut;
        });
    }

    /// Aborts every open connection with RST.
    pub fn reset_all(&self) {
        self.faults.kill.send_modify(|(gen, kill)| {
            *gen += 1;
            *kill = Kill::Reset;
        });
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> u64 {
        self.faults.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections were accepted; returns when each of
    /// those so far was. Panics after [`crate::wait::PATIENCE`].
    pub async fn wait_accepted(&self, n: usize) -> Vec<Instant> {
        let what = format!("{n} connections to the fault proxy");
        crate::wait::within(&what, async {
            loop {
                let changed = self.faults.accepted_changed.notified();
                tokio::pin!(changed);
                // Registered before the check: an accept in between still wakes us.
                changed.as_mut().enable();
                let times = self.faults.accepted_at.lock().unwrap().clone();
                if times.len() >= n {
                    return times;
                }
                changed.await;
            }
        })
        .await
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        faults.accepted_at.lock().unwrap().push(Instant::now());
        faults.accepted.fetch_add(1, Ordering::SeqCst);
        faults.accepted_changed.notify_waiters();
        if faults.refuse.load(Ordering::SeqCst) {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            continue;
        }
        let faults = faults.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            relay(client, server, faults).await;
        });
    }
}

async fn relay(client: TcpStream, server: TcpStream, faults: Arc<Faults>) {
    // Duplicated handles, so a reset can set SO_LINGER=0 on the sockets the
    // pumps own.
    let handles = [
        socket2::SockRef::from(&client).try_clone().ok(),
        socket2::SockRef::from(&server).try_clone().ok(),
    ];
    let mut kill = faults.kill.subscribe();
    let start_gen = kill.borrow().0;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, faults.clone());
    let down = pump(sr, cw, faults.clone());
    let both = async { tokio::join!(up, down) };
    tokio::select! {
        _ = both => {}
        killed = kill.wait_for(|(gen, _)| *gen != start_gen) => {
            let reset = killed.map(|k| k.1 == Kill::Reset).unwrap_or(false);
            if reset {
                for h in handles.iter().flatten() {
                    let _ = h.set_linger(Some(Duration::ZERO));
                }
            }
        }
    }
}

/// One direction: a delay line (latency without serializing chunks), then
/// stall and bandwidth gates, then the write.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, faults: Arc<Faults>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(1024);
    let faults2 = faults.clone();
    let reader = async move {
        let faults = faults2;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            buf.reserve(64 * 1024);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if faults.record.load(Ordering::Relaxed) {
                        faults.recorded.lock().unwrap().extend_from_slice(&buf);
                    }
                    let due = Instant::now()
                        + Duration::from_micros(faults.latency_us.load(Ordering::SeqCst));
                    if tx.send((due, buf.split().freeze())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let faults2 = faults;
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while faults2.stalled.load(Ordering::SeqCst) {
                let resumed = faults2.resumed.notified();
                if !faults2.stalled.load(Ordering::SeqCst) {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), resumed).await;
            }
            let bps = faults2.bytes_per_sec.load(Ordering::SeqCst);
            if bps > 0 {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / bps as f64)).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
