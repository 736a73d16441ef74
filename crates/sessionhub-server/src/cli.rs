//! Command-line flags. Every flag also reads `SESSIONHUB_<NAME>` from the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use sessionhub::auth::ChannelRule;

/// sessionhub: shared HTTP sessions and WebSocket push for apps on many nodes.
#[derive(Debug, Parser)]
#[command(name = "sessionhub", version, about)]
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

    /// Directory for the embedded session journal (unused with --redis).
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
    #[arg(long, env = "SESSIONHUB_NO_DEMO", value_parser = BoolishValueParser::new())]
    pub(crate) no_demo: bool,

    /// Allow listening on a non-loopback address although the endpoints are open.
    #[arg(long, env = "SESSIONHUB_INSECURE", value_parser = BoolishValueParser::new())]
    pub(crate) insecure: bool,

    /// How sockets authenticate: session (the HTTP session's logged-in user), token (HS256
    /// JWT from your backend) or open (anyone is anyone; loopback only unless --insecure).
    /// Default: open on a loopback address, session otherwise.
    #[arg(long, env = "SESSIONHUB_WS_AUTH", value_parser = ["session", "token", "open"])]
    pub(crate) ws_auth: Option<String>,

    /// API key for /socket/* and /api/* (repeatable; comma-separated in the environment).
    /// Required unless the server is loopback and open.
    #[arg(
        long = "api-key",
        env = "SESSIONHUB_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) api_keys: Vec<String>,

    /// File with one API key per line (added to --api-key).
    #[arg(long, env = "SESSIONHUB_API_KEY_FILE")]
    pub(crate) api_key_file: Option<PathBuf>,

    /// HS256 secret for --ws-auth token (repeatable: during a rotation both are accepted).
    #[arg(
        long = "token-secret",
        env = "SESSIONHUB_TOKEN_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) token_secrets: Vec<String>,

    /// File with one token secret per line (added to --token-secret).
    #[arg(long, env = "SESSIONHUB_TOKEN_SECRET_FILE")]
    pub(crate) token_secret_file: Option<PathBuf>,

    /// Web origins that may open sockets (comma-separated, e.g. https://app.example.com;
    /// `*` for any). Default: only pages from the same host and port.
    #[arg(long, env = "SESSIONHUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) allowed_origins: Vec<String>,

    /// What clients may do on channels with a prefix: PREFIX=subscribe+publish (repeatable;
    /// `;`-separated in the environment). `user:=publish` allows the {"KEY","VALUE"} frame.
    /// Client publishes are off unless a rule grants them (always on with --ws-auth open).
    #[arg(
        long = "channel-rule",
        env = "SESSIONHUB_CHANNEL_RULES",
        value_delimiter = ';'
    )]
    pub(crate) channel_rules: Vec<ChannelRule>,

    /// At most this many sessions per user; logging in past it ends the least recently used.
    #[arg(long, env = "SESSIONHUB_MAX_SESSIONS_PER_USER")]
    pub(crate) max_sessions_per_user: Option<usize>,

    /// Name the cookie __Host-SESSION (forces Secure, Path=/, no Domain): serve over HTTPS.
    #[arg(long, env = "SESSIONHUB_COOKIE_HOST_PREFIX", value_parser = BoolishValueParser::new())]
    pub(crate) cookie_host_prefix: bool,

    /// New WebSocket connections per second from one client address.
    #[arg(long, env = "SESSIONHUB_MAX_CONNECTIONS_PER_IP", default_value_t = 50)]
    pub(crate) max_connections_per_ip: u32,

    /// Inbound WebSocket messages per second per connection (past it: close 4029).
    #[arg(long, env = "SESSIONHUB_MAX_MESSAGES_PER_SEC", default_value_t = 100)]
    pub(crate) max_messages_per_sec: u32,

    /// Open WebSocket connections per user, per node.
    #[arg(
        long,
        env = "SESSIONHUB_MAX_CONNECTIONS_PER_USER",
        default_value_t = 100
    )]
    pub(crate) max_connections_per_user: usize,

    /// Largest WebSocket message and HTTP request body, in bytes.
    #[arg(long, env = "SESSIONHUB_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024)]
    pub(crate) max_message_size: usize,

    /// Publications each channel keeps for recovery.
    #[arg(long, env = "SESSIONHUB_HISTORY_SIZE", default_value_t = 100)]
    pub(crate) history_size: usize,

    /// Seconds a publication stays in its channel's history.
    #[arg(long, env = "SESSIONHUB_HISTORY_TTL", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) history_ttl: u64,

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
