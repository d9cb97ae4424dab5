//! Servers on a thread of their own: tests that use them may have no
//! runtime, or block theirs.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Accepts connections on `127.0.0.1` (a free port) on a thread of its
/// own, each served by `serve` in a task of its own. Stops accepting when
/// the returned sender is dropped.
pub fn accept_on_thread<F, Fut>(serve: F) -> (SocketAddr, oneshot::Sender<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let accept = async {
                loop {
                    if let Ok((socket, _)) = listener.accept().await {
                        tokio::spawn(serve(socket));
                    }
                }
            };
            tokio::select! {
                () = accept => {}
                _ = stopped => {}
            }
        });
    });
    (addr, stop)
}
