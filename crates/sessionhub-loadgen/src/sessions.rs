//! The sessions scenario: virtual users log in once, then call `/get-session` (read the
//! session, increment `count`) in a loop, or another route (`--path`, e.g. a read-only
//! one). Closed loop by default (as fast as the target answers); with `--rate`, open loop
//! at a fixed offered load (for CPU per request well below saturation). Measures requests
//! per second, latency, CPU per 100 000 requests, Redis commands per request (from `INFO`)
//! and, in a short sequential probe under `MONITOR`, exactly which commands one request
//! sends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::http;

use crate::pacing::Schedule;
use crate::procfs::{CpuMeters, CpuSeconds, CpuUse};
use crate::redisprobe::{self, Counters, Monitor, PhaseCommands};
use crate::stats::{Latency, LatencySummary};

/// Flags of `sessions`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SessionsArgs {
    /// Name of this target in the results.
    #[arg(long)]
    pub(crate) label: String,
    /// The node's address.
    #[arg(long)]
    pub(crate) node: SocketAddr,
    /// The Redis the node uses (redis://ip:port), for command counts.
    #[arg(long)]
    pub(crate) redis: String,
    /// Concurrent virtual users, each with its own session.
    #[arg(long, default_value_t = 64)]
    pub(crate) vus: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// The route loaded: `/get-session` (read + write) or a read-only one.
    #[arg(long, default_value = "/get-session")]
    pub(crate) path: String,
    /// Requests per second offered, over all virtual users together (open loop: a request
    /// is due at its time whatever happened to the ones before it; latency counts from
    /// then). Without it each virtual user sends its next request when the last one ends.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Process id of the target's server, to report its CPU use.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Process id of redis-server, to report its CPU use.
    #[arg(long)]
    pub(crate) redis_pid: Option<u32>,
    /// Sequential requests per phase of the MONITOR probe (0: no probe).
    #[arg(long, default_value_t = 100)]
    pub(crate) probe_requests: u32,
    /// A read-only session route to probe as well, if the target has one.
    #[arg(long)]
    pub(crate) read_path: Option<String>,
    /// Write the result as JSON here (also printed).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

/// Commands one request caused, on average, from the MONITOR probe.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Probe {
    /// Requests in the probe.
    pub(crate) requests: u32,
    /// Commands sent by the server per request: its Redis round trips, unless it pipelines.
    pub(crate) round_trips_per_request: f64,
    /// Per command name, sent by the server, per request.
    pub(crate) top_level: BTreeMap<String, f64>,
    /// Per command name, run inside scripts, per request.
    pub(crate) scripted: BTreeMap<String, f64>,
}

impl Probe {
    fn from_phase(commands: Option<&PhaseCommands>, requests: u32) -> Self {
        let per = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| (k.clone(), *v as f64 / f64::from(requests.max(1))))
                .collect::<BTreeMap<_, _>>()
        };
        let empty = PhaseCommands::default();
        let commands = commands.unwrap_or(&empty);
        let top_level = per(&commands.top_level);
        Self {
            requests,
            round_trips_per_request: top_level.values().sum(),
            top_level,
            scripted: per(&commands.scripted),
        }
    }
}

/// The result of `sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionsReport {
    /// Always "sessions".
    pub(crate) scenario: String,
    /// The target's name.
    pub(crate) label: String,
    /// Virtual users.
    pub(crate) vus: usize,
    /// Seconds of load.
    pub(crate) duration: f64,
    /// The route loaded (absent from results written before it was recorded).
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// Requests per second offered, if paced (open loop).
    #[serde(default)]
    pub(crate) rate: Option<f64>,
    /// Successful requests.
    pub(crate) requests: u64,
    /// Failed ones.
    pub(crate) errors: u64,
    /// Requests per second.
    pub(crate) requests_per_sec: f64,
    /// Latency.
    pub(crate) latency: LatencySummary,
    /// CPU use during the load, percent of one core.
    pub(crate) cpu: CpuUse,
    /// The same as amounts, seconds over the load (absent from older results).
    #[serde(default)]
    pub(crate) cpu_seconds: CpuSeconds,
    /// [`SessionsReport::cpu_seconds`] per 100 000 successful requests; `None` without any.
    #[serde(default)]
    pub(crate) cpu_per_100k: Option<CpuSeconds>,
    /// Sessions whose final `count` differs from the increments that succeeded.
    pub(crate) count_mismatches: u64,
    /// Redis `total_commands_processed` per request (counts commands inside scripts).
    pub(crate) redis_commands_per_request: f64,
    /// `commandstats` calls per request, by command.
    pub(crate) redis_calls_per_request: BTreeMap<String, f64>,
    /// Sequential probe of `/login`.
    pub(crate) probe_login: Option<Probe>,
    /// Sequential probe of `/get-session` (read + write).
    pub(crate) probe_write: Option<Probe>,
    /// Sequential probe of the read-only route.
    pub(crate) probe_read: Option<Probe>,
    /// Requests per second of every round, when `report` merged several runs of this
    /// target into this one (the median round); empty for a single run.
    #[serde(default)]
    pub(crate) rounds: Vec<f64>,
}

