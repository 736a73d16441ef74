//! A connection's TCP stream, shared by its socket's task and the tasks that deliver to it.
//!
//! Without it, a publication reaches a socket in two steps: the delivering task (the
//! broker's subscriber) queues it, then wakes the socket's task, which frames it and
//! writes it. At fan-out 100 that wake-up, the queue round trip and the socket task's
//! `select!` cost more than the `sendto` itself (`docs/benchmarks.md`, "Cost per unit of
//! work"). With a [`Wire`], the delivering task writes a ready frame straight into an idle
//! socket (`Wire::try_send`); the socket's task is woken only when that cannot be done
//! whole: its queue is not empty, it is writing itself, or the kernel's buffer is full.
//!
//! The bytes on the wire never interleave: every write, by either side, happens under the
//! wire's lock, and a write that went out in part leaves the wire to the rest of it. A
//! delivering task's unwritten rest waits in `WireState::pending`, in front of anything
//! else, until the socket's task flushes it; the socket's task's own unwritten bytes
//! (tungstenite keeps them in its buffer) mark the wire `WireState::blocked` until they
//! are out. Order is the queue's business: a delivering task writes only when the queue is
//! empty and the socket's task is not between taking an item and writing it (`Wire::busy`).
//!
//! A wire exists only where the server accepts with [`Listener`] and serves with
//! [`serve`]'s make-service ([`Wired`]); sockets served any other way (`axum::serve` on a
//! plain `TcpListener`) work as before, every delivery through the socket's task.

use std::convert::Infallible;
use std::future::Ready;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A connection's TCP stream (its writing half: [`Stream`] reads) and who may write to it
/// now.
#[derive(Debug)]
pub struct Wire {
    stream: OwnedWriteHalf,
    state: Mutex<WireState>,
    /// The socket's task took an item off its queue and has not finished with it (set by
    /// the queue under its lock, cleared by the task when it looks for more): a
    /// delivering task writing now could overtake that item.
    pub(crate) busy: AtomicBool,
}

#[derive(Debug, Default)]
struct WireState {
    /// The unwritten rest of a frame a delivering task began: goes out before anything else.
    pending: Vec<u8>,
    /// The socket's task wrote part of its buffer, or nothing of it: its bytes go next.
    blocked: bool,
}

/// What `Wire::try_send` did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The whole frame is in the kernel's hands.
    All,
    /// Part of it is: the rest waits in the wire until the socket's task flushes it.
    Part,
    /// None of it: the wire is not free, or the kernel took nothing; queue it instead.
    Nothing,
}

impl Wire {
    /// The wire of `stream`'s writing half.
    pub(crate) fn new(stream: OwnedWriteHalf) -> Self {
        Self {
            stream,
            state: Mutex::default(),
            busy: AtomicBool::new(false),
        }
    }

