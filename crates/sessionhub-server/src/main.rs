//! `sessionhub`: the push gateway and session service.
//!
//! A thin binary: it parses flags, builds the library's parts and serves them.
#![forbid(unsafe_code)]

mod cli;
mod reload;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderName;

use anyhow::{Context, bail};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sessionhub::SessionConfig;
use sessionhub::auth::{
    ApiKeys, ChannelRules, OriginPolicy, PrivateChannels, TokenConfig, TokenVerifier, WsAuth,
};
use sessionhub::broker::{
    Broker, Deliver, HistoryConfig, LocalBroker, NatsBrokerConfig, RedisBrokerConfig,
};
use sessionhub::gateway::{Gateway, GatewayConfig, Security, SocketConfig};
use sessionhub::hooks::{FailurePolicy, HttpHooks, ProxyConfig};
use sessionhub::hub::Hub;
use sessionhub::limits::{FallbackRateLimiter, Limits, RateLimiter, RedisRateLimiter};
use sessionhub::presence::{LocalPresence, Presence, PresenceChannels, RedisPresence};
use sessionhub::pusher::PusherApps;
use sessionhub::redis::RedisConfig;
use sessionhub::store::{Instrumented, MemoryStore, RedisStore, SessionStore};
use sessionhub::webhook::{
    EventKind, EventSet, Format, LocalQueue, Queue, RedisQueue, WebhookConfig, Webhooks,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, Serve};

/// glibc's malloc was ~10% of a node's CPU under push load (perf); mimalloc takes 16% off
/// the user-space instructions of a push and leaves idle memory as it was
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Everything a stop may take before the process exits anyway.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), not a backtrace: these are operator errors.
            eprintln!("sessionhub: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let (cli, settings) = Cli::load()?;
    let Command::Serve(serve) = &cli.command;
    let log_filter = reload::init_logs(serve)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = serve.threads {
        // Even with 1, a worker thread beside the main one: a current-thread runtime served
        // ~15 % fewer /get-session per second here, the one thread doing everything.
        runtime.worker_threads(threads.into());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve(serve) => runtime.block_on(run(serve, settings, log_filter)),
    }
}

