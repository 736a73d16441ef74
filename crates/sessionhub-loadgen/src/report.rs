//! `report`: one run's results in one JSON file, Markdown tables with ratios against
//! sessionhub, the targets checked, and PNG charts. One subject, the report, whose
//! tables and target checks read the same rows (the charts are in `chart.rs`).
//!
//! Labels are the convention of `scripts/bench.sh`: the sessionhub rows are `sessionhub`
//! (3 nodes on Redis, or 1 node on Redis for connections and sessions),
//! `sessionhub-frame`, `sessionhub-nohistory` (`--history-size 0`), `sessionhub-embedded`;
//! peers are `socketioxide`, `socketio`,
//! `tower-sessions`, `express-session` (with `-frame` variants for fan-out).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::chart::{self, Series};
use crate::connections::ConnectionsReport;
use crate::fanout::{FanoutReport, PublishMode};
use crate::procfs::Machine;
use crate::sessions::SessionsReport;

/// Flags of `report`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReportArgs {
    /// Directory with the run's result files (*.json from the scenarios, ceiling-*.csv from
    /// redis-benchmark --csv).
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// The combined results file to write (e.g. bench/results/2026-05-01.json).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Write the Markdown tables here.
    #[arg(long)]
    pub(crate) markdown: Option<PathBuf>,
    /// Notes recorded with the results, as key=value.
    #[arg(long = "note")]
    pub(crate) notes: Vec<String>,
}

/// A Redis ceiling measured with redis-benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ceiling {
    /// What was measured, e.g. `publish-P1`.
    pub(crate) name: String,
    /// Commands per second.
    pub(crate) requests_per_sec: f64,
}

/// One of the targets, checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Check {
    /// The target as the issue states it.
    pub(crate) target: String,
    /// What was measured.
    pub(crate) measured: String,
    /// Met, missed, or not measurable in this run.
    pub(crate) met: Option<bool>,
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Results {
    /// Where it ran.
    pub(crate) machine: Machine,
    /// Notes from the script (date, quick, limits).
    pub(crate) notes: BTreeMap<String, String>,
    /// Fan-out runs.
    pub(crate) fanout: Vec<FanoutReport>,
    /// Idle-connection runs.
    pub(crate) connections: Vec<ConnectionsReport>,
    /// Session runs.
    pub(crate) sessions: Vec<SessionsReport>,
    /// Redis ceilings.
    pub(crate) ceiling: Vec<Ceiling>,
    /// The targets.
    pub(crate) checks: Vec<Check>,
}

/// Runs `report`.
pub(crate) fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let mut results = Results {
        machine: Machine::current(),
        notes: args
            .notes
            .iter()
            .filter_map(|n| n.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        fanout: Vec::new(),
        connections: Vec::new(),
        sessions: Vec::new(),
        ceiling: Vec::new(),
        checks: Vec::new(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let text = std::fs::read_to_string(&path)?;
        if let Some(stem) = name
            .strip_prefix("ceiling-")
            .and_then(|n| n.strip_suffix(".csv"))
        {
            if let Some(rps) = parse_benchmark_csv(&text) {
                results.ceiling.push(Ceiling {
                    name: stem.to_owned(),
                    requests_per_sec: rps,
                });
            }
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                continue;
            }
        };
        match value.get("scenario").and_then(|s| s.as_str()) {
            Some("fanout") => results.fanout.push(serde_json::from_value(value)?),
            Some("connections") => results.connections.push(serde_json::from_value(value)?),
            Some("sessions") => results.sessions.push(serde_json::from_value(value)?),
            _ => eprintln!("skipping {}: not a scenario result", path.display()),
        }
    }
    results.sessions = merge_rounds(std::mem::take(&mut results.sessions));
    order(&mut results);
    results.checks = checks(&results);
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    let charts = charts(&results, &args.out);
    let md = markdown(&results, &charts);
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    } else {
        println!("{md}");
    }
    Ok(())
}

