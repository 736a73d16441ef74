//! The WebSocket handshake (RFC 6455 over HTTP/1.1), done here rather than by axum's
//! `WebSocketUpgrade`: a connection closed for the client's fault must keep reading what
//! the client still sends until the client's own close frame (`socket.rs`, `linger`), and
//! axum's `WebSocket` hides the TCP stream under it. The stream is [`Watched`] so that the
//! end of that close frame can be found even after an oversized frame, whose payload the
//! WebSocket layer never reads. Everything else is as axum did it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::error::ApiError;
use crate::wire::{Wire, WireOf};

/// An accepted WebSocket, over the upgraded HTTP connection (reachable with `get_mut`).
pub(super) type Socket = WebSocketStream<Watched<TokioIo<Upgraded>>>;

/// A request to upgrade to a WebSocket, checked; `accept` answers it.
pub(super) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The connection's wire, when the server accepted it with [`crate::wire::Listener`].
    wire: Option<Arc<Wire>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let refuse = |why: &str| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                format!("this is a WebSocket endpoint: {why}"),
            )
        };
        // HTTP/2's extended CONNECT is not served: the server speaks HTTP/1.1 only.
        if parts.version > Version::HTTP_11 || parts.method != Method::GET {
            return Err(refuse("upgrade with GET over HTTP/1.1"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse("`Connection` header did not include 'upgrade'"));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse("`Upgrade` header did not include 'websocket'"));
        }
        if !has_token(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(refuse(
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| refuse("`Sec-WebSocket-Key` header missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| refuse("the connection cannot be upgraded"))?;
        let wire = parts.extensions.get::<WireOf>().map(|w| w.0.clone());
        Ok(Self {
            key,
            on_upgrade,
            wire,
        })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and runs `then` on the socket once the client has
    /// it.
    pub(super) fn accept<F, Fut>(self, config: WebSocketConfig, then: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        let wire = self.wire;
        let open = async move {
            match on_upgrade.await {
                Ok(upgraded) => Some(
                    WebSocketStream::from_raw_socket(
                        Watched::new(TokioIo::new(upgraded), wire),
                        Role::Server,
                        Some(config),
                    )
                    .await,
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    None
                }
            }
        };
        // Chained, not one `async` block: a block would keep `then` and what it captured
        // (the user, credentials, a clone of the gateway) reserved in the task beside the
        // connection's future for as long as the socket lives, since an `async` block's
        // captures keep their room after they are moved out. `then` combinators hold either
        // the opening or the connection, never both.
        tokio::spawn(open.then(move |socket| OptionFuture::from(socket.map(then))));
        let accept = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

/// Whether the comma-separated header `name` has `token`, in any case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A client's stream, read through a tally of the frames in it: where each ends and whether
/// a close frame has come whole. Costs a look at each frame header (never at payloads),
/// 24 bytes per connection. It also holds the connection's [`Wire`], if it has one.
#[derive(Debug)]
pub(super) struct Watched<S> {
    inner: S,
    frames: Frames,
    wire: Option<Arc<Wire>>,
}

impl<S> Watched<S> {
    fn new(inner: S, wire: Option<Arc<Wire>>) -> Self {
        Self {
            inner,
            frames: Frames::default(),
            wire,
        }
    }

    /// The connection's wire, which deliveries may be written to straight
    /// ([`crate::wire`]): the stream under this one, when the server accepted it with
    /// [`crate::wire::Listener`].
    pub(super) fn wire(&self) -> Option<&Arc<Wire>> {
        self.wire.as_ref()
    }

    /// Whether the client has sent a whole close frame: it will send nothing more.
    pub(super) fn close_received(&self) -> bool {
        self.frames.closed
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.frames.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Frame boundaries in a client's byte stream (RFC 6455 5.2).
#[derive(Debug, Default)]
struct Frames {
    /// The header being read, and how much of it has come.
    header: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come.
    skip: u64,
    /// Whether the current frame is a close frame.
    in_close: bool,
    /// Whether a close frame has come whole.
    closed: bool,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.closed {
            if self.skip > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip -= n as u64;
                bytes = &bytes[n..];
                self.closed = self.skip == 0 && self.in_close;
                continue;
            }
            self.header[usize::from(self.have)] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some(skip) = self.payload_len() {
                self.in_close = self.header[0] & 0x0f == 0x8;
                self.skip = skip;
                self.have = 0;
                self.closed = skip == 0 && self.in_close;
            }
        }
    }

    /// The payload length, once the header has come whole.
    fn payload_len(&self) -> Option<u64> {
        let h = &self.header[..usize::from(self.have)];
        if h.len() < 2 {
            return None;
        }
        let (len_bytes, short) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        if h.len() < 2 + len_bytes + mask {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            h[2..2 + len_bytes]
                .iter()
                .fold(0, |len, &b| len << 8 | u64::from(b))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::Frames;

    /// A masked client frame with `opcode` and a payload of `len` bytes.
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend((len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend((len as u64).to_be_bytes());
            }
        }
        f.extend([1, 2, 3, 4]);
        // Payload bytes that look like close frames must not fool it.
        f.extend(std::iter::repeat_n(0x88, len));
        f
    }

    #[test]
    fn a_close_after_frames_of_every_length_is_found_in_any_pieces() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 65535, 65536, 200_000] {
            stream.extend(frame(0x1, len));
        }
        let close_at = stream.len();
        stream.extend(frame(0x8, 2));
        for piece in [1, 3, 1000, stream.len()] {
            let mut frames = Frames::default();
            for (i, chunk) in stream.chunks(piece).enumerate() {
                assert!(!frames.closed, "piece {piece}: closed before chunk {i}");
                frames.feed(chunk);
            }
            assert!(frames.closed, "piece {piece}");
            let mut frames = Frames::default();
            frames.feed(&stream[..close_at + 7]);
            assert!(!frames.closed, "a close is whole only with its payload");
        }
    }

    #[test]
    fn an_empty_close_counts() {
        let mut frames = Frames::default();
        frames.feed(&frame(0x8, 0));
        assert!(frames.closed);
    }
}