async fn run(
    args: Serve,
    settings: cli::Settings,
    log_filter: reload::LogFilter,
) -> anyhow::Result<()> {
    let security = security(&args)?;
    let hooks = hooks(&args)?;
    let prometheus = prometheus()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?,
        ),
        None => None,
    };
    let local = listener.local_addr()?;
    let node_id = args.node_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            gethostname::gethostname().to_string_lossy(),
            local.port()
        )
    });

    let history = HistoryConfig {
        size: args.history_size,
        ttl: Duration::from_secs(args.history_ttl),
        ..HistoryConfig::default()
    };
    // clap lets at most one of the three through.
    let redis = match (&args.redis_url, &args.redis_sentinel_master) {
        (Some(url), _) => Some(RedisConfig::new(url).context("configuring Redis")?),
        (None, Some(master)) => Some(
            RedisConfig::sentinel(&args.redis_sentinel, master)
                .context("configuring Redis Sentinel")?,
        ),
        (None, None) if !args.redis_cluster.is_empty() => {
            Some(RedisConfig::cluster(&args.redis_cluster).context("configuring Redis Cluster")?)
        }
        (None, None) => None,
    };
    let nats = match &args.nats {
        Some(urls) => Some(
            NatsBrokerConfig::new(urls)
                .and_then(|config| config.prefix(&args.nats_prefix))
                .context("configuring NATS")?
                .history(history.clone()),
        ),
        None => None,
    };
    let redis = redis.map(|redis| redis.prefix(&args.redis_prefix));
    let pusher = pusher_apps(&args)?.with_cache_ttl(history.ttl);
    let webhooks = webhooks(&args, redis.as_ref(), &node_id, &pusher)?;
    let backends = match redis {
        Some(redis) => cluster(redis, &node_id, history, nats)?,
        None => embedded(&args.data_dir, &node_id, history, nats)?,
    };
    let Backends {
        store,
        hub,
        presence,
        rate_limiter,
    } = backends;

    let sessions = SessionConfig {
        idle_timeout: Duration::from_secs(args.session_timeout),
        max_lifetime: args.session_max_lifetime.map(Duration::from_secs),
        trusted_proxies: args.trusted_proxies.clone(),
        max_sessions_per_user: args.max_sessions_per_user,
        cookie_name: if args.cookie_host_prefix {
            "__Host-SESSION"
        } else {
            "SESSION"
        }
        .to_owned(),
        cookie_secure: args.cookie_host_prefix.then_some(true),
        ..SessionConfig::default()
    };
    let socket = SocketConfig {
        idle_timeout: Duration::from_secs(args.ws_idle_timeout),
        max_message_size: args.max_message_size,
        sse_heartbeat: Duration::from_secs(args.sse_heartbeat),
        drain_window: Duration::from_secs_f64(args.drain_window),
        ..SocketConfig::default()
    };
    let config = GatewayConfig {
        demo: !args.no_demo,
        max_push_bytes: socket.max_message_size,
        socket,
        security: security.clone(),
    };
    hub.set_build(cli::VERSION);
    if let Err(e) = hub.start_control().await {
        // The broker keeps the wish and joins once it can; until then the server API's
        // cluster-wide commands miss this node.
        tracing::warn!(error = %e, "could not join the control channel yet");
    }
    let mut gateway = Gateway::new(hub.clone(), store.clone(), sessions, config);
    gateway = gateway
        .with_metrics(Arc::new(move || prometheus.render()))
        .with_metrics_key(ApiKeys::new(&args.metrics_keys));
    if metrics_listener.is_some() {
        gateway = gateway.with_metrics_apart();
    }
    if let Some(limiter) = rate_limiter {
        gateway = gateway.with_rate_limiter(limiter);
    }
    if let Some(hooks) = hooks {
        gateway = gateway.with_hooks(Arc::new(hooks));
    }
    let mut presence_prefixes = args.presence_channels.clone();
    // Pusher's `presence-` channels are presence channels wherever Pusher is spoken, in
    // each app's namespace, and so are its signed-in users' channels, whose presence is
    // who is online (watchlists).
    for app in pusher.iter() {
        for kind in [
            "presence-",
            sessionhub::protocol::pusher_user::USER_CHANNEL_PREFIX,
        ] {
            let prefix = format!("{}{kind}", app.namespace());
            if !presence_prefixes
                .iter()
                .any(|p| prefix.starts_with(p.as_str()))
            {
                presence_prefixes.push(prefix);
            }
        }
    }
    gateway = gateway.with_pusher(pusher);
    let channels = PresenceChannels::new(presence_prefixes);
    // Occupancy is counted by the presence backend, as a presence channel's users are.
    let occupancy = webhooks
        .as_ref()
        .is_some_and(|w| w.wants(EventKind::Occupied) || w.wants(EventKind::Vacated));
    if !channels.is_empty() || occupancy {
        let backend: Arc<dyn Presence> = match &presence {
            Some(presence) => presence.clone(),
            None => Arc::new(LocalPresence::new(&hub)),
        };
        hub.track_presence(channels, backend);
    }
    if occupancy {
        hub.track_occupancy();
    }
    let stop_presence = CancellationToken::new();
    let stop_webhooks = CancellationToken::new();
    let mut delivery = None;
    if let Some(webhooks) = webhooks {
        hub.set_webhooks(webhooks.clone());
        if presence.is_none() {
            // One node: its own users' first and last connections are the cluster's.
            webhooks
                .clone()
                .watch_local_users(hub.clone(), stop_webhooks.clone());
        }
        delivery = Some(webhooks.spawn_delivery(stop_webhooks.clone()));
    }
    let mut heartbeat = None;
    if let Some(presence) = presence {
        heartbeat = Some(
            presence
                .clone()
                .spawn_heartbeat(hub.clone(), stop_presence.clone()),
        );
        gateway = gateway.with_presence(presence);
    }
    let app = gateway.router();

    if let Some(metrics_listener) = metrics_listener {
        let addr = metrics_listener.local_addr()?;
        tracing::info!("metrics on http://{addr}/metrics only");
        let metrics = gateway.metrics_router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics_listener, metrics).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    // Before "listening": a SIGHUP that came earlier would end the process.
    reload::on_hangup(gateway.clone(), security, settings, log_filter)?;

    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(node = %node_id, threads, version = cli::VERSION, "sessionhub listening on http://{local}");
    // Tests and scripts wait for this line.
    println!("listening on {local}");

    let stopping = gateway.clone();
    let drain_window = Duration::from_secs_f64(args.drain_window);
    // Its connections carry a wire, which deliveries to a socket may be written to straight
    // from the delivering task (`sessionhub::wire`).
    sessionhub::wire::serve(sessionhub::wire::Listener::new(listener), app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!(
                window = ?drain_window,
                "shutting down: no new connections; closing the open ones over the drain window (1012)"
            );
            stopping.drain();
        })
        .await
        .context("serving")?;

    // Every connection closes at its turn within the drain window; then give the last ones
    // the moment it takes to send their close.
    let deadline = tokio::time::Instant::now() + drain_window + SHUTDOWN_BUDGET / 2;
    while hub.online().online > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Withdrawn only now: while the drain ran, its users were still connected here (and
    // those who reconnected elsewhere meanwhile never leave the presence channels).
    stop_presence.cancel();
    if let Some(heartbeat) = heartbeat {
        // Withdraws this node from the online count; bounded so a dead Redis cannot hold
        // the stop.
        let _ = tokio::time::timeout(Duration::from_secs(2), heartbeat).await;
    }
    // After the presence withdrawal, which queues its users' offline events: they are
    // delivered by whichever node runs next (the queue keeps them).
    stop_webhooks.cancel();
    if let Some(delivery) = delivery {
        let _ = tokio::time::timeout(Duration::from_secs(1), delivery).await;
    }
    tokio::time::timeout(SHUTDOWN_BUDGET / 2, store.persist())
        .await
        .context("persisting sessions took too long")?
        .context("persisting sessions")?;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP hooks the flags name, if any.
fn hooks(args: &Serve) -> anyhow::Result<Option<HttpHooks>> {
    let forward_headers = args
        .proxy_forward_headers
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("--proxy-forward-headers: {name:?} is not a header name"))
        })
        .collect::<anyhow::Result<_>>()?;
    let config = ProxyConfig {
        connect_url: args.proxy_connect_url.clone(),
        subscribe_url: args.proxy_subscribe_url.clone(),
        publish_url: args.proxy_publish_url.clone(),
        refresh_url: args.proxy_refresh_url.clone(),
        forward_headers,
        timeout: Duration::from_secs_f64(args.proxy_timeout),
        on_failure: args
            .proxy_on_failure
            .parse::<FailurePolicy>()
            .map_err(anyhow::Error::msg)?,
    };
    let hooks = HttpHooks::new(config)?;
    Ok((!hooks.is_empty()).then_some(hooks))
}

