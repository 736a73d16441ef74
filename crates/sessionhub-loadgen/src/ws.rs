//! A bare WebSocket client (RFC 6455, no extensions) for the benchmark clients.
//!
//! A thousand of these receive every fan-out delivery, so they are kept cheap: frames are
//! parsed in place in one reused read buffer and handed out as borrowed bytes (no message
//! allocation, no copy, no UTF-8 pass), several frames that arrived together are taken
//! from one `read`, and a frame is sent with one `write`. Server pings are answered at
//! once; fragmented messages are reassembled.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Initial size of the read buffer (it grows for a larger frame).
const READ_BUFFER: usize = 4096;
/// Largest message accepted.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest upgrade response accepted.
const MAX_HANDSHAKE: usize = 16 << 10;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A received data message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Msg<'a> {
    /// A text message (not checked for UTF-8).
    Text(&'a [u8]),
    /// A binary message.
    Binary(&'a [u8]),
}

/// A frame header read from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHead {
    fin: bool,
    opcode: u8,
    /// Header length, mask key included.
    header: usize,
    payload: usize,
    mask: Option<[u8; 4]>,
}

/// Parses a frame header at the start of `buf`; `None` while incomplete.
fn parse_frame_head(buf: &[u8]) -> anyhow::Result<Option<FrameHead>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        bail!("reserved bits set in a frame header");
    }
    let masked = b1 & 0x80 != 0;
    let (mut header, payload) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(len);
            (10, usize::try_from(len).unwrap_or(usize::MAX))
        }
        n => (2, usize::from(n)),
    };
    if payload > MAX_MESSAGE {
        bail!("frame of {payload} bytes is too large");
    }
    let mask = if masked {
        if buf.len() < header + 4 {
            return Ok(None);
        }
        let key = [
            buf[header],
            buf[header + 1],
            buf[header + 2],
            buf[header + 3],
        ];
        header += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        header,
        payload,
        mask,
    }))
}

fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let masked = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// Appends a masked client frame to `out`.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// An open client WebSocket.
pub(crate) struct Ws {
    stream: TcpStream,
    /// Received bytes; `buf[start..end]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being reassembled, and its opcode.
    fragments: Vec<u8>,
    fragment_opcode: Option<u8>,
    /// Frames to send; what is left of it after a cancelled send goes first next time.
    out: Vec<u8>,
    /// xorshift state for mask keys.
    rng: u32,
}