/// The requests per second of the first result line of `redis-benchmark --csv`.
pub(crate) fn parse_benchmark_csv(text: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
}

/// Several runs of one target (rounds that alternate the targets, so that a spell of foreign
/// load on this shared machine hits them all rather than one) become one: the median round
/// by requests per second, with every round's rate in `rounds`, the errors and count
/// mismatches of all rounds (a correctness failure in any round must show), and the probes
/// of whichever round ran them. Labels keep their first-seen order.
fn merge_rounds(runs: Vec<SessionsReport>) -> Vec<SessionsReport> {
    let mut by_label: Vec<Vec<SessionsReport>> = Vec::new();
    for run in runs {
        match by_label.iter_mut().find(|g| g[0].label == run.label) {
            Some(group) => group.push(run),
            None => by_label.push(vec![run]),
        }
    }
    by_label
        .into_iter()
        .map(|mut group| {
            if group.len() == 1 {
                return group.remove(0);
            }
            let rounds: Vec<f64> = group.iter().map(|r| r.requests_per_sec).collect();
            let errors = group.iter().map(|r| r.errors).sum();
            let count_mismatches = group.iter().map(|r| r.count_mismatches).sum();
            let probes = group.iter().find(|r| r.probe_write.is_some()).map(|r| {
                (
                    r.probe_login.clone(),
                    r.probe_write.clone(),
                    r.probe_read.clone(),
                )
            });
            group.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
            let mut median = group.swap_remove((group.len() - 1) / 2);
            median.rounds = rounds;
            median.errors = errors;
            median.count_mismatches = count_mismatches;
            if let Some((login, write, read)) = probes {
                (median.probe_login, median.probe_write, median.probe_read) = (login, write, read);
            }
            median
        })
        .collect()
}

/// sessionhub rows first, then peers, in a fixed order.
fn rank(label: &str) -> (usize, String) {
    let order = [
        "sessionhub",
        "sessionhub-frame",
        "sessionhub-nohistory",
        "sessionhub-nohistory-frame",
        "sessionhub-embedded",
        "sessionhub-embedded-frame",
        "socketioxide",
        "socketioxide-frame",
        "socketio",
        "socketio-frame",
        "tower-sessions",
        "express-session",
    ];
    (
        order
            .iter()
            .position(|l| *l == label)
            .unwrap_or(order.len()),
        label.to_owned(),
    )
}

fn order(r: &mut Results) {
    r.fanout.sort_by_key(|f| rank(&f.label));
    r.connections.sort_by_key(|c| rank(&c.label));
    r.sessions.sort_by_key(|s| rank(&s.label));
}

fn best_rate(f: &FanoutReport) -> f64 {
    f.best.as_ref().map_or(0.0, |b| b.delivered_per_sec)
}