/// Installs the Prometheus recorder behind the `metrics` facade. Buckets matter: without
/// them histograms render as summaries, which cannot be aggregated across nodes.
fn prometheus() -> anyhow::Result<PrometheusHandle> {
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&seconds)
        .context("configuring metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    sessionhub::telemetry::describe();
    Ok(handle)
}

/// Checks the flags for a deployment that would expose users by accident, and builds the
/// security settings. Secure by default: off loopback, sockets need a session and the APIs a
/// key, unless the operator says `--insecure`.
fn security(args: &Serve) -> anyhow::Result<Security> {
    let loopback = args.listen.ip().is_loopback();
    let ws_auth: WsAuth = match &args.ws_auth {
        Some(mode) => mode.parse()?,
        None if loopback => WsAuth::Open,
        None => WsAuth::Session,
    };
    if ws_auth == WsAuth::Open && !loopback && !args.insecure {
        bail!(
            "refusing to listen on {} with --ws-auth open: that address is reachable from other \
             machines and anyone could open any user's socket and read their messages. Use \
             --ws-auth session or token, listen on a loopback address (127.0.0.1), or pass \
             --insecure (SESSIONHUB_INSECURE=true) if a firewall or proxy guards the port.",
            args.listen
        );
    }
    let api_keys = api_keys(args, ws_auth)?;
    let mut secrets = args.token_secrets.clone();
    secrets.extend(read_lines(args.token_secret_file.as_deref())?);
    let public_keys = args
        .token_public_keys
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let tokens = TokenVerifier::new(&TokenConfig {
        secrets,
        public_keys,
        jwks: args.token_jwks.clone(),
        issuers: args.token_issuers.clone(),
        audiences: args.token_audiences.clone(),
        leeway: Duration::from_secs(args.token_leeway),
        jwks_min_refetch: Duration::from_secs(args.token_jwks_min_refetch),
    })
    .context("--token-public-key / --token-jwks")?;
    if ws_auth == WsAuth::Token && tokens.is_none() {
        bail!(
            "--ws-auth token needs a key: --token-secret (or SESSIONHUB_TOKEN_SECRET, \
             --token-secret-file), --token-public-key or --token-jwks"
        );
    }
    let private_channels = PrivateChannels::new(&args.private_channels);
    if !args.private_channels.is_empty() && tokens.is_none() {
        bail!(
            "--private-channels needs a key to verify subscribe tokens: --token-secret, \
             --token-public-key or --token-jwks"
        );
    }
    Ok(Security {
        ws_auth,
        api_keys,
        tokens,
        origins: OriginPolicy::from_list(&args.allowed_origins),
        channels: ChannelRules::new(args.channel_rules.clone()),
        private_channels,
        limits: limits(args),
    })
}

