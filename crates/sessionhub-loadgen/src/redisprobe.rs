//! Watching what a server asks Redis: `INFO` counters, and `MONITOR` with markers to count
//! the commands one request causes.
//!
//! Speaks inline RESP over a plain TCP connection, which is all `INFO`, `ECHO` and
//! `MONITOR` need.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Prefix of the `ECHO` markers that delimit probe phases in the MONITOR stream.
const MARK: &str = "loadgen-mark-";

/// The address in a `redis://host:port[/db]` URL.
pub(crate) fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("redis://")
        .context("expected a redis:// URL")?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    host_port
        .parse()
        .with_context(|| format!("expected redis://<ip>:<port>, got {url}"))
}

/// Sends one inline command and reads a bulk-string or status reply.
async fn command(addr: SocketAddr, line: &str) -> anyhow::Result<String> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await?);
    stream
        .get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await?;
    let mut header = String::new();
    stream.read_line(&mut header).await?;
    let header = header.trim_end();
    if let Some(len) = header.strip_prefix('$') {
        let len: usize = len.parse()?;
        let mut body = vec![0; len + 2];
        stream.read_exact(&mut body).await?;
        body.truncate(len);
        Ok(String::from_utf8_lossy(&body).into_owned())
    } else if let Some(status) = header.strip_prefix('+') {
        Ok(status.to_owned())
    } else {
        bail!("unexpected reply to {line}: {header}")
    }
}

/// Command counters from `INFO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// `total_commands_processed` (counts commands run inside scripts too).
    pub(crate) total: u64,
    /// Calls per command from `commandstats`.
    pub(crate) calls: BTreeMap<String, u64>,
}

impl Counters {
    /// Reads the counters now.
    pub(crate) async fn read(addr: SocketAddr) -> anyhow::Result<Self> {
        let stats = command(addr, "INFO stats").await?;
        let commandstats = command(addr, "INFO commandstats").await?;
        Ok(Self::parse(&stats, &commandstats))
    }

    fn parse(stats: &str, commandstats: &str) -> Self {
        let total = stats
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let calls = commandstats
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect();
        Self { total, calls }
    }

    /// What happened between `before` and `self`, without the `INFO` calls themselves.
    pub(crate) fn since(&self, before: &Self) -> Self {
        let mut calls: BTreeMap<String, u64> = self
            .calls
            .iter()
            .map(|(k, v)| (k.clone(), v - before.calls.get(k).copied().unwrap_or(0)))
            .filter(|(k, v)| *v > 0 && k != "info")
            .collect();
        calls.remove("info");
        let info = self.calls.get("info").copied().unwrap_or(0)
            - before.calls.get("info").copied().unwrap_or(0);
        Self {
            total: (self.total - before.total).saturating_sub(info),
            calls,
        }
    }
}

/// Commands seen in one probe phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PhaseCommands {
    /// Commands sent by clients (each one a round trip unless pipelined), by name.
    pub(crate) top_level: BTreeMap<String, u64>,
    /// Commands run inside Lua scripts, by name.
    pub(crate) scripted: BTreeMap<String, u64>,
}

/// A running `MONITOR`, counting commands per marked phase.
pub(crate) struct Monitor {
    addr: SocketAddr,
    phases: Arc<Mutex<BTreeMap<String, PhaseCommands>>>,
    marked: Arc<(Mutex<String>, Notify)>,
    reader: JoinHandle<()>,
}

/// One MONITOR line: the client (`lua` inside scripts), command name, first argument.
pub(crate) fn parse_monitor_line(line: &str) -> Option<(&str, String, Option<String>)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let client = line[open + 1..close].split(' ').nth(1)?;
    let mut args = line[close + 1..].split('"').skip(1).step_by(2);
    let name = args.next()?.to_ascii_lowercase();
    Some((client, name, args.next().map(str::to_owned)))
}