/// A client with one session over one keep-alive connection: keeps the cookies the
/// server sets.
struct Vu {
    conn: http::Conn,
    cookies: BTreeMap<String, String>,
    /// The `Cookie` header for `cookies`.
    cookie_header: String,
}

/// The part of a `/get-session` answer the scenario reads.
#[derive(Deserialize)]
struct Answer {
    count: Option<u64>,
}

impl Vu {
    fn new(node: SocketAddr) -> Self {
        Self {
            conn: http::Conn::new(node),
            cookies: BTreeMap::new(),
            cookie_header: String::new(),
        }
    }

    /// Starts a new session on the same connection: forgets the cookies.
    fn forget(&mut self) {
        self.cookies.clear();
        self.cookie_header.clear();
    }

    /// GETs `path` with the session cookie; the `count` of the JSON answer, if any.
    async fn get(&mut self, path: &str) -> anyhow::Result<Option<u64>> {
        self.conn
            .start("GET", |p| p.extend_from_slice(path.as_bytes()));
        if !self.cookie_header.is_empty() {
            self.conn.header("cookie", self.cookie_header.as_bytes());
        }
        let response = self.conn.send(b"").await?;
        let mut changed = false;
        for value in response.headers("set-cookie") {
            let Some((name, value)) = std::str::from_utf8(value).ok().and_then(parse_set_cookie)
            else {
                continue;
            };
            if value.is_empty() {
                changed |= self.cookies.remove(name).is_some();
            } else if self.cookies.get(name).map(String::as_str) != Some(value) {
                self.cookies.insert(name.to_owned(), value.to_owned());
                changed = true;
            }
        }
        if changed {
            self.cookie_header = cookie_header(&self.cookies);
        }
        if !response.is_success() {
            bail!(
                "{path}: {}: {}",
                response.status,
                String::from_utf8_lossy(response.body)
            );
        }
        Ok(serde_json::from_slice::<Answer>(response.body)
            .ok()
            .and_then(|a| a.count))
    }
}

/// `name=value` of a Set-Cookie header.
pub(crate) fn parse_set_cookie(header: &str) -> Option<(&str, &str)> {
    let pair = header.split(';').next()?.trim();
    let (name, value) = pair.split_once('=')?;
    Some((name.trim(), value.trim().trim_matches('"')))
}