/// The API keys of `--api-key` and `--api-key-file`; none only where that is safe.
fn api_keys(args: &Serve, ws_auth: WsAuth) -> anyhow::Result<ApiKeys> {
    let loopback = args.listen.ip().is_loopback();
    let mut keys = args.api_keys.clone();
    keys.extend(read_lines(args.api_key_file.as_deref())?);
    let api_keys = ApiKeys::new(&keys);
    if api_keys.is_empty() && !(loopback && ws_auth == WsAuth::Open) && !args.insecure {
        bail!(
            "refusing to start on {} without an API key: the push and admin APIs (/socket/*, \
             /api/*) would let anyone send to any user. Pass --api-key <key> (or \
             SESSIONHUB_API_KEY, --api-key-file), or --insecure if something else guards them.",
            args.listen
        );
    }
    Ok(api_keys)
}

fn limits(args: &Serve) -> Limits {
    Limits {
        connects_per_ip: Some(args.max_connections_per_ip),
        connects_per_user: args.max_connects_per_user,
        publishes_per_user: args.max_publishes_per_user,
        publishes_per_ip: args.max_publishes_per_ip,
        logins_per_ip: args.max_logins_per_ip,
        logins_per_user: args.max_logins_per_user,
        messages_per_sec: args.max_messages_per_sec,
        connections_per_user: args.max_connections_per_user,
        connections_per_node: args.max_connections,
    }
}

