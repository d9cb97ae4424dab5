//! Data streams over a real HTTP/2 connection on loopback, with the
//! tunnel's settings: credit bounds what a stream whose reader stopped can
//! hold, such streams never hold up the others, credit frames are never
//! stuck behind unread data, and bulk transfers arrive intact.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tunnel_proto::StreamFrame;
use tunnel_proto::INITIAL_STREAM_CREDIT;
use tunnel_transport::grpc::{encode, encode_data, ok_response};
use tunnel_transport::settings::*;
use tunnel_transport::{ConnectionFlow, DataStream, Role};

/// A client and a server HTTP/2 connection to each other.
struct Pair {
    client: h2::client::SendRequest<Bytes>,
    accepted: mpsc::Receiver<DataStream>,
    client_flow: Arc<ConnectionFlow>,
    server_flow: Arc<ConnectionFlow>,
}

impl Pair {
    async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client_flow, server_flow) = (
            Arc::new(ConnectionFlow::default()),
            Arc::new(ConnectionFlow::default()),
        );
        let (tx, accepted) = mpsc::channel(1024);
        let flow = server_flow.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME_SIZE)
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .handshake::<_, Bytes>(tcp)
                .await
                .unwrap();
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                let send = respond.send_response(ok_response(), false).unwrap();
                let stream = DataStream::new(send, request.into_body(), Role::Server, flow.clone());
                if tx.send(stream).await.is_err() {
                    return;
                }
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .handshake(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        Self {
            client,
            accepted,
            client_flow,
            server_flow,
        }
    }

    /// A new stream: (client end, server end).
    async fn open(&mut self) -> (DataStream, DataStream) {
        let (send, response, server) = self.open_raw().await;
        let recv = response.await.unwrap().into_body();
        let client = DataStream::new(send, recv, Role::Client, self.client_flow.clone());
        (client, server)
    }

    /// A new stream whose client end is plain h2, without credit.
    async fn open_raw(
        &mut self,
    ) -> (
        h2::SendStream<Bytes>,
        h2::client::ResponseFuture,
        DataStream,
    ) {
        let mut client = self.client.clone().ready().await.unwrap();
        let request = http::Request::post("http://tunnel/tunnel.v1.Tunnel/Data")
            .body(())
            .unwrap();
        let (response, send) = client.send_request(request, false).unwrap();
        let server = self.accepted.recv().await.unwrap();
        (send, response, server)
    }
}

/// Sends up to `total` bytes of pattern as fast as credit allows; returns
/// how many were sent once the sender found no credit and none came within
/// `patience` (zero: stop at the first wait).
async fn send_until_blocked(s: &mut DataStream, total: usize, patience: Duration) -> usize {
    let mut sent = 0;
    while sent < total {
        let now = poll_fn(|cx| std::task::Poll::Ready(s.poll_send_credit(cx))).await;
        let credit = match now {
            std::task::Poll::Ready(credit) => credit.unwrap(),
            std::task::Poll::Pending if patience.is_zero() => return sent,
            std::task::Poll::Pending => {
                match tokio::time::timeout(patience, poll_fn(|cx| s.poll_send_credit(cx))).await {
                    Err(_) => return sent,
                    Ok(credit) => credit.unwrap(),
                }
            }
        };
        let n = credit.min(CHUNK_SIZE).min(total - sent);
        let payload: Vec<u8> = (sent..sent + n).map(|i| i as u8).collect();
        s.send_data(encode_data(&payload), n).unwrap();
        sent += n;
    }
    sent
}

/// Reads everything until `fin`, checking the pattern; returns the count.
async fn read_all(s: &mut DataStream) -> usize {
    let mut got = 0usize;
    while let Some(chunk) = poll_fn(|cx| s.poll_read(cx)).await.unwrap() {
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, (got + i) as u8, "byte {} intact", got + i);
        }
        got += chunk.len();
    }
    got
}

#[tokio::test]
async fn a_reader_that_never_reads_is_sent_its_initial_credit_and_no_more() {
    let mut pair = Pair::new().await;
    let (mut client, mut server) = pair.open().await;
    let sent = send_until_blocked(&mut client, 8 << 20, Duration::from_millis(300)).await;
    assert_eq!(sent as u64, INITIAL_STREAM_CREDIT);
    // Exactly that much arrived, and nothing more is coming.
    let mut got = 0;
    while (got as u64) < INITIAL_STREAM_CREDIT {
        got += poll_fn(|cx| server.poll_read(cx))
            .await
            .unwrap()
            .unwrap()
            .len();
    }
    assert_eq!(got as u64, INITIAL_STREAM_CREDIT);
    let more = tokio::time::timeout(
        Duration::from_millis(200),
        poll_fn(|cx| server.poll_read(cx)),
    )
    .await;
    assert!(more.is_err(), "nothing beyond the credit");
}