fn find<'a, T>(items: &'a [T], label: &str, get: impl Fn(&T) -> &str) -> Option<&'a T> {
    items.iter().find(|i| get(i) == label)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn checks(r: &Results) -> Vec<Check> {
    let mut out = Vec::new();
    let fan = |l: &str| find(&r.fanout, l, |f| &f.label).map(best_rate);
    // sessionhub as configured by default (every push kept in history), and without history:
    // the peers keep none, so that row does exactly their job.
    let variants = [
        ("sessionhub", ""),
        ("sessionhub-nohistory", ", without history"),
    ];
    for ((ours_label, variant), (peer, factor)) in variants
        .into_iter()
        .flat_map(|v| [(v, ("socketio", 3.0)), (v, ("socketioxide", 1.5))])
    {
        for suffix in ["", "-frame"] {
            let (Some(ours), Some(theirs)) = (
                fan(&format!("{ours_label}{suffix}")),
                fan(&format!("{peer}{suffix}")),
            ) else {
                continue;
            };
            let mode = if suffix.is_empty() {
                "HTTP push"
            } else {
                "client-frame push"
            };
            out.push(Check {
                target: format!(
                    "fan-out >= {factor}x {peer} delivered msgs/s at p99 < 50 ms ({mode}{variant})"
                ),
                measured: format!(
                    "{:.0} vs {:.0} msgs/s = {}",
                    ours,
                    theirs,
                    ratio(ours, theirs)
                ),
                met: (theirs > 0.0).then_some(ours >= factor * theirs),
            });
        }
    }
    for c in r
        .connections
        .iter()
        .filter(|c| c.label.starts_with("sessionhub"))
    {
        let at_target = c.opened >= 50_000;
        out.push(Check {
            target: format!(
                "<= 8 KiB resident per idle connection at 50 000 connections ({})",
                c.label
            ),
            measured: format!(
                "{:.2} KiB per connection at {} connections{}",
                c.kib_per_conn,
                c.opened,
                if at_target {
                    ""
                } else {
                    " (50 000 not reachable in this run)"
                }
            ),
            met: if c.kib_per_conn > 8.0 {
                Some(false)
            } else if at_target {
                Some(true)
            } else {
                None
            },
        });
    }
    let sess = |l: &str| find(&r.sessions, l, |s| &s.label);
    if let (Some(ours), Some(theirs)) = (sess("sessionhub"), sess("tower-sessions")) {
        out.push(Check {
            target: "sessions >= 2x tower-sessions requests/s on the same Redis".into(),
            measured: format!(
                "{:.0} vs {:.0} req/s = {}",
                ours.requests_per_sec,
                theirs.requests_per_sec,
                ratio(ours.requests_per_sec, theirs.requests_per_sec)
            ),
            met: Some(ours.requests_per_sec >= 2.0 * theirs.requests_per_sec),
        });
    }
    if let Some(ours) = sess("sessionhub") {
        let read = ours.probe_read.as_ref();
        out.push(Check {
            target: "exactly 1 Redis round trip for a read-only request".into(),
            measured: read.map_or_else(
                || "no read-only session route on the target".into(),
                |p| format!("{:.2} commands per request", p.round_trips_per_request),
            ),
            met: read.map(|p| (p.round_trips_per_request - 1.0).abs() < 0.05),
        });
        let write = ours.probe_write.as_ref();
        out.push(Check {
            target: "at most 2 Redis round trips for a read+write request (/get-session)".into(),
            measured: write.map_or_else(
                || "not probed".into(),
                |p| {
                    format!(
                        "{:.2} commands per request ({})",
                        p.round_trips_per_request,
                        commands(&p.top_level)
                    )
                },
            ),
            met: write.map(|p| p.round_trips_per_request <= 2.05),
        });
    }
    out
}

/// CPU microseconds per operation, from percent of a core and operations per second.
fn per_op_us(percent: f64, per_sec: f64) -> f64 {
    if per_sec > 0.0 {
        percent / 100.0 * 1e6 / per_sec
    } else {
        0.0
    }
}