impl Monitor {
    /// Starts monitoring; commands before the first [`Monitor::mark`] go to phase "".
    pub(crate) async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut stream = BufReader::new(TcpStream::connect(addr).await?);
        stream.get_mut().write_all(b"MONITOR\r\n").await?;
        let mut ok = String::new();
        stream.read_line(&mut ok).await?;
        if !ok.starts_with("+OK") {
            bail!("MONITOR refused: {ok}");
        }
        let phases: Arc<Mutex<BTreeMap<String, PhaseCommands>>> = Arc::default();
        let marked: Arc<(Mutex<String>, Notify)> = Arc::default();
        let (p, m) = (phases.clone(), marked.clone());
        let reader = tokio::spawn(async move {
            let mut phase = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                match stream.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let Some((client, name, first)) = parse_monitor_line(&line) else {
                    continue;
                };
                if name == "echo"
                    && let Some(mark) = first.as_deref().and_then(|a| a.strip_prefix(MARK))
                {
                    phase = mark.to_owned();
                    *m.0.lock().unwrap() = phase.clone();
                    m.1.notify_waiters();
                    continue;
                }
                let mut phases = p.lock().unwrap();
                let counts = phases.entry(phase.clone()).or_default();
                let map = if client == "lua" {
                    &mut counts.scripted
                } else {
                    &mut counts.top_level
                };
                *map.entry(name).or_default() += 1;
            }
        });
        Ok(Self {
            addr,
            phases,
            marked,
            reader,
        })
    }

    /// Starts phase `name`: commands seen from now on count for it. Returns once the
    /// monitor has seen the marker, so nothing earlier leaks into the phase.
    pub(crate) async fn mark(&self, name: &str) -> anyhow::Result<()> {
        let notified = self.marked.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        command(self.addr, &format!("ECHO {MARK}{name}")).await?;
        let wait = async {
            loop {
                if *self.marked.0.lock().unwrap() == name {
                    return;
                }
                notified.as_mut().await;
                notified.set(self.marked.1.notified());
                notified.as_mut().enable();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .context("MONITOR did not show the marker")
    }

    /// Stops monitoring and returns the commands per phase.
    pub(crate) async fn finish(self) -> anyhow::Result<BTreeMap<String, PhaseCommands>> {
        self.mark("end").await?;
        self.reader.abort();
        Ok(std::mem::take(&mut *self.phases.lock().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            addr_of("redis://127.0.0.1:6390").unwrap().to_string(),
            "127.0.0.1:6390"
        );
        assert_eq!(
            addr_of("redis://127.0.0.1:6390/2").unwrap().to_string(),
            "127.0.0.1:6390"
        );
        assert_eq!(
            addr_of("redis://:pw@127.0.0.1:6390").unwrap().to_string(),
            "127.0.0.1:6390"
        );
        assert!(addr_of("http://x").is_err());
    }

    #[test]
    fn parses_info() {
        let stats = "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:120\r\n";
        let commandstats = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5,\
                            rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=4,usec=1\r\n\
                            cmdstat_hget:calls=20,usec=1\r\n";
        let before = Counters::parse(stats, commandstats);
        assert_eq!(before.total, 120);
        assert_eq!(before.calls["evalsha"], 10);
        let after = Counters::parse(
            "total_commands_processed:157\r\n",
            "cmdstat_evalsha:calls=25,usec=1\r\ncmdstat_info:calls=6,usec=1\r\n\
             cmdstat_hget:calls=20,usec=1\r\ncmdstat_get:calls=5,usec=1\r\n",
        );
        let delta = after.since(&before);
        assert_eq!(delta.total, 35);
        assert_eq!(
            delta.calls,
            BTreeMap::from([("evalsha".into(), 15), ("get".into(), 5)])
        );
    }

    #[test]
    fn parses_monitor_lines() {
        let (client, name, first) =
            parse_monitor_line(r#"1700000000.123456 [0 127.0.0.1:51234] "EVALSHA" "abc" "1""#)
                .unwrap();
        assert_eq!(
            (client, name.as_str(), first.as_deref()),
            ("127.0.0.1:51234", "evalsha", Some("abc"))
        );
        let (client, name, _) =
            parse_monitor_line(r#"1700000000.2 [0 lua] "hincrby" "k" "count" "1""#).unwrap();
        assert_eq!((client, name.as_str()), ("lua", "hincrby"));
        let (_, name, first) =
            parse_monitor_line(r#"1.0 [0 127.0.0.1:1] "echo" "loadgen-mark-write""#).unwrap();
        assert_eq!(
            (name.as_str(), first.as_deref()),
            ("echo", Some("loadgen-mark-write"))
        );
        assert!(parse_monitor_line("+OK").is_none());
    }
}
