//! What the multi-process fixtures ([`crate::RedisSentinel`], [`crate::RedisCluster`])
//! share: whole RESP2 replies read from a server, one `INFO` field, and a log's last lines.
//!
//! Why not [`crate::redis_command`]: it returns one line, and Sentinel and Cluster answer
//! in nested arrays (`SENTINEL master`, `CLUSTER SLOTS`) or long bulk strings (`CLUSTER
//! NODES`, `INFO`). [`query`] sends an inline command, enough for fixed commands;
//! [`query_args`] sends the arguments as a RESP array, for keys and empty arguments
//! (`MIGRATE ... "" ...`) that an inline command cannot carry.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

/// A RESP2 reply, as far as the fixtures need it.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A simple string or an integer, as its text.
    Line(String),
    Error(String),
    Bulk(String),
    Array(Vec<Reply>),
    Nil,
}

impl Reply {
    /// The value after `key` in a flat key-value array (`SENTINEL master`).
    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        let Self::Array(items) = self else {
            return None;
        };
        items.chunks(2).find_map(|pair| match pair {
            [Self::Bulk(k), Self::Bulk(v)] if k == key => Some(v.as_str()),
            _ => None,
        })
    }
}

/// Sends one inline command to `port` (loopback) on a connection of its own and reads the
/// whole reply, nested arrays included; a Redis error reply is an `Err`.
pub(crate) fn query(port: u16, command: &str) -> anyhow::Result<Reply> {
    request(port, command, format!("{command}\r\n").as_bytes())
}

/// [`query`] with the command sent as a RESP array of `args`, so that an argument may hold
/// spaces or be empty.
pub(crate) fn query_args(port: u16, args: &[&str]) -> anyhow::Result<Reply> {
    let mut request_bytes = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request_bytes.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request_bytes.extend_from_slice(arg.as_bytes());
        request_bytes.extend_from_slice(b"\r\n");
    }
    request(port, &args.join(" "), &request_bytes)
}

/// Writes `bytes` to a new connection to `port` and reads one reply; `command` names it in
/// errors.
fn request(port: u16, command: &str, bytes: &[u8]) -> anyhow::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(bytes)?;
    match read_reply(&mut BufReader::new(stream))? {
        Reply::Error(e) => bail!("{command} on port {port}: {e}"),
        reply => Ok(reply),
    }
}

fn read_reply(reader: &mut impl BufRead) -> anyhow::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("connection closed before the reply");
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).context("empty reply line")?;
    Ok(match kind {
        "+" | ":" => Reply::Line(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        "$" => match rest.parse::<i64>()? {
            n if n < 0 => Reply::Nil,
            n => {
                let mut body = vec![0; usize::try_from(n)? + 2];
                reader.read_exact(&mut body)?;
                body.truncate(body.len() - 2);
                Reply::Bulk(String::from_utf8_lossy(&body).into_owned())
            }
        },
        "*" => match rest.parse::<i64>()? {
            n if n < 0 => Reply::Nil,
            n => Reply::Array(
                (0..n)
                    .map(|_| read_reply(reader))
                    .collect::<Result<_, _>>()?,
            ),
        },
        _ => bail!("not a RESP2 reply: {line:?}"),
    })
}

/// One field of `INFO <section>` on the server on `port`, if it is there.
pub(crate) fn info_field(port: u16, section: &str, key: &str) -> anyhow::Result<Option<String>> {
    let Reply::Bulk(info) = query(port, &format!("INFO {section}"))? else {
        bail!("INFO on port {port} is not a bulk string");
    };
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned()))
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<_> = text.lines().collect();
    let mut out = String::new();
    for line in &all[all.len().saturating_sub(lines)..] {
        let _ = writeln!(out, "{line}");
    }
    out
}