/// Non-empty, trimmed lines of a secrets file.
fn read_lines(path: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// The webhooks: to `--webhook-url` in sessionhub's format, and to each Pusher app's
/// webhook URL in Pusher's; none if neither is set. Each target has its own queue, in Redis
/// when there is one (one queue per target for the cluster), else in a redb file under the
/// data directory.
fn webhooks(
    args: &Serve,
    redis: Option<&RedisConfig>,
    node_id: &str,
    pusher: &PusherApps,
) -> anyhow::Result<Option<Arc<Webhooks>>> {
    let timeout = Duration::from_secs_f64(args.webhook_timeout);
    let config = |url: &str| -> anyhow::Result<WebhookConfig> {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            bail!("a webhook URL must be an http:// or https:// URL, not {url:?}");
        }
        Ok(WebhookConfig {
            timeout,
            max_attempts: args.webhook_max_attempts,
            backoff: Duration::from_secs_f64(args.webhook_backoff),
            max_backoff: Duration::from_secs_f64(args.webhook_max_backoff),
            ..WebhookConfig::new(url, "")
        })
    };
    let bound = args.webhook_queue_size as usize;
    // A claim outlives the deliveries of one batch (concurrent, each bounded by the
    // timeout) with room to spare, so only a dead node's events change hands.
    let lease = timeout * 2 + Duration::from_secs(5);
    let queue = |redis: Option<RedisConfig>, file: &str| -> anyhow::Result<Arc<dyn Queue>> {
        Ok(match redis {
            Some(redis) => Arc::new(
                RedisQueue::lazy(&redis, node_id, bound, lease)
                    .context("setting up the webhook queue in Redis")?,
            ),
            None => {
                std::fs::create_dir_all(&args.data_dir).with_context(|| {
                    format!("creating the data directory {}", args.data_dir.display())
                })?;
                let path = args.data_dir.join(file);
                Arc::new(
                    LocalQueue::open(&path, bound)
                        .with_context(|| format!("opening the webhook queue {}", path.display()))?,
                )
            }
        })
    };
    let mut targets = Vec::new();
    if let Some(url) = &args.webhook_url {
        if args.webhook_secret.iter().all(|s| s.is_empty()) {
            bail!("--webhook-url needs --webhook-secret");
        }
        let config = WebhookConfig {
            secrets: args.webhook_secret.clone(),
            events: if args.webhook_events.is_empty() {
                EventSet::all()
            } else {
                args.webhook_events.iter().copied().collect()
            },
            grace: args
                .webhook_grace
                .map_or(Duration::ZERO, Duration::from_secs_f64),
            ..config(url).context("--webhook-url")?
        };
        targets.push((config, queue(redis.cloned(), "webhooks.redb")?));
    }
    let mut apps: Vec<_> = pusher.iter().collect();
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    for app in apps {
        let Some(url) = &app.webhook_url else {
            continue;
        };
        let config = WebhookConfig {
            secrets: Vec::new(),
            events: [
                EventKind::Occupied,
                EventKind::Vacated,
                EventKind::Join,
                EventKind::Leave,
                EventKind::Message,
                EventKind::CacheMiss,
            ]
            .into_iter()
            .collect(),
            format: Format::Pusher(app.clone()),
            grace: sessionhub::pusher::WEBHOOK_GRACE,
            ..config(url).context("--pusher-webhook")?
        };
        // Its own queue: each target acknowledges its own deliveries.
        let redis = redis.map(|r| {
            r.clone()
                .prefix(&format!("{}pusher:{}:", args.redis_prefix, app.id))
        });
        let file = format!("pusher-webhooks-{}.redb", app.id);
        targets.push((config, queue(redis, &file)?));
    }
    let mut targets = targets.into_iter();
    let Some((config, queue)) = targets.next() else {
        return Ok(None);
    };
    let webhooks = targets.fold(Webhooks::new(config, queue, node_id), |w, (c, q)| {
        w.with_target(c, q)
    });
    Ok(Some(Arc::new(webhooks)))
}

