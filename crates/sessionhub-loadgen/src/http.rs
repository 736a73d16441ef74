//! A bare HTTP/1.1 client over one keep-alive connection, one request at a time.
//!
//! The fan-out publishers and the sessions scenario send tens of thousands of small requests
//! per second from the same 2 cores as the server under test, so the client's own CPU per
//! request matters: this one builds each request into a reused buffer and writes it with one
//! `write`, and reads the answer into a reused buffer with (usually) one `read`; no URL
//! parsing, header maps, connection pool or background task. It understands what the
//! targets answer: `Content-Length` or chunked bodies, `Connection: close`, and a peer that
//! closed an idle keep-alive connection (checked before reusing one that waited).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most headers read from one response.
const MAX_HEADERS: usize = 32;
/// Largest response accepted.
const MAX_RESPONSE: usize = 16 << 20;
/// A connection idle for longer than this is checked for a close from the peer before it
/// is reused (Node closes idle keep-alive connections after 5 s).
const STALE_AFTER: Duration = Duration::from_millis(200);
/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Appends the decimal digits of `n` to `out`.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// One keep-alive connection to one server; reconnects when needed.
pub(crate) struct Conn {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    last_used: Instant,
    /// The request being sent.
    out: Vec<u8>,
    /// The response being read (`filled` bytes of it).
    buf: Vec<u8>,
    filled: usize,
    /// A decoded chunked body.
    chunked: Vec<u8>,
}

/// A response, borrowed from the connection's buffers until the next request.
#[derive(Debug)]
pub(crate) struct Response<'a> {
    /// Status code.
    pub(crate) status: u16,
    head: &'a [u8],
    /// The body, decoded.
    pub(crate) body: &'a [u8],
}

impl Response<'_> {
    /// `true` for 2xx.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The values of every header called `name` (case-insensitive).
    pub(crate) fn headers(&self, name: &str) -> Vec<&[u8]> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        // The head was parsed once already, so this cannot fail.
        if !matches!(response.parse(self.head), Ok(httparse::Status::Complete(_))) {
            return Vec::new();
        }
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    }
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The parts of a parsed response head the reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    len: usize,
    status: u16,
    framing: Framing,
    close: bool,
}

/// Parses a response head at the start of `buf`; `None` while incomplete.
fn parse_head(buf: &[u8], method_is_head: bool) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).context("malformed HTTP response")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("no status")?;
    let mut framing = Framing::UntilClose;
    let mut close = response.version == Some(0);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .context("bad content-length")?;
            if framing != Framing::Chunked {
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value
                .split(|&b| b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for v in h.value.split(|&b| b == b',') {
                if v.trim_ascii().eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if v.trim_ascii().eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    if method_is_head || status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        len,
        status,
        framing,
        close,
    }))
}

