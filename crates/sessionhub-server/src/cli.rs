//! Command-line flags. Every flag also reads `SESSIONHUB_<NAME>` from the environment, and
//! `--config FILE` (TOML) may set any of them: flags beat the environment, which beats the
//! file, which beats the defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use sessionhub::auth::ChannelRule;
use sessionhub::limits::Rate;

/// The version and the commit it was built from (`build.rs`).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SESSIONHUB_COMMIT"),
    ")"
);

/// sessionhub: shared HTTP sessions and WebSocket push for apps on many nodes.
#[derive(Debug, Parser)]
#[command(name = "sessionhub", version = VERSION, about)]
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
    /// TOML file with any of these settings, keyed by flag name (`listen = "127.0.0.1:8080"`,
    /// `api-key = ["k1", "k2"]`). Flags and environment variables take precedence.
    #[arg(long, env = "SESSIONHUB_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Log output: pretty (for people) or json (one object per line, for collectors).
    #[arg(long, env = "SESSIONHUB_LOG_FORMAT", default_value = "pretty",
          value_parser = ["pretty", "json"])]
    pub(crate) log_format: String,

    /// Which logs to write: a level (`info`, `debug`) or RUST_LOG-style directives
    /// (`info,sessionhub=debug`). Default: RUST_LOG, else info. Changes on reload (SIGHUP).
    #[arg(long, env = "SESSIONHUB_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,

    /// Serve GET /metrics on this address only (not on --listen), the Prometheus
    /// convention: keep it off the public network. Default: on --listen.
    #[arg(long, env = "SESSIONHUB_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<SocketAddr>,

    /// Require `Authorization: Bearer <key>` on GET /metrics (repeatable; comma-separated in
    /// the environment). Default: no key.
    #[arg(
        long = "metrics-key",
        env = "SESSIONHUB_METRICS_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) metrics_keys: Vec<String>,

    /// Worker threads that serve connections (default: one per CPU core). With 1, no
    /// wake-ups between workers: the cheapest per message where the node shares its cores
    /// with other nodes or with Redis (docs/benchmarks.md).
    #[arg(long, env = "SESSIONHUB_THREADS",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) threads: Option<u16>,

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

    /// Seconds an SSE stream (`GET /sse`) may send nothing before a heartbeat comment.
    #[arg(long, env = "SESSIONHUB_SSE_HEARTBEAT", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) sse_heartbeat: u64,

    /// Seconds over which a stopping node (SIGTERM) closes its connections with 1012, spread
    /// evenly so their clients do not all reconnect to the other nodes at once (0: all at
    /// once). The node stops accepting connections at once and exits after the window.
    #[arg(long, env = "SESSIONHUB_DRAIN_WINDOW", default_value_t = 5.0,
          value_parser = drain_window)]
    pub(crate) drain_window: f64,

    /// This node's name in logs, headers and greetings (default: host name and port).
    #[arg(long, env = "SESSIONHUB_NODE_ID")]
    pub(crate) node_id: Option<String>,

    /// Do not serve the session demo (/login, /get-session, /read-session, /invalidate).
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

    /// PEM public key for --ws-auth token (repeatable): RSA (RS256), EC P-256 (ES256) or
    /// Ed25519 (EdDSA).
    #[arg(
        long = "token-public-key",
        env = "SESSIONHUB_TOKEN_PUBLIC_KEY",
        value_delimiter = ','
    )]
    pub(crate) token_public_keys: Vec<PathBuf>,

    /// JWK Set for --ws-auth token: an http(s) URL (e.g. your identity provider's
    /// /.well-known/jwks.json) or a file; read again when a token names an unknown kid.
    #[arg(long, env = "SESSIONHUB_TOKEN_JWKS")]
    pub(crate) token_jwks: Option<String>,

    /// Seconds between two reads of the JWKS prompted by unknown kids (at most).
    #[arg(long, env = "SESSIONHUB_TOKEN_JWKS_MIN_REFETCH", default_value_t = 30)]
    pub(crate) token_jwks_min_refetch: u64,

    /// Accepted token issuers (`iss`; comma-separated). Default: any.
    #[arg(
        long = "token-issuer",
        env = "SESSIONHUB_TOKEN_ISSUER",
        value_delimiter = ','
    )]
    pub(crate) token_issuers: Vec<String>,

    /// Accepted token audiences (`aud` must name one; comma-separated). Default: tokens must
    /// not name an audience.
    #[arg(
        long = "token-audience",
        env = "SESSIONHUB_TOKEN_AUDIENCE",
        value_delimiter = ','
    )]
    pub(crate) token_audiences: Vec<String>,

    /// Seconds of slack for a token's exp and nbf, for clocks that disagree.
    #[arg(long, env = "SESSIONHUB_TOKEN_LEEWAY", default_value_t = 0)]
    pub(crate) token_leeway: u64,

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

    /// Channels with presence (join and leave events, member lists): those whose name starts
    /// with one of these prefixes (comma-separated, e.g. `room:,chat:`).
    #[arg(long, env = "SESSIONHUB_PRESENCE_CHANNELS", value_delimiter = ',')]
    pub(crate) presence_channels: Vec<String>,

    /// Private channels: those whose name starts with one of these prefixes (comma-separated,
    /// e.g. `private:`). A client joins one only with a subscribe token for it (a JWT with
    /// `sub`, `channel` and `exp`, signed with a --token-* key), whatever the channel rules.
    #[arg(long, env = "SESSIONHUB_PRIVATE_CHANNELS", value_delimiter = ',')]
    pub(crate) private_channels: Vec<String>,

    /// At most this many sessions per user; logging in past it ends the least recently used.
    #[arg(long, env = "SESSIONHUB_MAX_SESSIONS_PER_USER")]
    pub(crate) max_sessions_per_user: Option<usize>,

    /// Name the cookie __Host-SESSION (forces Secure, Path=/, no Domain): serve over HTTPS.
    #[arg(long, env = "SESSIONHUB_COOKIE_HOST_PREFIX", value_parser = BoolishValueParser::new())]
    pub(crate) cookie_host_prefix: bool,

    /// New connections (sockets and SSE streams) from one client address: N per second,
    /// or N/s, N/m, N/h. With --redis it holds across the cluster (429 past it).
    #[arg(
        long,
        env = "SESSIONHUB_MAX_CONNECTIONS_PER_IP",
        default_value = "50/s"
    )]
    pub(crate) max_connections_per_ip: Rate,

    /// New connections of one user (N/s, N/m, N/h); unlimited when unset. Cluster-wide
    /// with --redis.
    #[arg(long, env = "SESSIONHUB_MAX_CONNECTS_PER_USER")]
    pub(crate) max_connects_per_user: Option<Rate>,

    /// Publishes of one user from clients (WebSocket and POST /sse/publish; not the API's),
    /// N/s, N/m or N/h; unlimited when unset. Cluster-wide with --redis.
    #[arg(long, env = "SESSIONHUB_MAX_PUBLISHES_PER_USER")]
    pub(crate) max_publishes_per_user: Option<Rate>,

    /// Publishes from one client address (WebSocket and POST /sse/publish; not the API's),
    /// N/s, N/m or N/h; unlimited when unset. Cluster-wide with --redis.
    #[arg(long, env = "SESSIONHUB_MAX_PUBLISHES_PER_IP")]
    pub(crate) max_publishes_per_ip: Option<Rate>,

    /// Logins (/login) from one client address, N/s, N/m or N/h; unlimited when unset.
    /// Cluster-wide with --redis.
    #[arg(long, env = "SESSIONHUB_MAX_LOGINS_PER_IP")]
    pub(crate) max_logins_per_ip: Option<Rate>,

    /// Logins (/login) of one user, N/s, N/m or N/h; unlimited when unset. Cluster-wide
    /// with --redis.
    #[arg(long, env = "SESSIONHUB_MAX_LOGINS_PER_USER")]
    pub(crate) max_logins_per_user: Option<Rate>,

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

    /// Open WebSocket connections and SSE streams on this node (past it: HTTP 503
    /// `node_full`, so a load balancer tries another node).
    #[arg(long, env = "SESSIONHUB_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub(crate) max_connections: usize,

    /// Largest WebSocket message and HTTP request body, in bytes.
    #[arg(long, env = "SESSIONHUB_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024)]
    pub(crate) max_message_size: usize,

    /// Publications each channel keeps for recovery. 0 keeps no history: a push costs Redis
    /// a bare PUBLISH and clients cannot recover (idempotency keys still work).
    #[arg(long, env = "SESSIONHUB_HISTORY_SIZE", default_value_t = 100)]
    pub(crate) history_size: usize,

    /// Seconds a publication stays in its channel's history.
    #[arg(long, env = "SESSIONHUB_HISTORY_TTL", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) history_ttl: u64,

    /// Redis URL (redis:// or rediss://, password and db in the URL): cluster mode. Sessions
    /// and pushes go through Redis so any number of nodes can share them.
    #[arg(
        long = "redis",
        env = "SESSIONHUB_REDIS_URL",
        value_name = "URL",
        conflicts_with_all = ["redis_sentinel", "redis_cluster"]
    )]
    pub(crate) redis_url: Option<String>,

    /// Redis Sentinel addresses (HOST:PORT, or redis:// / rediss:// URLs whose password and
    /// TLS also apply to the primary), comma-separated: cluster mode on the primary they
    /// name, followed through failovers. Needs --redis-sentinel-master.
    #[arg(
        long,
        env = "SESSIONHUB_REDIS_SENTINEL",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        requires = "redis_sentinel_master",
        conflicts_with = "redis_cluster"
    )]
    pub(crate) redis_sentinel: Vec<String>,

    /// The name the Sentinels monitor the primary under (their `sentinel monitor NAME`).
    #[arg(
        long,
        env = "SESSIONHUB_REDIS_SENTINEL_MASTER",
        value_name = "NAME",
        requires = "redis_sentinel"
    )]
    pub(crate) redis_sentinel_master: Option<String>,

    /// Redis Cluster seed nodes (HOST:PORT, or redis:// / rediss:// URLs whose password and
    /// TLS apply to every node), comma-separated: cluster mode on a Redis Cluster, with
    /// sharded pub/sub; any live seed is enough to find the rest.
    #[arg(
        long,
        env = "SESSIONHUB_REDIS_CLUSTER",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub(crate) redis_cluster: Vec<String>,

    /// Prefix of every Redis key and channel this node uses.
    #[arg(long, env = "SESSIONHUB_REDIS_PREFIX", default_value = sessionhub::redis::DEFAULT_PREFIX)]
    pub(crate) redis_prefix: String,

    /// NATS server URLs (nats:// or tls://, comma-separated): pushes go through NATS (core
    /// NATS to the nodes, JetStream for history) instead of Redis or the embedded broker.
    /// Sessions stay where they were (embedded, or --redis / --redis-sentinel).
    #[arg(long = "nats", env = "SESSIONHUB_NATS", value_name = "URL[,URL...]")]
    pub(crate) nats: Option<String>,

    /// Prefix of every NATS subject and stream this node uses.
    #[arg(long, env = "SESSIONHUB_NATS_PREFIX",
          default_value = sessionhub::broker::NatsBrokerConfig::DEFAULT_PREFIX)]
    pub(crate) nats_prefix: String,

    /// Proxies whose X-Forwarded-Proto is believed (comma-separated IP addresses).
    #[arg(long, env = "SESSIONHUB_TRUSTED_PROXIES", value_delimiter = ',')]
    pub(crate) trusted_proxies: Vec<IpAddr>,
    /// The application's connect hook: POSTed a JSON body when a protocol v1 client (/ws,
    /// /sse) connects; may refuse it, rename its user, join it to channels, end it at a time
    /// (docs/hooks.md).
    #[arg(long, env = "SESSIONHUB_PROXY_CONNECT_URL", value_name = "URL")]
    pub(crate) proxy_connect_url: Option<String>,

    /// The application's subscribe hook: asked when a client joins a channel.
    #[arg(long, env = "SESSIONHUB_PROXY_SUBSCRIBE_URL", value_name = "URL")]
    pub(crate) proxy_subscribe_url: Option<String>,

    /// The application's publish hook: asked when a client publishes; may refuse or replace
    /// the data.
    #[arg(long, env = "SESSIONHUB_PROXY_PUBLISH_URL", value_name = "URL")]
    pub(crate) proxy_publish_url: Option<String>,

    /// The application's refresh hook: asked shortly before the end the connect hook set
    /// (expire_at); may extend it.
    #[arg(long, env = "SESSIONHUB_PROXY_REFRESH_URL", value_name = "URL")]
    pub(crate) proxy_refresh_url: Option<String>,

    /// Client request headers passed on to the hooks (comma-separated, e.g.
    /// Cookie,Authorization). None by default: these carry the user's credentials, so name
    /// only those the application needs, and only with hook URLs you trust.
    #[arg(
        long,
        env = "SESSIONHUB_PROXY_FORWARD_HEADERS",
        value_delimiter = ',',
        value_name = "HEADER"
    )]
    pub(crate) proxy_forward_headers: Vec<String>,

    /// Seconds one hook call may take, answer included.
    #[arg(long, env = "SESSIONHUB_PROXY_TIMEOUT", default_value_t = 1.0,
          value_parser = proxy_timeout)]
    pub(crate) proxy_timeout: f64,

    /// What a hook call that fails (timeout, no connection, non-2xx, not the contract's
    /// JSON) decides: deny (close code 4503, HTTP 503) or allow.
    #[arg(long, env = "SESSIONHUB_PROXY_ON_FAILURE", default_value = "deny",
          value_parser = ["deny", "allow"])]
    pub(crate) proxy_on_failure: String,

    /// Where to POST signed webhook events (http:// or https://); none are sent without it.
    #[arg(long, env = "SESSIONHUB_WEBHOOK_URL", requires = "webhook_secret")]
    pub(crate) webhook_url: Option<String>,

    /// Secrets that sign webhooks (comma-separated: each signs every request, so a receiver
    /// can switch to a new one while the old one still verifies).
    #[arg(
        long,
        env = "SESSIONHUB_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) webhook_secret: Vec<String>,

    /// Which webhook events to send (comma-separated: online, offline, occupied, vacated,
    /// join, leave, message, destroyed, cache_miss; default all).
    #[arg(long, env = "SESSIONHUB_WEBHOOK_EVENTS", value_delimiter = ',')]
    pub(crate) webhook_events: Vec<sessionhub::webhook::EventKind>,

    /// Seconds one webhook POST may take.
    #[arg(long, env = "SESSIONHUB_WEBHOOK_TIMEOUT", default_value_t = 5.0, value_parser = seconds)]
    pub(crate) webhook_timeout: f64,

    /// Failed POSTs of one event before it is dropped (counted in /metrics).
    #[arg(long, env = "SESSIONHUB_WEBHOOK_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) webhook_max_attempts: u32,

    /// Seconds before the first retry of a failed webhook; doubled per failure, with jitter.
    #[arg(long, env = "SESSIONHUB_WEBHOOK_BACKOFF", default_value_t = 1.0, value_parser = seconds)]
    pub(crate) webhook_backoff: f64,

    /// Most seconds between retries of a webhook.
    #[arg(long, env = "SESSIONHUB_WEBHOOK_MAX_BACKOFF", default_value_t = 60.0, value_parser = seconds)]
    pub(crate) webhook_max_backoff: f64,

    /// Seconds `--webhook-url`'s `channel.vacated` and `presence.leave` wait, cancelled with
    /// the matching `channel.occupied` / `presence.join` by a comeback within them; none:
    /// sent at once. (Pusher apps' webhooks always wait 3 s, as Pusher's do.)
    #[arg(long, env = "SESSIONHUB_WEBHOOK_GRACE", value_parser = seconds)]
    pub(crate) webhook_grace: Option<f64>,

    /// Most webhook events queued (cluster-wide with Redis); past it new events are dropped,
    /// counted and logged.
    #[arg(long, env = "SESSIONHUB_WEBHOOK_QUEUE_SIZE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) webhook_queue_size: u64,

    /// A Pusher Channels app, ID:KEY:SECRET (repeatable; comma-separated in the
    /// environment): pusher-js connects to /app/KEY, the Pusher server SDKs call
    /// /apps/ID/…, both signing with SECRET. None: the Pusher routes are not served.
    #[arg(
        long = "pusher-app",
        env = "SESSIONHUB_PUSHER_APPS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "ID:KEY:SECRET"
    )]
    pub(crate) pusher_apps: Vec<sessionhub::pusher::PusherApp>,

    /// Where the webhooks of the --pusher-app apps go, in Pusher's format.
    #[arg(long, env = "SESSIONHUB_PUSHER_WEBHOOK", value_name = "URL")]
    pub(crate) pusher_webhook: Option<String>,

    /// The encryption master key (32 bytes in base64, as the Pusher server SDKs'
    /// `encryptionMasterKeyBase64`) of the --pusher-app apps: with it the built-in
    /// /pusher/auth authorizes `private-encrypted-` channels, handing out their
    /// `shared_secret`. The server never decrypts.
    #[arg(
        long,
        env = "SESSIONHUB_PUSHER_ENCRYPTION_MASTER_KEY",
        hide_env_values = true,
        value_name = "BASE64"
    )]
    pub(crate) pusher_encryption_master_key: Option<sessionhub::pusher::EncryptionMasterKey>,

    /// Let the clients of every Pusher app send client events (`client-…` on private and
    /// presence channels, to the channel's other subscribers); off, as on Pusher, unless
    /// this or an app's own `client_events` in the config file turns them on.
    #[arg(long, env = "SESSIONHUB_PUSHER_CLIENT_EVENTS", value_parser = BoolishValueParser::new())]
    pub(crate) pusher_client_events: bool,
}

