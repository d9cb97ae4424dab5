//! One data stream (one proxied connection) as both ends use it: gRPC
//! messages written into and read out of an HTTP/2 stream by the code that
//! has the bytes, without a task per stream, with the tunnel's per-stream
//! credit (see [`crate::flow`]).
//!
//! A stream has two phases. While it is being opened, [`DataStream::send_frame`]
//! and [`DataStream::next_frame`] exchange the control frames (`open`,
//! `opened`, `error`) one at a time. Once it carries a connection,
//! [`DataStream::poll_read`] hands out the payload as it arrives and
//! [`DataStream::poll_send_credit`] / [`DataStream::send_data`] send it:
//! both pull every frame that has arrived, so a `credit` frame is never
//! stuck behind data nobody reads (what arrives is bounded by the credit
//! this side granted), and a reader's hand-off grants credit back.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tunnel_proto::{stream_frame::Kind, StreamFrame, INITIAL_STREAM_CREDIT};

use crate::flow::{ConnectionFlow, RecvWindow, SendStarvation};
use crate::grpc::{encode, ok_trailers, status_error, status_response, Decoder, StreamBroken};

/// Which end of the RPC: it decides how a side ends its half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends the request: ends it with an empty DATA frame (END_STREAM).
    Client,
    /// Sends the response: ends it with `grpc-status: 0` trailers.
    Server,
}

/// One data stream: both halves of the `Data` RPC and its flow control.
#[derive(Debug)]
pub struct DataStream {
    send: SendStream<Bytes>,
    role: Role,
    recv: RecvStream,
    decoder: Decoder,
    /// The peer ended its half of the RPC (cleanly or not).
    ended: bool,
    flow: Arc<ConnectionFlow>,
    window: RecvWindow,
    /// Payload bytes this side may still send.
    send_credit: u64,
    /// Whether running out of credit is worth saying `blocked`.
    starvation: SendStarvation,
    /// Payload received and not read yet, in order.
    inbound: VecDeque<Bytes>,
    /// The peer said `fin`: after `inbound`, the reader sees the end.
    peer_fin: bool,
    /// The peer ended its half after its `fin`: no more credit can come.
    peer_done: bool,
    /// The peer reported an error (`StreamFrame.error`) or broke the stream.
    failed: Option<StreamBroken>,
    /// Tasks waiting for payload and for credit, when another call pulls
    /// what they wait for.
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl DataStream {
    pub fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        role: Role,
        flow: Arc<ConnectionFlow>,
    ) -> Self {
        Self {
            send,
            role,
            recv,
            decoder: Decoder::default(),
            ended: false,
            flow,
            window: RecvWindow::new(Instant::now()),
            send_credit: INITIAL_STREAM_CREDIT,
            starvation: SendStarvation::new(Instant::now()),
            inbound: VecDeque::new(),
            peer_fin: false,
            peer_done: false,
            failed: None,
            read_waker: None,
            write_waker: None,
        }
    }

    // -- opening: control frames, one at a time

    /// Waits for HTTP/2 window, then sends a control frame.
    pub async fn send_frame(&mut self, frame: &StreamFrame) -> Result<(), StreamBroken> {
        poll_fn(|cx| poll_window(&mut self.send, cx)).await?;
        Ok(self.send.send_data(encode(frame), false)?)
    }