/// The parts that differ between the embedded default and cluster mode.
struct Backends {
    store: Arc<dyn SessionStore>,
    hub: Hub,
    presence: Option<Arc<RedisPresence>>,
    /// Buckets of the cluster-wide rate limits; none: each node's own.
    rate_limiter: Option<Arc<dyn RateLimiter>>,
}

/// The hub, on NATS if `nats` is set, otherwise on the broker `otherwise` starts.
fn hub(
    node_id: &str,
    nats: Option<NatsBrokerConfig>,
    otherwise: impl FnOnce(Arc<dyn Deliver>) -> Arc<dyn Broker>,
) -> Hub {
    match nats {
        Some(nats) => Hub::with_broker(node_id, |sink| nats.start(sink)),
        None => Hub::with_broker(node_id, otherwise),
    }
}

/// One node, nothing else installed: sessions in memory journaled under `data_dir`. With
/// `nats`, pushes cross nodes through NATS, but sessions and the online count stay this
/// node's own.
fn embedded(
    data_dir: &Path,
    node_id: &str,
    history: HistoryConfig,
    nats: Option<NatsBrokerConfig>,
) -> anyhow::Result<Backends> {
    if nats.is_some() {
        tracing::warn!(
            "pushes go through NATS, but sessions stay in this node's embedded store and \
             /api/online counts this node only: add --redis to share them between nodes"
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let journal = data_dir.join("sessions.redb");
    let store = MemoryStore::open(&journal, Duration::from_secs(1))
        .with_context(|| format!("opening the session journal {}", journal.display()))?;
    Ok(Backends {
        store: Arc::new(Instrumented::new(store)),
        hub: hub(node_id, nats, |sink| {
            Arc::new(LocalBroker::with_history(sink, history))
        }),
        presence: None,
        rate_limiter: None,
    })
}

/// Many nodes sharing one Redis for sessions, pushes and presence; with `nats`, pushes go
/// through NATS instead.
fn cluster(
    redis: RedisConfig,
    node_id: &str,
    history: HistoryConfig,
    nats: Option<NatsBrokerConfig>,
) -> anyhow::Result<Backends> {
    let mode = redis.mode();
    // Lazily: a node started while Redis is down comes up unready (/readyz 503) and serves
    // as soon as Redis answers, rather than exiting and leaving that to a supervisor.
    let store = RedisStore::lazy(&redis).context("setting up the Redis session store")?;
    let presence = RedisPresence::lazy(&redis).context("setting up presence in Redis")?;
    let limits = RedisRateLimiter::lazy(&redis).context("setting up rate limits in Redis")?;
    let pushes = if nats.is_some() { "NATS" } else { "Redis" };
    let broker = RedisBrokerConfig::from(redis).history(history);
    let hub = hub(node_id, nats, |sink| broker.start(sink));
    tracing::info!(
        ?mode,
        pushes,
        "cluster mode: sessions and presence in Redis"
    );
    Ok(Backends {
        store: Arc::new(Instrumented::new(store)),
        hub,
        presence: Some(Arc::new(presence)),
        rate_limiter: Some(Arc::new(FallbackRateLimiter::new(Arc::new(limits)))),
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The Pusher apps of `--pusher-app` and the config file; those without a webhook URL of
/// their own take `--pusher-webhook`'s (and `--pusher-encryption-master-key`'s), and
/// `--pusher-client-events` enables client events for all of them.
fn pusher_apps(args: &Serve) -> anyhow::Result<PusherApps> {
    let apps = args.pusher_apps.iter().cloned().map(|mut app| {
        if app.webhook_url.is_none() {
            app.webhook_url.clone_from(&args.pusher_webhook);
        }
        if app.encryption_master_key.is_none() {
            app.encryption_master_key
                .clone_from(&args.pusher_encryption_master_key);
        }
        app.client_events |= args.pusher_client_events;
        app
    });
    Ok(PusherApps::new(apps)?)
}