impl Ws {
    /// Upgrades `stream` (connected to `node`) to a WebSocket at `path`.
    pub(crate) async fn handshake(
        mut stream: TcpStream,
        node: SocketAddr,
        path: &str,
    ) -> anyhow::Result<Self> {
        // The key only has to be 16 bytes in base64; servers just hash it back.
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {node}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: bG9hZGdlbi1zZXNzaW9uaA==\r\nsec-websocket-version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; READ_BUFFER];
        let mut filled = 0;
        let head_len = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response
                .parse(&buf[..filled])
                .context("malformed upgrade response")?
            {
                httparse::Status::Complete(len) => {
                    if response.code != Some(101) {
                        bail!(
                            "upgrade refused: {} {}",
                            response.code.unwrap_or(0),
                            String::from_utf8_lossy(&buf[len..filled])
                        );
                    }
                    break len;
                }
                httparse::Status::Partial => {}
            }
            if filled == buf.len() {
                if buf.len() >= MAX_HANDSHAKE {
                    bail!("upgrade response too large");
                }
                buf.resize(buf.len() * 2, 0);
            }
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                bail!("connection closed during the upgrade");
            }
            filled += n;
        };
        let seed = stream
            .local_addr()
            .map(|a| u32::from(a.port()) << 8)
            .unwrap_or(0);
        buf.resize(READ_BUFFER.max(filled), 0);
        Ok(Self {
            stream,
            buf,
            start: head_len,
            end: filled,
            fragments: Vec::new(),
            fragment_opcode: None,
            out: Vec::new(),
            rng: seed | 0x9E37_79B9,
        })
    }

    fn mask_key(&mut self) -> [u8; 4] {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x.to_ne_bytes()
    }

    /// Sends one text frame.
    pub(crate) async fn send_text(&mut self, text: &[u8]) -> anyhow::Result<()> {
        let key = self.mask_key();
        push_frame(&mut self.out, OP_TEXT, text, key);
        self.flush().await
    }

    /// Writes whatever is queued. Cancel-safe: what was written is gone from the queue.
    async fn flush(&mut self) -> anyhow::Result<()> {
        while !self.out.is_empty() {
            let n = self.stream.write(&self.out).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    /// The next data message; `None` once the server closed the connection. Answers pings
    /// on the way. Cancel-safe: a partly received frame stays buffered.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Msg<'_>>> {
        loop {
            if !self.out.is_empty() {
                self.flush().await?;
            }
            let Some(head) = parse_frame_head(&self.buf[self.start..self.end])? else {
                if !self.fill().await? {
                    return Ok(None);
                }
                continue;
            };
            let total = head.header + head.payload;
            if self.end - self.start < total {
                self.reserve(total);
                if !self.fill().await? {
                    return Ok(None);
                }
                continue;
            }
            let payload = self.start + head.header..self.start + total;
            self.start += total;
            if let Some(key) = head.mask {
                apply_mask(&mut self.buf[payload.clone()], key);
            }
            match head.opcode {
                OP_PING => {
                    let key = self.mask_key();
                    push_frame(&mut self.out, OP_PONG, &self.buf[payload], key);
                }
                OP_PONG => {}
                OP_CLOSE => return Ok(None),
                OP_TEXT | OP_BINARY if head.fin => {
                    if self.fragment_opcode.is_some() {
                        bail!("a new message inside a fragmented one");
                    }
                    let data = &self.buf[payload];
                    return Ok(Some(if head.opcode == OP_TEXT {
                        Msg::Text(data)
                    } else {
                        Msg::Binary(data)
                    }));
                }
                OP_TEXT | OP_BINARY => {
                    if self.fragment_opcode.is_some() {
                        bail!("a new message inside a fragmented one");
                    }
                    self.fragment_opcode = Some(head.opcode);
                    self.fragments.clear();
                    self.fragments.extend_from_slice(&self.buf[payload]);
                }
                OP_CONTINUATION => {
                    let Some(opcode) = self.fragment_opcode else {
                        bail!("a continuation frame without a message");
                    };
                    if self.fragments.len() + payload.len() > MAX_MESSAGE {
                        bail!("message too large");
                    }
                    self.fragments.extend_from_slice(&self.buf[payload]);
                    if head.fin {
                        self.fragment_opcode = None;
                        let data = &self.fragments[..];
                        return Ok(Some(if opcode == OP_TEXT {
                            Msg::Text(data)
                        } else {
                            Msg::Binary(data)
                        }));
                    }
                }
                other => bail!("unknown opcode {other}"),
            }
        }
    }

    /// Makes room for a frame of `total` bytes from `start`.
    fn reserve(&mut self, total: usize) {
        if self.start + total > self.buf.len() {
            self.compact();
            if total > self.buf.len() {
                self.buf.resize(total, 0);
            }
        }
    }

    /// Moves the unread bytes to the front of the buffer.
    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// Reads more bytes after `end`; `false` at the end of the stream.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.compact();
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_heads() {
        assert_eq!(parse_frame_head(&[]).unwrap(), None);
        assert_eq!(parse_frame_head(&[0x81]).unwrap(), None);
        assert_eq!(
            parse_frame_head(&[0x81, 5, b'h']).unwrap(),
            Some(FrameHead {
                fin: true,
                opcode: OP_TEXT,
                header: 2,
                payload: 5,
                mask: None
            })
        );
        assert_eq!(parse_frame_head(&[0x01, 126, 1]).unwrap(), None);
        assert_eq!(
            parse_frame_head(&[0x01, 126, 1, 0])
                .unwrap()
                .unwrap()
                .payload,
            256
        );
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        let h = parse_frame_head(&long).unwrap().unwrap();
        assert_eq!((h.header, h.payload, h.fin), (10, 70_000, true));
        assert!(
            parse_frame_head(&[0xC1, 0]).is_err(),
            "RSV1 without an extension"
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_frame_head(&huge).is_err());
        let h = parse_frame_head(&[0x89, 0x82, 1, 2, 3, 4, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        assert_eq!(h.header, 6);
    }

    #[test]
    fn masks_like_the_rfc() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let key = [0x37, 0xfa, 0x21, 0x3d];
            let mut masked = data.clone();
            apply_mask(&mut masked, key);
            let expected: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(masked, expected);
        }
    }

    #[test]
    fn client_frames_are_masked() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            push_frame(&mut out, OP_TEXT, &payload, [9, 8, 7, 6]);
            let h = parse_frame_head(&out).unwrap().unwrap();
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            assert_eq!(h.payload, len);
            assert_eq!(h.mask, Some([9, 8, 7, 6]));
            assert_eq!(out.len(), h.header + len);
            let mut data = out[h.header..].to_vec();
            apply_mask(&mut data, [9, 8, 7, 6]);
            assert_eq!(data, payload);
        }
    }

    /// A server on a local socket: the upgrade, two frames in one write, a ping, a
    /// fragmented message, a large frame, a message from the client, then a close.
    #[tokio::test]
    async fn talks_to_a_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let req = crate::http::tests::read_head(&mut s).await;
            assert!(req.starts_with("GET /websocket/u1 HTTP/1.1\r\n"), "{req}");
            assert!(req.contains("sec-websocket-version: 13\r\n"));
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                connection: Upgrade\r\nsec-websocket-accept: x\r\n\r\n"
                .to_vec();
            // The greeting arrives with the upgrade response.
            out.extend_from_slice(&[0x81, 5]);
            out.extend_from_slice(b"hello");
            out.extend_from_slice(&[0x81, 3]);
            out.extend_from_slice(b"two");
            out.extend_from_slice(&[0x89, 2, b'p', b'!']);
            out.extend_from_slice(&[0x01, 3]);
            out.extend_from_slice(b"fra");
            out.extend_from_slice(&[0x80, 4]);
            out.extend_from_slice(b"gged");
            s.write_all(&out).await.unwrap();
            // The pong comes back masked.
            let mut pong = [0u8; 8];
            s.read_exact(&mut pong).await.unwrap();
            let h = parse_frame_head(&pong).unwrap().unwrap();
            assert_eq!((h.opcode, h.payload), (OP_PONG, 2));
            let mut data = pong[6..].to_vec();
            apply_mask(&mut data, h.mask.unwrap());
            assert_eq!(data, b"p!");
            // A frame larger than the read buffer, in two writes.
            let big = vec![b'z'; 10_000];
            let mut frame = vec![0x82, 126];
            frame.extend_from_slice(&10_000u16.to_be_bytes());
            frame.extend_from_slice(&big);
            s.write_all(&frame[..3000]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.write_all(&frame[3000..]).await.unwrap();
            // A message from the client.
            let mut head = [0u8; 6];
            s.read_exact(&mut head).await.unwrap();
            let h = parse_frame_head(&head).unwrap().unwrap();
            let mut data = vec![0u8; h.payload];
            s.read_exact(&mut data).await.unwrap();
            apply_mask(&mut data, h.mask.unwrap());
            assert_eq!(data, b"from client");
            s.write_all(&[0x88, 0]).await.unwrap();
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut ws = Ws::handshake(stream, addr, "/websocket/u1").await.unwrap();
        assert_eq!(ws.next().await.unwrap(), Some(Msg::Text(b"hello")));
        assert_eq!(ws.next().await.unwrap(), Some(Msg::Text(b"two")));
        assert_eq!(ws.next().await.unwrap(), Some(Msg::Text(b"fragged")));
        match ws.next().await.unwrap() {
            Some(Msg::Binary(b)) => assert!(b.len() == 10_000 && b.iter().all(|&c| c == b'z')),
            other => panic!("{other:?}"),
        }
        ws.send_text(b"from client").await.unwrap();
        assert_eq!(ws.next().await.unwrap(), None);
        server.await.unwrap();
    }
}