/// The Cookie header for a set of cookies.
pub(crate) fn cookie_header(cookies: &BTreeMap<String, String>) -> String {
    cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `sessions`.
pub(crate) async fn run(args: SessionsArgs) -> anyhow::Result<SessionsReport> {
    let redis = redisprobe::addr_of(&args.redis)?;
    eprintln!("[{}] logging in {} virtual users", args.label, args.vus);
    let mut vus = Vec::with_capacity(args.vus);
    for i in 0..args.vus {
        let mut vu = Vu::new(args.node);
        vu.get(&format!("/login?username=vu{i}"))
            .await
            .with_context(|| format!("login of vu{i}"))?;
        vus.push(vu);
    }

    let before = Counters::read(redis).await?;
    let meters = CpuMeters::start(
        &args.pid.into_iter().collect::<Vec<_>>(),
        &args.redis_pid.into_iter().collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let window = Duration::from_secs_f64(args.duration);
    let deadline = started + window;
    let schedule = args
        .rate
        .map(|rate| std::sync::Arc::new(Schedule::new(started, rate, window)));
    let writes = args.path == "/get-session";
    let workers: Vec<_> = vus
        .into_iter()
        .map(|mut vu| {
            let path = args.path.clone();
            let schedule = schedule.clone();
            tokio::spawn(async move {
                let mut latency = Latency::default();
                let (mut ok, mut errors, mut last_count) = (0u64, 0u64, None);
                loop {
                    // Latency counts from when the request was due: a target that falls
                    // behind a fixed load shows it (no coordinated omission).
                    let t = match &schedule {
                        Some(schedule) => {
                            let Some((_, due)) = schedule.claim() else {
                                break;
                            };
                            tokio::time::sleep_until(due).await;
                            due
                        }
                        None if Instant::now() < deadline => Instant::now(),
                        None => break,
                    };
                    match vu.get(&path).await {
                        Ok(count) => {
                            latency.record(t.elapsed().as_micros() as u64);
                            ok += 1;
                            last_count = count;
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latency, ok, errors, last_count)
            })
        })
        .collect();
    let mut latency = Latency::default();
    let (mut requests, mut errors, mut mismatches) = (0u64, 0u64, 0u64);
    for w in workers {
        let (l, ok, e, last) = w.await?;
        latency.merge(&l);
        requests += ok;
        errors += e;
        // Without errors, the last answer's count is the number of increments.
        if writes && e == 0 && ok > 0 && last != Some(ok) {
            mismatches += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, cpu_seconds) = meters.read_both();
    let after = Counters::read(redis).await?;
    let delta = after.since(&before);
    let per_request = |n: u64| n as f64 / requests.max(1) as f64;
    eprintln!(
        "[{}] {} {requests} requests ({errors} errors) in {elapsed:.1} s: {:.0}/s, {:.2} Redis \
         commands per request; cpu server {:.0}% redis {:.0}% loadgen {:.0}% other {:.0}%",
        args.label,
        args.path,
        requests as f64 / elapsed,
        per_request(delta.total),
        cpu.server,
        cpu.redis,
        cpu.loadgen,
        cpu.other
    );

    let (probe_login, probe_write, probe_read) = if args.probe_requests > 0 {
        let (l, w, r) = probe(&args, redis).await?;
        (Some(l), Some(w), r)
    } else {
        (None, None, None)
    };

    Ok(SessionsReport {
        scenario: "sessions".into(),
        label: args.label.clone(),
        vus: args.vus,
        duration: elapsed,
        path: Some(args.path.clone()),
        rate: args.rate,
        requests,
        errors,
        requests_per_sec: requests as f64 / elapsed,
        latency: latency.summary(),
        cpu,
        cpu_per_100k: cpu_seconds.per(requests, 100_000.0),
        cpu_seconds,
        count_mismatches: mismatches,
        redis_commands_per_request: per_request(delta.total),
        redis_calls_per_request: delta
            .calls
            .iter()
            .map(|(k, v)| (k.clone(), per_request(*v)))
            .collect(),
        probe_login,
        probe_write,
        probe_read,
        rounds: Vec::new(),
    })
}

/// Sequential requests under MONITOR: logins, read+write requests, read-only requests.
async fn probe(
    args: &SessionsArgs,
    redis: SocketAddr,
) -> anyhow::Result<(Probe, Probe, Option<Probe>)> {
    let n = args.probe_requests;
    let mut vu = Vu::new(args.node);
    vu.get("/login?username=probe").await?;
    vu.get("/get-session").await?;
    let read_ok = match &args.read_path {
        Some(path) => vu.get(path).await.is_ok(),
        None => false,
    };
    let monitor = Monitor::start(redis).await?;
    monitor.mark("login").await?;
    // Fresh sessions (no cookie), over one connection.
    let mut fresh = Vu::new(args.node);
    for i in 0..n {
        fresh.forget();
        fresh.get(&format!("/login?username=probe{i}")).await?;
    }
    monitor.mark("write").await?;
    for _ in 0..n {
        vu.get("/get-session").await?;
    }
    if read_ok && let Some(path) = &args.read_path {
        monitor.mark("read").await?;
        for _ in 0..n {
            vu.get(path).await?;
        }
    }
    let phases = monitor.finish().await?;
    let login = Probe::from_phase(phases.get("login"), n);
    let write = Probe::from_phase(phases.get("write"), n);
    let read = read_ok.then(|| Probe::from_phase(phases.get("read"), n));
    eprintln!(
        "[{}] probe: login {:.2}, read+write {:.2}{} Redis commands per request",
        args.label,
        login.round_trips_per_request,
        write.round_trips_per_request,
        read.as_ref()
            .map(|r| format!(", read-only {:.2}", r.round_trips_per_request))
            .unwrap_or_default()
    );
    Ok((login, write, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        assert_eq!(
            parse_set_cookie("id=abc123; Path=/; HttpOnly; SameSite=Lax"),
            Some(("id", "abc123"))
        );
        assert_eq!(
            parse_set_cookie("connect.sid=s%3Axyz.sig; Path=/"),
            Some(("connect.sid", "s%3Axyz.sig"))
        );
        assert_eq!(parse_set_cookie("garbage"), None);
        let jar = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert_eq!(cookie_header(&jar), "a=1; b=2");
    }

    #[test]
    fn probe_averages() {
        let phase = PhaseCommands {
            top_level: BTreeMap::from([("evalsha".into(), 200), ("get".into(), 100)]),
            scripted: BTreeMap::from([("hincrby".into(), 100)]),
        };
        let p = Probe::from_phase(Some(&phase), 100);
        assert_eq!(p.round_trips_per_request, 3.0);
        assert_eq!(p.top_level["evalsha"], 2.0);
        assert_eq!(p.scripted["hincrby"], 1.0);
        assert_eq!(Probe::from_phase(None, 10).round_trips_per_request, 0.0);
    }
}