/// Every `serve` setting as its raw values, by name: what a reload compares.
pub(crate) type Settings = BTreeMap<String, Vec<String>>;

impl Cli {
    /// Parses the command line, then fills every setting that neither a flag nor an
    /// environment variable gave from `--config`, if any. Exits on `--help`, `--version`
    /// and bad flags, as a command does.
    pub(crate) fn load() -> anyhow::Result<(Self, Settings)> {
        let args: Vec<_> = std::env::args_os().collect();
        let matches = Self::command().get_matches_from(args.clone());
        Self::load_from(args, matches)
    }

    /// The settings again, as at start (the same flags and environment) with the config file
    /// as it is now: for a reload, so any error is returned, never an exit.
    pub(crate) fn reload() -> anyhow::Result<(Self, Settings)> {
        let args: Vec<_> = std::env::args_os().collect();
        let matches = Self::command().try_get_matches_from(args.clone())?;
        Self::load_from(args, matches)
    }

    fn load_from(
        args: Vec<std::ffi::OsString>,
        matches: clap::ArgMatches,
    ) -> anyhow::Result<(Self, Settings)> {
        let command = Self::command();
        let Some(("serve", serve)) = matches.subcommand() else {
            return Ok((Self::from_arg_matches(&matches)?, Settings::new()));
        };
        let Some(path) = serve.get_one::<PathBuf>("config") else {
            return Ok((Self::from_arg_matches(&matches)?, settings(serve)));
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let mut table: toml::Table = text
            .parse()
            .with_context(|| format!("parsing the config file {}", path.display()))?;
        // The one section that is not a flag: apps with options of their own.
        let file_apps = match table.remove("pusher") {
            Some(section) => pusher_section(section)
                .with_context(|| format!("the [pusher] section of {}", path.display()))?,
            None => Vec::new(),
        };
        let serve_command = command
            .find_subcommand("serve")
            .expect("serve is a subcommand");
        let mut extra = Vec::new();
        for (key, value) in &table {
            let long = key.replace('_', "-");
            let arg = serve_command
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
                .with_context(|| {
                    format!("unknown key `{key}` in the config file {}", path.display())
                })?;
            let id = arg.get_id().as_str();
            // Only what neither a flag nor the environment set.
            if !matches!(
                serve.value_source(id),
                None | Some(clap::parser::ValueSource::DefaultValue)
            ) {
                continue;
            }
            let values = match value {
                toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>(),
                other => scalar(other).map(|v| vec![v]),
            }
            .with_context(|| {
                format!("config key `{key}`: expected a string, number, boolean or list")
            })?;
            let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
            for value in values {
                if is_switch {
                    if value == "true" {
                        extra.push(format!("--{long}"));
                    }
                } else {
                    extra.push(format!("--{long}={value}"));
                }
            }
        }
        let mut all = args;
        all.extend(extra.into_iter().map(Into::into));
        let matches = command.try_get_matches_from(all)?;
        let mut settings = match matches.subcommand() {
            Some(("serve", serve)) => settings(serve),
            _ => Settings::new(),
        };
        let mut cli = Self::from_arg_matches(&matches)?;
        if !file_apps.is_empty() {
            // Compared on reload (a change needs a restart), never logged: it holds secrets.
            let described = file_apps.iter().map(|app| format!("{app:?}")).collect();
            settings.insert("pusher.apps".into(), described);
            let Command::Serve(serve) = &mut cli.command;
            serve.pusher_apps.extend(file_apps);
        }
        Ok((cli, settings))
    }
}

/// One `[[pusher.apps]]` entry of the config file: an app with its own options.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PusherAppEntry {
    id: String,
    key: String,
    secret: String,
    client_events: Option<bool>,
    client_event_rate: Option<u32>,
    max_presence_members: Option<usize>,
    max_user_info_bytes: Option<usize>,
    max_event_bytes: Option<usize>,
    webhook_url: Option<String>,
    encryption_master_key_base64: Option<String>,
    namespace: Option<String>,
}

