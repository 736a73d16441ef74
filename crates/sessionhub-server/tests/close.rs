//! A clean close every time: a client that breaks the rules (an oversized frame, a text
//! frame that is not UTF-8) reads the close code that says so, never a connection reset,
//! however much it was still sending; and the node's memory stays bounded meanwhile.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Trials of each size.
const TRIALS: usize = 100;
/// Trials under way at once.
const AT_ONCE: usize = 20;
/// A small TCP send buffer, in bytes (Linux doubles it).
const SMALL_SEND_BUFFER: u32 = 8 * 1024;

/// Opens a socket, sends `frame`, and reads until the close frame: its code, or what went
/// wrong. The send must succeed too: a client whose write fails with a reset (browsers among
/// them) reports 1006 and never looks for the close frame that may be waiting.
///
/// `small_buffer`: the client's send buffer is small, as if it were on a slow link. On
/// loopback a frame of a few MB otherwise sits whole in kernel buffers before the server
/// even looks at it, and a server that drops the connection unread goes unnoticed.
async fn close_code_after(
    addr: SocketAddr,
    url: &str,
    frame: Message,
    small_buffer: bool,
) -> Result<u16, String> {
    let tcp = TcpSocket::new_v4().unwrap();
    if small_buffer {
        tcp.set_send_buffer_size(SMALL_SEND_BUFFER).unwrap();
    }
    let tcp = tcp
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let config = WebSocketConfig::default().max_write_buffer_size(usize::MAX);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let sent = ws.send(frame).await;
    let read = tokio::time::timeout(WAIT, async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(Some(close))) => return Ok(u16::from(close.code)),
                Ok(Message::Close(None)) => return Err("a close without a code".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Err("the stream ended without a close".to_owned())
    })
    .await;
    match read {
        Ok(Ok(code)) if sent.is_ok() => Ok(code),
        Ok(Ok(code)) => Err(format!("read {code} but the send failed: {sent:?}")),
        Ok(Err(e)) => Err(format!("{e} (send: {sent:?})")),
        Err(_) => Err(format!("no close in time (send: {sent:?})")),
    }
}

/// Resident and peak resident memory of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `TRIALS` sockets, `AT_ONCE` at a time, each sending one text frame of `size` bytes to a
/// node whose limit is 64 KiB: every one reads 1009, and the node's peak memory grows by
/// less than a few frames' worth.
async fn every_oversized_frame_closes_with_1009(size: usize, small_buffer: bool) {
    // Many sockets from one address in a moment: the per-address connect rate is not what
    // this tests.
    let node = node(&["--max-connections-per-ip", "100000"]);
    let pid = node.pid().unwrap();
    let (rss_before, _) = memory_kib(pid);
    let text: String = "x".repeat(size);
    let addr = node.addr();
    let url = format!("{}/websocket/big", node.ws());
    let started = Instant::now();
    let outcomes: Vec<Result<u16, String>> =
        futures_util::stream::iter(0..TRIALS)
            .map(|_| {
                let (url, text) = (url.clone(), text.clone());
                async move {
                    close_code_after(addr, &url, Message::Text(text.into()), small_buffer).await
                }
            })
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
    let elapsed = started.elapsed();
    let (rss_after, peak) = memory_kib(pid);
    let wrong: Vec<_> = outcomes.iter().filter(|o| *o != &Ok(1009)).collect();
    eprintln!(
        "{size} bytes x {TRIALS}: {} wrong in {elapsed:?}; RSS {rss_before} -> {rss_after} KiB, peak {peak} KiB",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {TRIALS} did not read 1009, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    // Buffering the frames would take AT_ONCE * size; reading past them takes a 16 KiB
    // buffer per socket. 64 MiB is generous for the first and far below the second at 2 MB
    // and 20 MB.
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "peak RSS grew from {rss_before} to {peak} KiB"
    );
    // The node still serves.
    let (mut ws, _) = connect(&node.ws(), "after").await;
    send_text(&mut ws, r#"{"KEY":"after","VALUE":"still here"}"#).await;
    assert_eq!(next_text(&mut ws).await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kib_frame_closes_with_1009_every_time() {
    every_oversized_frame_closes_with_1009(200 * 1024, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mb_frame_closes_with_1009_every_time() {
    every_oversized_frame_closes_with_1009(2_000_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_frame_closes_with_1009_every_time() {
    // Too much to sit in kernel buffers anyway; a small one would make it slower than the
    // lingering time on a loaded machine.
    every_oversized_frame_closes_with_1009(20_000_000, false).await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let node = node(&[]);
    let url = format!("{}/websocket/bytes", node.ws());
    let frame = Frame::message(vec![b'a', 0xff, 0xfe, b'b'], OpCode::Data(Data::Text), true);
    assert_eq!(
        close_code_after(node.addr(), &url, Message::Frame(frame), false).await,
        Ok(1007)
    );
    // And over protocol v1.
    let url = format!("{}/ws?user=bytes", node.ws());
    let frame = Frame::message(vec![0xc3, 0x28], OpCode::Data(Data::Text), true);
    assert_eq!(
        close_code_after(node.addr(), &url, Message::Frame(frame), false).await,
        Ok(1007)
    );
}

#[tokio::test]
async fn a_frame_with_an_unknown_opcode_closes_with_1002() {
    let node = node(&[]);
    let url = format!("{}/ws?user=odd", node.ws());
    let frame = Frame::message(vec![1, 2, 3], OpCode::Data(Data::Reserved(3)), true);
    assert_eq!(
        close_code_after(node.addr(), &url, Message::Frame(frame), false).await,
        Ok(1002)
    );
}

#[tokio::test]
async fn a_client_that_replies_to_the_close_is_let_go_at_once() {
    // A well-behaved client reads the close, replies and waits for the server to end the
    // connection: the server must not make it wait out the whole lingering time.
    let node = node(&[]);
    let (mut ws, _) = connect(&node.ws(), "quick").await;
    ws.send(Message::Text("x".repeat(100 * 1024).into()))
        .await
        .unwrap();
    let started = Instant::now();
    assert_closes(&mut ws, WAIT, 1009).await;
    // tungstenite replied to the close; the stream ends when the server closes TCP.
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the server ends it");
    assert!(
        matches!(end, None | Some(Err(_))),
        "nothing after the close: {end:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the server kept the connection {:?} after the client's reply",
        started.elapsed()
    );
}

/// The handshake is the gateway's own now: it answers as RFC 6455 section 1.3 says, to the
/// `Connection` header Firefox sends (`keep-alive, Upgrade`) too.
#[tokio::test]
async fn the_handshake_answers_the_rfc_sample_key() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = node(&[]);
    let mut tcp = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let request = format!(
        "GET /websocket/rfc HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        node.addr()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_lowercase();
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
    assert!(
        answer.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{answer}"
    );
}
