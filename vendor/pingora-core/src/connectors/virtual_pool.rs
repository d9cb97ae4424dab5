// PATCH(edge-proxy): this whole file.
//
//! Idle virtual streams (custom L4 connectors) kept for reuse.
//!
//! The general pool spawns a task per released connection to watch it while
//! it is idle (a read for the peer closing, a timer for the idle timeout) and
//! hands the connection back through that task on reuse: a spawn, two
//! channels, a lock and a wake-up per request. A virtual stream that is
//! reused for nearly every request pays that on every request. Here an idle
//! stream sits in a map; taking it checks its deadline and whether the peer
//! closed it (the same `test_reusable_stream` check the general pool makes),
//! and one sweeper task per pool closes expired and peer-closed streams on a
//! short interval.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use crate::protocols::Stream;

/// How often idle streams are checked for expiry and for the peer closing.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

struct Idle {
    stream: Stream,
    expires: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<u64, Vec<Idle>>,
    count: usize,
}

pub(crate) struct VirtualPool {
    idle: Mutex<Inner>,
    capacity: usize,
    sweeper: Once,
    unexpected_data_conn_count: Arc<AtomicU64>,
}

impl VirtualPool {
    pub(crate) fn new(capacity: usize, unexpected_data_conn_count: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Inner::default()),
            capacity,
            sweeper: Once::new(),
            unexpected_data_conn_count,
        })
    }

    /// Keeps `stream` for reuse under `key`; it is closed when the pool is
    /// full.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        self.start_sweeper();
        let entry = Idle {
            stream,
            expires: idle_timeout.map(|t| Instant::now() + t),
        };
        let mut idle = self.idle.lock().unwrap();
        if idle.count < self.capacity {
            idle.count += 1;
            idle.by_key.entry(key).or_default().push(entry);
        } else {
            drop(idle);
            drop(entry); // closes it, outside the lock
        }
    }

    /// The most recently released usable stream under `key`. Expired streams
    /// and streams whose peer closed or sent data are closed on the way.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        loop {
            let entry = {
                let mut idle = self.idle.lock().unwrap();
                let list = idle.by_key.get_mut(&key)?;
                let entry = list.pop();
                if list.is_empty() {
                    idle.by_key.remove(&key);
                }
                idle.count -= usize::from(entry.is_some());
                entry?
            };
            if entry.expired(Instant::now()) {
                continue;
            }
            let mut stream = entry.stream;
            if super::test_reusable_stream(&mut stream, &self.unexpected_data_conn_count) {
                return Some(stream);
            }
        }
    }

    /// Closes expired streams and those whose peer closed.
    fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap();
            for list in idle.by_key.values_mut() {
                let mut i = 0;
                while i < list.len() {
                    let usable = !list[i].expired(now)
                        && super::test_reusable_stream(
                            &mut list[i].stream,
                            &self.unexpected_data_conn_count,
                        );
                    if usable {
                        i += 1;
                    } else {
                        closed.push(list.swap_remove(i));
                    }
                }
            }
            idle.by_key.retain(|_, list| !list.is_empty());
            idle.count -= closed.len();
        }
        drop(closed); // closes them, outside the lock
    }

    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            let pool: Weak<Self> = Arc::downgrade(self);
            pingora_runtime::current_handle().spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_INTERVAL).await;
                    match pool.upgrade() {
                        Some(pool) => pool.sweep(),
                        None => return,
                    }
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::l4::stream::Stream as L4Stream;
    use crate::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream, ReadBuf};

    #[derive(Debug)]
    struct Duplex(DuplexStream);

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl VirtualSocket for Duplex {
        fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A virtual stream, and its peer's end.
    fn virtual_stream() -> (Stream, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64);
        let stream = L4Stream::from(VirtualSocketStream::new(Box::new(Duplex(ours))));
        (Box::new(stream), theirs)
    }

    fn pool(capacity: usize) -> Arc<VirtualPool> {
        VirtualPool::new(capacity, Arc::new(AtomicU64::new(0)))
    }

    #[tokio::test]
    async fn a_released_stream_is_taken_again_under_its_key_only() {
        let pool = pool(4);
        let (stream, _peer) = virtual_stream();
        let id = stream.id();
        pool.put(1, stream, None);
        assert!(pool.take(2).is_none());
        assert_eq!(pool.take(1).map(|s| s.id()), Some(id));
        assert!(pool.take(1).is_none());
    }

    #[tokio::test]
    async fn expired_streams_and_those_whose_peer_closed_are_not_taken() {
        let pool = pool(4);
        let (stream, _peer) = virtual_stream();
        pool.put(1, stream, Some(Duration::ZERO));
        assert!(pool.take(1).is_none());
        let (stream, peer) = virtual_stream();
        pool.put(1, stream, None);
        drop(peer);
        assert!(pool.take(1).is_none());
        assert_eq!(pool.idle.lock().unwrap().count, 0);
    }

    #[tokio::test]
    async fn a_full_pool_closes_the_streams_it_cannot_keep() {
        let pool = pool(2);
        let mut peers = Vec::new();
        for key in 0..3 {
            let (stream, peer) = virtual_stream();
            pool.put(key, stream, None);
            peers.push(peer);
        }
        assert!(pool.take(0).is_some());
        assert!(pool.take(1).is_some());
        assert!(pool.take(2).is_none());
        let mut byte = [0u8; 1];
        assert_eq!(peers[2].read(&mut byte).await.unwrap(), 0, "closed");
    }

    #[tokio::test]
    async fn the_sweeper_closes_idle_streams_whose_peer_closed() {
        let pool = pool(4);
        let (stream, peer) = virtual_stream();
        pool.put(1, stream, None);
        drop(peer);
        let deadline = Instant::now() + SWEEP_INTERVAL * 20;
        while pool.idle.lock().unwrap().count > 0 {
            assert!(Instant::now() < deadline, "not swept");
            tokio::time::sleep(SWEEP_INTERVAL / 5).await;
        }
    }
}
