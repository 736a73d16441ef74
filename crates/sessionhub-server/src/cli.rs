//! Command-line flags. Every flag also reads `SESSIONHUB_<NAME>` from the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// sessionhub: shared HTTP sessions and WebSocket push for apps on many nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the push gateway and session service.
    Serve(Serve),
}

#[derive(Debug, Args)]
pub(crate) struct Serve {
    /// Address to listen on. A non-loopback address needs --insecure.
    #[arg(long, env = "SESSIONHUB_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// Directory for the embedded session journal.
    #[arg(long, env = "SESSIONHUB_DATA_DIR", default_value = "sessionhub-data")]
    pub(crate) data_dir: PathBuf,

    /// Seconds a session may go unused before it expires.
    #[arg(long, env = "SESSIONHUB_SESSION_TIMEOUT", default_value_t = 1800,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) session_timeout: u64,

    /// Seconds after creation a session expires however often it is used (default: never).
    #[arg(long, env = "SESSIONHUB_SESSION_MAX_LIFETIME",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) session_max_lifetime: Option<u64>,

    /// Seconds a WebSocket may stay silent (no frame, no pong) before it is closed.
    #[arg(long, env = "SESSIONHUB_WS_IDLE_TIMEOUT", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ws_idle_timeout: u64,

    /// This node's name in logs, headers and greetings (default: host name and port).
    #[arg(long, env = "SESSIONHUB_NODE_ID")]
    pub(crate) node_id: Option<String>,

    /// Do not serve the session demo (/login, /get-session, /invalidate).
    #[arg(long, env = "SESSIONHUB_NO_DEMO")]
    pub(crate) no_demo: bool,

    /// Allow listening on a non-loopback address although the endpoints are open.
    #[arg(long, env = "SESSIONHUB_INSECURE")]
    pub(crate) insecure: bool,

    /// Redis URL (redis:// or rediss://, password and db in the URL): cluster mode. Sessions
    /// and pushes go through Redis so any number of nodes can share them.
    #[arg(long = "redis", env = "SESSIONHUB_REDIS_URL", value_name = "URL")]
    pub(crate) redis_url: Option<String>,

    /// Prefix of every Redis key and channel this node uses.
    #[arg(long, env = "SESSIONHUB_REDIS_PREFIX", default_value = "sessionhub:")]
    pub(crate) redis_prefix: String,

    /// Proxies whose X-Forwarded-Proto is believed (comma-separated IP addresses).
    #[arg(long, env = "SESSIONHUB_TRUSTED_PROXIES", value_delimiter = ',')]
    pub(crate) trusted_proxies: Vec<IpAddr>,
}