    /// Waits (registers `cx`) until the socket takes writes again. `&self`: the socket's task
    /// is the only one that waits; delivering tasks never do.
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsRef::<TcpStream>::as_ref(&self.stream).poll_write_ready(cx)
    }

    /// Writes `payload` as one unmasked WebSocket text frame, if the wire is free and the
    /// kernel takes at least some of it. Never waits.
    pub(crate) fn try_send(&self, payload: &[u8]) -> Sent {
        let mut state = self.state.lock().unwrap();
        if state.blocked || !state.pending.is_empty() {
            return Sent::Nothing;
        }
        let (header, header_len) = text_frame_header(payload.len());
        let header = &header[..header_len];
        let total = header.len() + payload.len();
        let bufs = [io::IoSlice::new(header), io::IoSlice::new(payload)];
        match self.stream.try_write_vectored(&bufs) {
            Ok(n) if n == total => Sent::All,
            Ok(n) if n > 0 => {
                // The frame must end before anything else starts: keep its rest in front.
                let rest = header.iter().chain(payload).skip(n);
                state.pending.extend(rest);
                Sent::Part
            }
            // WouldBlock, or an error the socket's task will meet on its own.
            _ => Sent::Nothing,
        }
    }

    /// Writes what a delivering task left, waiting for the socket to take it.
    fn poll_pending(&self, cx: &mut Context<'_>, state: &mut WireState) -> Poll<io::Result<()>> {
        while !state.pending.is_empty() {
            match self.stream.try_write(&state.pending) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    state.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_writable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // A burst's rest may have been large; an idle socket keeps nothing.
        state.pending = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Writes what the socket's task (tungstenite, or hyper before the upgrade) hands over.
    fn poll_write(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            let mut state = self.state.lock().unwrap();
            if let Err(e) = ready!(self.poll_pending(cx, &mut state)) {
                return Poll::Ready(Err(e));
            }
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    // tungstenite hands over its whole buffer, which holds whole frames:
                    // all of it written is a frame boundary, anything less is not.
                    state.blocked = n < total;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    state.blocked = true;
                    drop(state);
                    ready!(self.poll_writable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state.lock().unwrap();
        self.poll_pending(cx, &mut state)
    }
}

/// The header of an unmasked, final text frame of `len` payload bytes (RFC 6455 5.2), and
/// how many of the 10 bytes it takes.
fn text_frame_header(len: usize) -> ([u8; 10], usize) {
    let mut header = [0; 10];
    header[0] = 0x81;
    let used = match len {
        0..=125 => {
            header[1] = len as u8;
            2
        }
        126..=0xffff => {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (header, used)
}

/// A connection's stream as the HTTP server and the WebSocket read and write it: reads
/// from its own half, writes through the [`Wire`].
#[derive(Debug)]
pub struct Stream {
    read: OwnedReadHalf,
    wire: Arc<Wire>,
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wire.poll_write(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.wire.poll_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // As a `TcpStream`: hyper writes a response's head and body in one call.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.wire.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.wire.poll_flush(cx))?;
        // Half-closes for whoever holds the wire; the descriptor closes with the last of them.
        let stream: &TcpStream = self.wire.stream.as_ref();
        Poll::Ready(socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write))
    }
}

/// A TCP listener whose connections carry a [`Wire`]; serve it with [`serve`].
#[derive(Debug)]
pub struct Listener(TcpListener);

impl Listener {
    /// Listens on what `listener` is bound to.
    pub fn new(listener: TcpListener) -> Self {
        Self(listener)
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        let (stream, peer) = axum::serve::Listener::accept(&mut self.0).await;
        let (read, write) = stream.into_split();
        let wire = Arc::new(Wire::new(write));
        (Stream { read, wire }, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The wire of the connection a request came on, in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct WireOf(pub(crate) Arc<Wire>);

/// Serves `router` on `listener` as `axum::serve` does, each request carrying its peer's
/// address (`ConnectInfo<SocketAddr>`, as `into_make_service_with_connect_info` gives it)
/// and its connection's [`Wire`], which WebSockets take for direct delivery.
pub fn serve(
    listener: Listener,
    router: axum::Router,
) -> axum::serve::Serve<Listener, MakeWired, Wired> {
    axum::serve(listener, MakeWired(router))
}

/// Makes each connection's [`Wired`] service ([`serve`]).
#[derive(Debug, Clone)]
pub struct MakeWired(axum::Router);

impl tower::Service<IncomingStream<'_, Listener>> for MakeWired {
    type Response = Wired;
    type Error = Infallible;
    type Future = Ready<Result<Wired, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: IncomingStream<'_, Listener>) -> Self::Future {
        std::future::ready(Ok(Wired {
            router: self.0.clone(),
            peer: *incoming.remote_addr(),
            wire: incoming.io().wire.clone(),
        }))
    }
}

/// One connection's service: the router, with the peer's address and the wire added to
/// every request.
#[derive(Debug, Clone)]
pub struct Wired {
    router: axum::Router,
    peer: SocketAddr,
    wire: Arc<Wire>,
}

impl tower::Service<Request> for Wired {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <axum::Router as tower::Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(self.peer));
        extensions.insert(WireOf(self.wire.clone()));
        self.router.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_take_the_shortest_length_form() {
        assert_eq!(text_frame_header(0), ([0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(text_frame_header(125).0[..2], [0x81, 125]);
        assert_eq!(
            text_frame_header(126),
            ([0x81, 126, 0, 126, 0, 0, 0, 0, 0, 0], 4)
        );
        assert_eq!(text_frame_header(0xffff).0[..4], [0x81, 126, 0xff, 0xff]);
        assert_eq!(
            text_frame_header(0x1_0000),
            ([0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0], 10)
        );
    }
}