    /// The next frame as it arrived; `None` once the peer ended its half.
    /// For opening a stream, before any payload flows.
    pub async fn next_frame(&mut self) -> Option<Result<StreamFrame, StreamBroken>> {
        poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Whether the peer has ended or reset its half (a parked stream that
    /// says so is of no use).
    pub fn is_closed(&self) -> bool {
        self.ended || self.recv.is_end_stream()
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<StreamFrame, StreamBroken>>> {
        loop {
            if let Some(frame) = self.decoder.decode_next().transpose() {
                return Poll::Ready(Some(frame));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    // HTTP/2's window is only a backstop (the credit is
                    // the flow control): release it as soon as it arrives.
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    let trailers = ready!(self.recv.poll_trailers(cx));
                    self.ended = true;
                    match trailers {
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        Ok(Some(t)) => {
                            if let Some(e) = status_error(&t) {
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                        Ok(None) => {}
                    }
                    if !self.decoder.is_empty() {
                        return Poll::Ready(Some(Err(StreamBroken(
                            "the stream ended inside a message".into(),
                        ))));
                    }
                }
            }
        }
    }

    // -- carrying a connection

    /// Takes in every frame that has arrived: payload into `inbound`,
    /// credit into `send_credit`. Ready once at least one frame was taken
    /// in, or nothing more can come (the stream failed or the peer ended
    /// its half).
    fn poll_pull(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut pulled = false;
        while self.failed.is_none() && !self.peer_done {
            let frame = match self.poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => {
                    self.fail_with(e);
                    break;
                }
                Poll::Ready(None) if self.peer_fin => {
                    self.peer_done = true;
                    wake(&mut self.write_waker, cx);
                    break;
                }
                Poll::Ready(None) => {
                    self.fail_with(StreamBroken("ended without fin".into()));
                    break;
                }
            };
            pulled = true;
            match frame.kind {
                Some(Kind::Data(_)) if self.peer_fin => {
                    self.fail_with(StreamBroken("data after fin".into()));
                }
                Some(Kind::Data(payload)) => {
                    if let Err(overrun) = self.window.on_received(payload.len() as u64) {
                        self.fail_with(StreamBroken(overrun.to_string()));
                    } else if !payload.is_empty() {
                        self.inbound.push_back(payload);
                        wake(&mut self.read_waker, cx);
                    }
                }
                Some(Kind::Credit(c)) => {
                    self.send_credit += c.bytes;
                    self.starvation.credited(Instant::now());
                    wake(&mut self.write_waker, cx);
                }
                Some(Kind::Blocked(_)) => {
                    let credit = self.window.on_blocked(Instant::now(), &self.flow);
                    self.grant(credit);
                }
                Some(Kind::Fin(_)) => {
                    self.peer_fin = true;
                    wake(&mut self.read_waker, cx);
                }
                Some(Kind::Error(e)) => {
                    self.fail_with(StreamBroken(format!("peer: {}", e.message)));
                }
                // `open` and `opened` belong to opening; newer kinds are ignored.
                _ => {}
            }
        }
        if pulled || self.failed.is_some() || self.peer_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn fail_with(&mut self, e: StreamBroken) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
        for waker in [self.read_waker.take(), self.write_waker.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }

    /// The next payload chunk; `None` once the peer said `fin`. Taking a
    /// chunk counts it as handed on, which may grant the peer more credit.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamBroken>> {
        loop {
            if let Some(chunk) = self.inbound.pop_front() {
                self.consumed(chunk.len());
                return Poll::Ready(Ok(Some(chunk)));
            }
            if self.peer_fin {
                return Poll::Ready(Ok(None));
            }
            if let Some(e) = &self.failed {
                return Poll::Ready(Err(e.clone()));
            }
            if self.poll_pull(cx).is_pending() {
                self.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    }

    fn consumed(&mut self, n: usize) {
        let credit = self
            .window
            .on_consumed(n as u64, Instant::now(), &self.flow);
        self.grant(credit);
    }

    fn grant(&mut self, credit: Option<u64>) {
        if let Some(credit) = credit {
            // A small control frame: HTTP/2 always has room for it (see
            // `settings`), and a closed half has no one to grant it to.
            let _ = self
                .send
                .send_data(encode(&StreamFrame::credit(credit)), false);
        }
    }

    /// Ready with how many payload bytes may be sent now (at least one),
    /// once the peer has granted credit and HTTP/2 has room.
    pub fn poll_send_credit(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, StreamBroken>> {
        loop {
            if let Some(e) = &self.failed {
                return Poll::Ready(Err(e.clone()));
            }
            if self.send_credit > 0 {
                ready!(poll_window(&mut self.send, cx))?;
                return Poll::Ready(Ok(self.send_credit.min(usize::MAX as u64) as usize));
            }
            if self.peer_done {
                return Poll::Ready(Err(StreamBroken(
                    "the peer ended the stream while we were sending".into(),
                )));
            }
            if self.starvation.exhausted(Instant::now()) {
                // The window holds this stream back: the receiver uses
                // this to tell a window that is too small from a slow
                // reader.
                let _ = self.send.send_data(encode(&StreamFrame::blocked()), false);
            }
            if self.poll_pull(cx).is_pending() {
                self.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    }

    /// Sends a data frame already encoded ([`crate::grpc::encode_data`],
    /// [`crate::grpc::frame_in_place`]) carrying `payload` bytes; call after
    /// [`DataStream::poll_send_credit`] allowed at least that many.
    pub fn send_data(&mut self, message: Bytes, payload: usize) -> Result<(), StreamBroken> {
        debug_assert!(payload as u64 <= self.send_credit);
        self.send_credit -= payload as u64;
        Ok(self.send.send_data(message, false)?)
    }

    /// Says `fin`: this side sends nothing more.
    pub fn send_fin(&mut self) -> Result<(), StreamBroken> {
        Ok(self.send.send_data(encode(&StreamFrame::fin()), false)?)
    }

    /// Ends this half of the RPC cleanly. Whatever was sent before is still
    /// delivered; dropping the stream without this resets it instead.
    pub fn finish(&mut self) {
        self.send.reserve_capacity(0);
        let _ = match self.role {
            Role::Client => self.send.send_data(Bytes::new(), true),
            Role::Server => self.send.send_trailers(ok_trailers()),
        };
    }

    /// Ends this half of the RPC with an error status (a server refusing a
    /// stream it has already answered).
    pub fn fail(&mut self, code: tonic::Code, message: &str) {
        self.send.reserve_capacity(0);
        let _ = self
            .send
            .send_trailers(status_response(code, message).headers().clone());
    }

    /// Waits until the peer ends its half (bounded by the caller), dropping
    /// what it sends: after both `fin`s, so that the frames still queued
    /// on either side are delivered before the stream is dropped.
    pub async fn drain(&mut self) {
        while let Some(Ok(_)) = self.next_frame().await {}
    }

    /// Payload bytes received and not read yet (for tests and accounting).
    pub fn buffered(&self) -> u64 {
        self.window.buffered()
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        self.window.release(&self.flow);
    }
}

fn wake(waker: &mut Option<Waker>, cx: &Context<'_>) {
    if let Some(w) = waker.take() {
        if !w.will_wake(cx.waker()) {
            w.wake();
        }
    }
}

/// Ready once `send` has HTTP/2 window for more data, or failed if the
/// stream was reset or closed meanwhile.
pub(crate) fn poll_window(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), StreamBroken>> {
    // One byte, as hyper does: h2 raises the claim to what is buffered.
    send.reserve_capacity(1);
    while send.capacity() == 0 {
        // Waiting: wake up for a reset too, not only for more window.
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            let why = reason.map_or_else(|e| e.to_string(), |r| format!("reset ({r:?})"));
            return Poll::Ready(Err(StreamBroken(why)));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            None => return Poll::Ready(Err(StreamBroken("stream closed".into()))),
        }
    }
    Poll::Ready(Ok(()))
}
