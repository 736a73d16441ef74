//! `sessionhub-loadgen`: load generator for sessionhub and its peers.
//!
//! - `fanout`: WebSocket clients over several nodes, a publisher at a fixed rate (or a
//!   search for the highest rate whose p99 stays under 50 ms); end-to-end latency, loss,
//!   duplicates.
//! - `connections`: idle WebSocket connections on one node; server memory per connection
//!   and idle CPU.
//! - `sessions`: log in, then read + increment the session in a loop; requests per second
//!   and Redis commands per request.
//! - `report`: gathers the JSON results of a run into one file, Markdown tables and charts.
//!
//! Works against sessionhub, Socket.IO servers (Engine.IO v4 spoken directly) and Pusher
//! Channels servers (sessionhub's `/app/{key}`, Sockudo).
//! `scripts/bench.sh` starts the targets and runs every scenario; see docs/benchmarks.md.
#![forbid(unsafe_code)]

mod chart;
mod client;
mod clock;
mod connections;
mod engineio;
mod fanout;
mod http;
mod pacing;
mod payload;
mod procfs;
mod pusher;
mod redisprobe;
mod report;
mod sessions;
mod stats;
mod ws;

use std::path::Path;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

/// Load generator for sessionhub and its peers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Threads of the async runtime. 1 (the default) runs everything on one thread, which
    /// costs the least CPU per message: no cross-thread wakeups. Raise it only if the load
    /// generator itself saturates a core (its CPU is in every step's results).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// The Pusher app of `--flavor pusher` targets, ID:KEY:SECRET.
    #[arg(
        long,
        global = true,
        env = "LOADGEN_PUSHER_APP",
        hide_env_values = true
    )]
    pusher_app: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Push to users over many sockets; latency, loss, duplicates; optional rate search.
    Fanout(fanout::FanoutArgs),
    /// Ramp idle sockets on one node; server memory per connection and idle CPU.
    Connections(connections::ConnectionsArgs),
    /// Session reads + increments over HTTP; requests/s and Redis commands per request.
    Sessions(sessions::SessionsArgs),
    /// Merge a run's results into one JSON file, Markdown tables and PNG charts.
    Report(report::ReportArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Start the shared clock before anything is stamped.
    let _ = clock::now_us();
    if let Some(app) = &cli.pusher_app {
        pusher::configure(app)?;
    }
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(cli.threads);
        builder
    }
    .enable_all()
    .build()
    .context("starting the async runtime")?;
    match cli.command {
        Command::Fanout(args) => {
            let out = args.out.clone();
            let report = runtime.block_on(fanout::run(args))?;
            emit(&report, out.as_deref())
        }
        Command::Connections(args) => {
            let out = args.out.clone();
            let report = runtime.block_on(connections::run(args))?;
            emit(&report, out.as_deref())
        }
        Command::Sessions(args) => {
            let out = args.out.clone();
            let report = runtime.block_on(sessions::run(args))?;
            emit(&report, out.as_deref())
        }
        Command::Report(args) => report::run(&args),
    }
}

/// Prints `report` as JSON and writes it to `out`.
fn emit(report: &impl Serialize, out: Option<&Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(out) = out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{json}");
    Ok(())
}