/// The apps of the config file's `[pusher]` section (`[[pusher.apps]]` tables), added to
/// `--pusher-app`'s.
fn pusher_section(section: toml::Value) -> anyhow::Result<Vec<sessionhub::pusher::PusherApp>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(default)]
        apps: Vec<PusherAppEntry>,
    }
    let section: Section = section.try_into()?;
    section
        .apps
        .into_iter()
        .map(|entry| {
            let credentials = format!("{}:{}:{}", entry.id, entry.key, entry.secret);
            let mut app: sessionhub::pusher::PusherApp = credentials.parse()?;
            app.client_events = entry.client_events.unwrap_or(app.client_events);
            app.client_event_rate = entry.client_event_rate.unwrap_or(app.client_event_rate);
            app.max_presence_members = entry
                .max_presence_members
                .unwrap_or(app.max_presence_members);
            app.max_user_info_bytes = entry.max_user_info_bytes.unwrap_or(app.max_user_info_bytes);
            app.max_event_bytes = entry.max_event_bytes.unwrap_or(app.max_event_bytes);
            app.webhook_url = entry.webhook_url;
            app.encryption_master_key = entry
                .encryption_master_key_base64
                .as_deref()
                .map(str::parse)
                .transpose()?;
            app.namespace = entry.namespace;
            Ok(app)
        })
        .collect()
}

/// The raw values of every `serve` setting, by the name the config file uses.
fn settings(serve: &clap::ArgMatches) -> Settings {
    let command = Cli::command();
    let serve_command = command
        .find_subcommand("serve")
        .expect("serve is a subcommand");
    serve_command
        .get_arguments()
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            let raw = serve.try_get_raw(id).ok().flatten()?;
            let values = raw.map(|v| v.to_string_lossy().into_owned()).collect();
            Some((arg.get_long().unwrap_or(id).to_owned(), values))
        })
        .collect()
}

/// A TOML scalar as the text a flag takes.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Seconds, from 0 to 300.
fn drain_window(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=300.0).contains(&v) => Ok(v),
        _ => Err("expected seconds from 0 to 300".into()),
    }
}

/// Seconds, more than 0 and at most a minute: one hook call.
fn proxy_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 60.0 => Ok(v),
        _ => Err("expected seconds, more than 0 and at most 60".into()),
    }
}

/// Seconds, more than 0 and at most a day.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err("expected seconds, more than 0 and at most 86400".into()),
    }
}