fn commands(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Draws the charts next to `out`; their file names.
fn charts(r: &Results, out: &Path) -> Vec<String> {
    let stem = out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("results");
    let dir = out.parent().unwrap_or(Path::new("."));
    let mut written = Vec::new();
    let mut attempt = |name: &str, result: anyhow::Result<bool>| match result {
        Ok(true) => written.push(name.to_owned()),
        Ok(false) => {}
        Err(e) => eprintln!("chart {name}: {e:#}"),
    };

    let name = format!("{stem}-fanout-latency.png");
    attempt(&name, fanout_latency_chart(r, &dir.join(&name)));
    let name = format!("{stem}-fanout-throughput.png");
    attempt(&name, fanout_throughput_chart(r, &dir.join(&name)));
    let name = format!("{stem}-connections-memory.png");
    attempt(&name, memory_chart(r, &dir.join(&name)));
    let name = format!("{stem}-sessions.png");
    attempt(&name, sessions_chart(r, &dir.join(&name)));
    for n in &written {
        eprintln!("wrote {}", dir.join(n).display());
    }
    written
}

fn curve(points: &[[f64; 2]]) -> Vec<(f64, f64)> {
    points.iter().map(|p| (chart::nines(p[0]), p[1])).collect()
}

fn fanout_latency_chart(r: &Results, path: &Path) -> anyhow::Result<bool> {
    if r.fanout.is_empty() {
        return Ok(false);
    }
    let first: Vec<Series> = r
        .fanout
        .iter()
        .filter_map(|f| {
            let s = f.steps.first()?;
            Some(Series {
                name: format!("{} ({:.0} msg/s)", f.label, s.delivered_per_sec),
                points: curve(&s.latency.curve),
            })
        })
        .collect();
    let best: Vec<Series> = r
        .fanout
        .iter()
        .filter_map(|f| {
            let s = f.best.as_ref()?;
            Some(Series {
                name: format!("{} ({:.0} msg/s)", f.label, s.delivered_per_sec),
                points: curve(&s.latency.curve),
            })
        })
        .collect();
    let rate = r
        .fanout
        .first()
        .and_then(|f| f.steps.first())
        .map_or(0.0, |s| s.rate);
    chart::png(path, 1600, 650, 2, |areas| {
        chart::latency_panel(
            &areas[0],
            &format!("End-to-end latency, all at {rate:.0} pushes/s"),
            &first,
        )?;
        chart::latency_panel(
            &areas[1],
            "End-to-end latency at each target's best rate (p99 < 50 ms)",
            &best,
        )
    })?;
    Ok(true)
}

fn fanout_throughput_chart(r: &Results, path: &Path) -> anyhow::Result<bool> {
    if r.fanout.is_empty() {
        return Ok(false);
    }
    let items: Vec<(String, f64)> = r
        .fanout
        .iter()
        .map(|f| (f.label.clone(), best_rate(f)))
        .collect();
    chart::png(path, 1000, 120 + 60 * items.len() as u32, 1, |areas| {
        chart::bar_panel(
            &areas[0],
            "Fan-out: delivered messages/s with p99 < 50 ms",
            "delivered messages per second",
            &items,
            None,
        )
    })?;
    Ok(true)
}

fn memory_chart(r: &Results, path: &Path) -> anyhow::Result<bool> {
    if r.connections.is_empty() {
        return Ok(false);
    }
    let lines: Vec<Series> = r
        .connections
        .iter()
        .map(|c| Series {
            name: c.label.clone(),
            points: c.rss_curve.iter().map(|p| (p[0], p[1] / 1024.0)).collect(),
        })
        .collect();
    let bars: Vec<(String, f64)> = r
        .connections
        .iter()
        .map(|c| (c.label.clone(), c.kib_per_conn))
        .collect();
    chart::png(path, 1600, 600, 2, |areas| {
        chart::line_panel(
            &areas[0],
            "Server resident memory while ramping idle sockets",
            "open connections",
            "RSS (MiB)",
            &lines,
        )?;
        chart::bar_panel(
            &areas[1],
            "Resident memory per idle connection",
            "KiB per connection",
            &bars,
            Some((8.0, "target 8 KiB")),
        )
    })?;
    Ok(true)
}

fn sessions_chart(r: &Results, path: &Path) -> anyhow::Result<bool> {
    if r.sessions.is_empty() {
        return Ok(false);
    }
    let rps: Vec<(String, f64)> = r
        .sessions
        .iter()
        .map(|s| (s.label.clone(), s.requests_per_sec))
        .collect();
    let cmds: Vec<(String, f64)> = r
        .sessions
        .iter()
        .map(|s| (s.label.clone(), s.redis_commands_per_request))
        .collect();
    chart::png(path, 1600, 200 + 60 * rps.len() as u32, 2, |areas| {
        chart::bar_panel(
            &areas[0],
            "Sessions: /get-session requests/s",
            "requests per second",
            &rps,
            None,
        )?;
        chart::bar_panel(
            &areas[1],
            "Redis commands executed per /get-session (incl. inside Lua)",
            "commands per request",
            &cmds,
            None,
        )
    })?;
    Ok(true)
}

fn mode(m: PublishMode) -> &'static str {
    match m {
        PublishMode::Http => "HTTP",
        PublishMode::Frame => "frame",
    }
}