#[tokio::test]
async fn streams_whose_readers_stopped_never_hold_up_the_others() {
    let mut pair = Pair::new().await;
    // 300 streams, each sent as much as its credit allows, none read: far
    // more than any HTTP/2 window would have let through without credit.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let (mut client, server) = pair.open().await;
        let sent = send_until_blocked(&mut client, 1 << 20, Duration::ZERO).await;
        assert_eq!(sent as u64, INITIAL_STREAM_CREDIT);
        stalled.push((client, server));
    }
    // A new stream still carries a large transfer at once.
    let (mut client, mut server) = pair.open().await;
    let total = 32 << 20;
    let reader = tokio::spawn(async move { read_all(&mut server).await });
    let sent = send_until_blocked(&mut client, total, Duration::from_secs(5)).await;
    assert_eq!(sent, total);
    client.send_fin().unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the transfer completes")
            .unwrap(),
        total
    );
}

#[tokio::test]
async fn credit_is_never_stuck_behind_data_nobody_reads() {
    let mut pair = Pair::new().await;
    let (mut client, mut server) = pair.open().await;
    // The server sends a large answer that the client reads; meanwhile the
    // client sends an upload that the server does not read. The server's
    // credit comes back on the client's half, behind the upload.
    let total = 8 << 20;
    let upload = send_until_blocked(&mut client, 1 << 20, Duration::ZERO).await;
    assert_eq!(upload as u64, INITIAL_STREAM_CREDIT);
    let reader = tokio::spawn(async move {
        let got = read_all(&mut client).await;
        (got, client)
    });
    let sent = send_until_blocked(&mut server, total, Duration::from_secs(5)).await;
    assert_eq!(sent, total, "the server's credit got through");
    server.send_fin().unwrap();
    let (got, _client) = reader.await.unwrap();
    assert_eq!(got, total);
    assert_eq!(
        server.buffered(),
        INITIAL_STREAM_CREDIT,
        "the upload waits, bounded"
    );
}

#[tokio::test]
async fn a_fast_reader_grows_its_window_and_gives_the_growth_back() {
    let mut pair = Pair::new().await;
    let (mut client, mut server) = pair.open().await;
    let total = 256 << 20;
    let reader = tokio::spawn(async move {
        let got = read_all(&mut server).await;
        (got, server)
    });
    assert_eq!(
        send_until_blocked(&mut client, total, Duration::from_secs(5)).await,
        total
    );
    client.send_fin().unwrap();
    let (got, server) = reader.await.unwrap();
    assert_eq!(got, total);
    // A reader that keeps up with the sender drains what the sender could
    // send before it ran out of credit: the window grows.
    let grown = tunnel_transport::flow::GROWTH_BUDGET - pair.server_flow.budget_left();
    assert!(
        (INITIAL_STREAM_CREDIT..=tunnel_proto::MAX_STREAM_CREDIT).contains(&grown),
        "grown by {grown}"
    );
    drop(server);
    assert_eq!(
        pair.server_flow.budget_left(),
        tunnel_transport::flow::GROWTH_BUDGET
    );
}

#[tokio::test]
async fn a_peer_that_sends_beyond_its_credit_breaks_only_its_stream() {
    let mut pair = Pair::new().await;
    // A sender that ignores credit: raw data frames on the h2 stream.
    // One message one byte over the initial credit.
    let (mut raw, _response, mut server) = pair.open_raw().await;
    let payload = Bytes::from(vec![1u8; INITIAL_STREAM_CREDIT as usize + 1]);
    raw.send_data(encode(&StreamFrame::data(payload)), false)
        .unwrap();
    let mut read = 0;
    let err = loop {
        match poll_fn(|cx| server.poll_read(cx)).await {
            Ok(Some(c)) => read += c.len(),
            Ok(None) => panic!("ended cleanly"),
            Err(e) => break e,
        }
    };
    assert!(err.0.contains("granted"), "{err}");
    assert_eq!(read, 0);
    // Another stream on the same connection is unaffected.
    let (mut c2, mut s2) = pair.open().await;
    assert_eq!(
        send_until_blocked(&mut c2, 1000, Duration::from_secs(5)).await,
        1000
    );
    c2.send_fin().unwrap();
    assert_eq!(read_all(&mut s2).await, 1000);
}