/// Decodes a chunked body from `buf` into `out`; the bytes it took, or `None` while
/// incomplete.
fn decode_chunked(buf: &[u8], out: &mut Vec<u8>) -> anyhow::Result<Option<usize>> {
    out.clear();
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let size_text = line.split(|&b| b == b';').next().unwrap_or(line);
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .context("bad chunk size")?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            bail!("chunk not followed by CRLF");
        }
        at += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl Conn {
    /// A connection to `addr` (opened on the first request).
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            stream: None,
            last_used: Instant::now(),
            out: Vec::with_capacity(512),
            buf: vec![0; 4096],
            filled: 0,
            chunked: Vec::new(),
        }
    }

    /// Starts a request: the request line, with the path written by `path`, and `Host`.
    /// Add headers with [`Self::header`], then send with [`Self::send`].
    pub(crate) fn start(&mut self, method: &str, path: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        path(&mut self.out);
        self.out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Adds a header to the request being built.
    pub(crate) fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Sends the request built with `body` (a `content-length` is added when the method
    /// has a body) and reads the response.
    pub(crate) async fn send(&mut self, body: &[u8]) -> anyhow::Result<Response<'_>> {
        let is_head = self.out.starts_with(b"HEAD ");
        if !body.is_empty() || self.out.starts_with(b"POST ") || self.out.starts_with(b"PUT ") {
            self.out.extend_from_slice(b"content-length: ");
            push_u64(&mut self.out, body.len() as u64);
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let head = match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(is_head)).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                self.stream = None;
                return Err(e);
            }
            Err(_) => {
                self.stream = None;
                bail!("request to {} timed out", self.host);
            }
        };
        self.last_used = Instant::now();
        if head.close {
            self.stream = None;
        }
        let body = match head.framing {
            Framing::Chunked => &self.chunked[..],
            Framing::Length(n) => &self.buf[head.len..head.len + n],
            Framing::UntilClose => &self.buf[head.len..self.filled],
        };
        Ok(Response {
            status: head.status,
            head: &self.buf[..head.len],
            body,
        })
    }

    /// Writes the request and reads the whole response into `buf`.
    async fn exchange(&mut self, is_head: bool) -> anyhow::Result<Head> {
        if self.stream.is_some() && self.last_used.elapsed() > STALE_AFTER {
            self.drop_if_closed();
        }
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(self.addr)
                    .await
                    .with_context(|| format!("connecting to {}", self.host))?;
                s.set_nodelay(true)?;
                self.stream.insert(s)
            }
        };
        stream.write_all(&self.out).await?;
        self.filled = 0;
        let mut head = None;
        loop {
            if head.is_none() {
                head = parse_head(&self.buf[..self.filled], is_head)?;
            }
            let mut eof = false;
            if let Some(h) = head {
                match h.framing {
                    Framing::Length(n) if self.filled >= h.len + n => {
                        if self.filled > h.len + n {
                            bail!("unexpected bytes after the response");
                        }
                        return Ok(h);
                    }
                    Framing::Chunked => {
                        if let Some(used) =
                            decode_chunked(&self.buf[h.len..self.filled], &mut self.chunked)?
                        {
                            if h.len + used != self.filled {
                                bail!("unexpected bytes after the response");
                            }
                            return Ok(h);
                        }
                    }
                    _ => {}
                }
            }
            if self.filled == self.buf.len() {
                if self.buf.len() >= MAX_RESPONSE {
                    bail!("response larger than {MAX_RESPONSE} bytes");
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                eof = true;
            }
            self.filled += n;
            if eof {
                return match head {
                    Some(h) if h.framing == Framing::UntilClose => Ok(Head { close: true, ..h }),
                    _ => bail!("connection closed before the end of the response"),
                };
            }
        }
    }

    /// Drops the connection if the peer closed it (or sent something unasked) while it
    /// was idle.
    fn drop_if_closed(&mut self) {
        if let Some(stream) = &self.stream {
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => self.stream = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            let mut out = b"x".to_vec();
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Head {
                len: 38,
                status: 200,
                framing: Framing::Length(5),
                close: false
            }
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false).unwrap(),
            None
        );
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.close);
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(h.close);
        let h = parse_head(
            b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        assert!(!h.close);
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        assert!(parse_head(b"garbage\r\n\r\n", false).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
    }

    #[test]
    fn chunked_bodies() {
        let mut out = Vec::new();
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(decode_chunked(body, &mut out).unwrap(), Some(body.len()));
        assert_eq!(out, b"hello, world");
        let with_trailer = b"1\r\na\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(
            decode_chunked(with_trailer, &mut out).unwrap(),
            Some(with_trailer.len())
        );
        assert_eq!(out, b"a");
        for cut in 0..body.len() {
            assert_eq!(
                decode_chunked(&body[..cut], &mut out).unwrap(),
                None,
                "{cut}"
            );
        }
        assert!(decode_chunked(b"zz\r\n", &mut out).is_err());
        assert!(decode_chunked(b"1\r\nab\r\n", &mut out).is_err());
    }

    #[test]
    fn response_headers() {
        let head = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nx: y\r\nset-cookie: b=2\r\n\r\n";
        let r = Response {
            status: 200,
            head,
            body: b"",
        };
        assert!(r.is_success());
        assert_eq!(r.headers("set-cookie"), vec![&b"a=1"[..], &b"b=2"[..]]);
        assert!(r.headers("cookie").is_empty());
    }
}