/// The Markdown tables of a run.
pub(crate) fn markdown(r: &Results, charts: &[String]) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), {:.1} GiB memory, Linux {}.\n",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel
    );
    if !r.notes.is_empty() {
        let notes: Vec<String> = r.notes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "Run: {}.\n", notes.join(", "));
    }

    if !r.fanout.is_empty() {
        let _ = writeln!(s, "### Fan-out: best rate with p99 < 50 ms\n");
        let _ = writeln!(
            s,
            "| target | nodes | push | clients | best pushes/s | delivered msgs/s | p50 ms | p99 ms \
             | p99.9 ms | lost | dup | CPU % server / Redis / loadgen / other | server CPU µs per delivery | \
             sessionhub / this |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for f in &r.fanout {
            let reference = if f.publish == PublishMode::Frame {
                "sessionhub-frame"
            } else {
                "sessionhub"
            };
            let ours = find(&r.fanout, reference, |x| &x.label).map_or(0.0, best_rate);
            match &f.best {
                Some(b) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | \
                         {:.0} / {:.0} / {:.0} / {:.0} | {:.1} | {} |",
                        f.label,
                        f.nodes,
                        mode(f.publish),
                        f.clients,
                        b.publish_rate,
                        b.delivered_per_sec,
                        b.latency.p50_ms,
                        b.latency.p99_ms,
                        b.latency.p999_ms,
                        b.delivery.lost,
                        b.delivery.duplicated,
                        b.cpu.server,
                        b.cpu.redis,
                        b.cpu.loadgen,
                        b.cpu.other,
                        per_op_us(b.cpu.server, b.delivered_per_sec),
                        ratio(ours, b.delivered_per_sec)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | none passed | 0 | | | | | | | | n/a |",
                        f.label,
                        f.nodes,
                        mode(f.publish),
                        f.clients
                    );
                }
            }
        }
        let _ = writeln!(s, "\n### Fan-out: every step of the search\n");
        let _ = writeln!(
            s,
            "| target | pushes/s asked | pushes/s done | delivered msgs/s | p50 ms | p99 ms | \
             p99.9 ms | max ms | lost | dup | errors | CPU % server / Redis / loadgen / other | pass |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for f in &r.fanout {
            for st in &f.steps {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | \
                     {:.0} / {:.0} / {:.0} / {:.0} | {} |",
                    f.label,
                    st.rate,
                    st.publish_rate,
                    st.delivered_per_sec,
                    st.latency.p50_ms,
                    st.latency.p99_ms,
                    st.latency.p999_ms,
                    st.latency.max_ms,
                    st.delivery.lost,
                    st.delivery.duplicated,
                    st.publish_errors,
                    st.cpu.server,
                    st.cpu.redis,
                    st.cpu.loadgen,
                    st.cpu.other,
                    if st.pass { "yes" } else { "no" }
                );
            }
        }
        s.push('\n');
    }

    if !r.connections.is_empty() {
        let _ = writeln!(s, "### Idle connections on one node\n");
        let _ = writeln!(
            s,
            "| target | open | failed | ramp s | RSS before MiB | RSS after MiB | KiB / conn | idle \
             CPU % | sessionhub / this (memory) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        let ours = find(&r.connections, "sessionhub", |c| &c.label).map_or(0.0, |c| c.kib_per_conn);
        for c in &r.connections {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} |",
                c.label,
                c.opened,
                c.failed,
                c.ramp_secs,
                c.rss_before_kib as f64 / 1024.0,
                c.rss_after_kib as f64 / 1024.0,
                c.kib_per_conn,
                c.idle_cpu_percent,
                ratio(ours, c.kib_per_conn)
            );
        }
        s.push('\n');
    }

    if !r.sessions.is_empty() {
        let _ = writeln!(s, "### Sessions on one node with Redis\n");
        let _ = writeln!(
            s,
            "| target | VUs | req/s | p50 ms | p99 ms | errors | count mismatches | Redis cmds/req \
             (INFO, incl. scripted) | sent per read+write | sent per read | sent per login | \
             CPU % server / Redis / loadgen / other | CPU µs per request server / Redis | \
             sessionhub / this |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let ours =
            find(&r.sessions, "sessionhub", |x| &x.label).map_or(0.0, |x| x.requests_per_sec);
        let probe = |p: &Option<crate::sessions::Probe>| {
            p.as_ref().map_or_else(
                || "n/a".into(),
                |p| {
                    format!(
                        "{:.2} ({})",
                        p.round_trips_per_request,
                        commands(&p.top_level)
                    )
                },
            )
        };
        for x in &r.sessions {
            let rounds = match x.rounds.as_slice() {
                [] => String::new(),
                all => {
                    let all: Vec<String> = all.iter().map(|r| format!("{r:.0}")).collect();
                    format!(" (median of {})", all.join(", "))
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0}{} | {:.2} | {:.2} | {} | {} | {:.2} | {} | {} | {} | {:.0} / {:.0} \
                 / {:.0} / {:.0} | {:.1} / {:.1} | {} |",
                x.label,
                x.vus,
                x.requests_per_sec,
                rounds,
                x.latency.p50_ms,
                x.latency.p99_ms,
                x.errors,
                x.count_mismatches,
                x.redis_commands_per_request,
                probe(&x.probe_write),
                probe(&x.probe_read),
                probe(&x.probe_login),
                x.cpu.server,
                x.cpu.redis,
                x.cpu.loadgen,
                x.cpu.other,
                per_op_us(x.cpu.server, x.requests_per_sec),
                per_op_us(x.cpu.redis, x.requests_per_sec),
                ratio(ours, x.requests_per_sec)
            );
        }
        s.push('\n');
    }

    if !r.ceiling.is_empty() {
        let _ = writeln!(s, "### Redis ceiling (redis-benchmark, same machine)\n");
        let _ = writeln!(s, "| command | pipeline | requests/s |");
        let _ = writeln!(s, "|---|---|---|");
        for c in &r.ceiling {
            let (cmd, pipe) = c.name.rsplit_once("-P").unwrap_or((&c.name, "1"));
            let _ = writeln!(s, "| {cmd} | {pipe} | {:.0} |", c.requests_per_sec);
        }
        s.push('\n');
    }

    if !r.checks.is_empty() {
        let _ = writeln!(s, "### Targets\n");
        let _ = writeln!(s, "| target | measured | met |");
        let _ = writeln!(s, "|---|---|---|");
        for c in &r.checks {
            let met = match c.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measurable here",
            };
            let _ = writeln!(s, "| {} | {} | {met} |", c.target, c.measured);
        }
        s.push('\n');
    }

    for c in charts {
        let _ = writeln!(s, "![{c}](../bench/results/{c})\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let csv =
            "\"test\",\"rps\",\"avg_latency_ms\"\n\"publish ch hello\",\"166666.67\",\"0.175\"\n";
        assert_eq!(parse_benchmark_csv(csv), Some(166_666.67));
        assert_eq!(parse_benchmark_csv("\"test\",\"rps\"\n"), None);
    }

    #[test]
    fn cpu_per_operation() {
        // Half a core for 10 000 operations per second: 50 µs each.
        assert!((per_op_us(50.0, 10_000.0) - 50.0).abs() < 1e-9);
        assert_eq!(per_op_us(50.0, 0.0), 0.0);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(300.0, 100.0), "3.00x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }

    fn run(label: &str, rps: f64) -> SessionsReport {
        SessionsReport {
            scenario: "sessions".into(),
            label: label.into(),
            vus: 64,
            duration: 5.0,
            path: None,
            rate: None,
            requests: rps as u64 * 5,
            errors: 0,
            requests_per_sec: rps,
            latency: Default::default(),
            cpu: Default::default(),
            cpu_seconds: Default::default(),
            cpu_per_100k: None,
            count_mismatches: 0,
            redis_commands_per_request: 1.0,
            redis_calls_per_request: Default::default(),
            probe_login: None,
            probe_write: None,
            probe_read: None,
            rounds: Vec::new(),
        }
    }

    /// A fan-out result whose best step delivered `delivered` messages per second.
    fn fanout(label: &str, publish: PublishMode, delivered: f64) -> FanoutReport {
        let best = crate::fanout::StepResult {
            rate: delivered / 2.0,
            publish_rate: delivered / 2.0,
            published: 0,
            publish_errors: 0,
            delivery: Default::default(),
            delivered_per_sec: delivered,
            latency: Default::default(),
            disconnects: 0,
            cpu: Default::default(),
            cpu_seconds: Default::default(),
            cpu_per_100k: None,
            pass: true,
        };
        FanoutReport {
            scenario: "fanout".into(),
            label: label.into(),
            flavor: crate::client::Flavor::Sessionhub,
            publish,
            nodes: 3,
            clients: 1000,
            users: 500,
            payload_bytes: 64,
            duration: 5.0,
            p99_limit_ms: 50.0,
            connect_secs: 1.0,
            steps: vec![best.clone()],
            best: Some(best),
        }
    }

    #[test]
    fn fan_out_targets_are_checked_with_and_without_history() {
        let results = Results {
            machine: Machine::current(),
            notes: BTreeMap::new(),
            fanout: vec![
                fanout("sessionhub", PublishMode::Http, 100.0),
                fanout("sessionhub-nohistory", PublishMode::Http, 160.0),
                fanout("socketioxide", PublishMode::Http, 100.0),
            ],
            connections: Vec::new(),
            sessions: Vec::new(),
            ceiling: Vec::new(),
            checks: Vec::new(),
        };
        let met: Vec<(String, Option<bool>)> = checks(&results)
            .into_iter()
            .map(|c| (c.target, c.met))
            .collect();
        let target = "fan-out >= 1.5x socketioxide delivered msgs/s at p99 < 50 ms (HTTP push";
        assert_eq!(
            met,
            [
                (format!("{target})"), Some(false)),
                (format!("{target}, without history)"), Some(true)),
            ],
            "one check per configuration that ran, none for peers or modes that did not"
        );
    }

    #[test]
    fn rounds_of_a_target_merge_into_the_median_one() {
        let probe = crate::sessions::Probe {
            requests: 1,
            round_trips_per_request: 1.0,
            top_level: Default::default(),
            scripted: Default::default(),
        };
        let mut first = run("sessionhub", 300.0);
        first.probe_write = Some(probe.clone());
        let mut third = run("sessionhub", 200.0);
        third.errors = 2;
        third.count_mismatches = 1;
        let merged = merge_rounds(vec![
            first,
            run("tower-sessions", 90.0),
            run("sessionhub", 100.0),
            third,
        ]);
        assert_eq!(merged.len(), 2);
        let ours = &merged[0];
        assert_eq!(ours.label, "sessionhub");
        assert_eq!(ours.requests_per_sec, 200.0, "the median round");
        assert_eq!(
            ours.rounds,
            [300.0, 100.0, 200.0],
            "every round, in run order"
        );
        assert_eq!((ours.errors, ours.count_mismatches), (2, 1), "summed");
        assert!(
            ours.probe_write.is_some(),
            "the probe of the round that ran it"
        );
        // A single run stays as it is.
        assert_eq!(merged[1].label, "tower-sessions");
        assert!(merged[1].rounds.is_empty());
        // An even count takes the lower middle.
        let two = merge_rounds(vec![run("x", 10.0), run("x", 20.0)]);
        assert_eq!(two[0].requests_per_sec, 10.0);
    }

    #[test]
    fn sessionhub_rows_come_first() {
        let mut labels = ["socketio", "sessionhub-frame", "zzz", "sessionhub"];
        labels.sort_by_key(|l| rank(l));
        assert_eq!(
            labels,
            ["sessionhub", "sessionhub-frame", "socketio", "zzz"]
        );
    }
}
