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
use std::ops::Range;
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
pub(crate) fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
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
    /// The headers of the response in `buf`.
    headers: Vec<HeaderPos>,
    /// A decoded chunked body.
    chunked: Vec<u8>,
}

/// Where a header's name and value are in the response buffer.
type HeaderPos = (Range<usize>, Range<usize>);

/// A response, borrowed from the connection's buffers until the next request.
#[derive(Debug)]
pub(crate) struct Response<'a> {
    /// Status code.
    pub(crate) status: u16,
    head: &'a [u8],
    headers: &'a [HeaderPos],
    /// The body, decoded.
    pub(crate) body: &'a [u8],
}

impl<'a> Response<'a> {
    /// `true` for 2xx.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The values of every header called `name` (case-insensitive).
    pub(crate) fn headers<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'a [u8]> + 'b {
        let head = self.head;
        self.headers
            .iter()
            .filter(move |(n, _)| head[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |(_, v)| &head[v.clone()])
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

/// Parses a response head at the start of `buf`; `None` while incomplete. Where each
/// header is goes into `positions`.
fn parse_head(
    buf: &[u8],
    method_is_head: bool,
    positions: &mut Vec<HeaderPos>,
) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).context("malformed HTTP response")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("no status")?;
    let mut framing = Framing::UntilClose;
    let mut close = response.version == Some(0);
    let base = buf.as_ptr() as usize;
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    positions.clear();
    for h in response.headers.iter() {
        positions.push((at(h.name.as_bytes()), at(h.value)));
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
            headers: Vec::with_capacity(MAX_HEADERS),
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
            headers: &self.headers,
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
                head = parse_head(&self.buf[..self.filled], is_head, &mut self.headers)?;
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
pub(crate) mod tests {
    use super::*;

    /// Reads a request head (through the blank line) byte by byte, as a test server.
    pub(crate) async fn read_head(s: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        String::from_utf8(head).unwrap()
    }

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
        let mut positions = Vec::new();
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            false,
            &mut positions,
        )
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
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false, &mut positions).unwrap(),
            None
        );
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
            &mut positions,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.close);
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n", false, &mut positions)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(h.close);
        let h = parse_head(
            b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n",
            false,
            &mut positions,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        assert!(!h.close);
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            true,
            &mut positions,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        assert!(parse_head(b"garbage\r\n\r\n", false, &mut positions).is_err());
        assert!(
            parse_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                false,
                &mut positions
            )
            .is_err()
        );
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
        let mut positions = Vec::new();
        parse_head(head, false, &mut positions).unwrap().unwrap();
        assert_eq!(positions.len(), 3);
        let r = Response {
            status: 200,
            head,
            headers: &positions,
            body: b"",
        };
        assert!(r.is_success());
        assert_eq!(
            r.headers("set-cookie").collect::<Vec<_>>(),
            vec![&b"a=1"[..], &b"b=2"[..]]
        );
        assert_eq!(r.headers("x").collect::<Vec<_>>(), vec![&b"y"[..]]);
        assert_eq!(r.headers("cookie").count(), 0);
    }

    /// A keep-alive server on a local socket: a sized answer, a chunked one, then it closes
    /// the idle connection and the client opens a new one.
    #[tokio::test]
    async fn talks_to_a_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            async fn request(s: &mut TcpStream) -> String {
                let req = read_head(s).await;
                if let Some(len) = req.split("content-length: ").nth(1) {
                    let len: usize = len.split("\r\n").next().unwrap().parse().unwrap();
                    let mut body = vec![0u8; len];
                    s.read_exact(&mut body).await.unwrap();
                    return req + &String::from_utf8(body).unwrap();
                }
                req
            }
            let (mut s, _) = listener.accept().await.unwrap();
            let req = request(&mut s).await;
            assert!(
                req.starts_with("POST /socket/u42 HTTP/1.1\r\nhost: 127.0.0.1:"),
                "{req}"
            );
            assert!(
                req.contains("\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"),
                "{req}"
            );
            s.write_all(
                b"HTTP/1.1 200 OK\r\nset-cookie: id=7; Path=/\r\ncontent-length: 2\r\n\r\nok",
            )
            .await
            .unwrap();
            let req = request(&mut s).await;
            assert!(req.starts_with("GET /x HTTP/1.1\r\n"), "{req}");
            assert!(!req.contains("content-length"), "{req}");
            // The chunked answer arrives in two pieces.
            s.write_all(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nno")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(b"!\r\n0\r\n\r\n").await.unwrap();
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            request(&mut s).await;
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
        });
        let mut conn = Conn::new(addr);
        conn.start("POST", |p| {
            p.extend_from_slice(b"/socket/u");
            push_u64(p, 42);
        })
        .header("x-a", b"1");
        let r = conn.send(b"hello").await.unwrap();
        assert_eq!((r.status, r.body), (200, &b"ok"[..]));
        assert_eq!(
            r.headers("Set-Cookie").collect::<Vec<_>>(),
            vec![&b"id=7; Path=/"[..]]
        );
        conn.start("GET", |p| p.extend_from_slice(b"/x"));
        let r = conn.send(b"").await.unwrap();
        assert!(!r.is_success());
        assert_eq!((r.status, r.body), (404, &b"no!"[..]));
        // The server closed the connection while it idled: a new one is opened.
        tokio::time::sleep(STALE_AFTER + Duration::from_millis(50)).await;
        conn.start("GET", |p| p.extend_from_slice(b"/y"));
        let r = conn.send(b"").await.unwrap();
        assert_eq!((r.status, r.body), (204, &b""[..]));
        server.await.unwrap();
    }
}
