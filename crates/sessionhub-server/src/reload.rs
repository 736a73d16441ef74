//! Reloading the configuration on SIGHUP (`systemctl reload`): the settings are read again
//! as at start (the same flags and environment, the config file as it is now), and what can
//! change without dropping a connection changes: API keys, allowed origins, limits, the log
//! filter. A file that does not parse or holds a bad value changes nothing and says why in
//! the log; any other setting that differs is named as needing a restart.

use anyhow::Context;
use sessionhub::auth::OriginPolicy;
use sessionhub::gateway::{Gateway, Security};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::cli::{Cli, Command, Serve, Settings};

/// Changes the log filter of the running process.
pub(crate) type LogFilter = reload::Handle<EnvFilter, Registry>;

/// Settings a reload applies (by their config file names); any other needs a restart.
const LIVE: &[&str] = &[
    "api-key",
    "api-key-file",
    "allowed-origins",
    "max-connections-per-ip",
    "max-connects-per-user",
    "max-publishes-per-user",
    "max-publishes-per-ip",
    "max-logins-per-ip",
    "max-logins-per-user",
    "max-messages-per-sec",
    "max-connections-per-user",
    "max-connections",
    "log-level",
];

/// Logs to stderr, pretty or JSON, through a filter a reload can change.
pub(crate) fn init_logs(serve: &Serve) -> anyhow::Result<LogFilter> {
    let (filter, handle) = reload::Layer::new(log_filter(serve)?);
    let logs = tracing_subscriber::registry().with(filter);
    let format = fmt::layer().with_writer(std::io::stderr);
    match serve.log_format.as_str() {
        "json" => logs.with(format.json().flatten_event(true)).init(),
        _ => logs.with(format).init(),
    }
    Ok(handle)
}

/// `--log-level`, else RUST_LOG, else info.
fn log_filter(serve: &Serve) -> anyhow::Result<EnvFilter> {
    match &serve.log_level {
        Some(level) => EnvFilter::try_new(level).with_context(|| format!("log-level {level:?}")),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())),
    }
}

/// Reloads on every SIGHUP from now on. `security` and `settings` are what the node
/// started with.
#[cfg(unix)]
pub(crate) fn on_hangup(
    gateway: Gateway,
    security: Security,
    settings: Settings,
    logs: LogFilter,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        let mut running = (security, settings);
        while hangups.recv().await.is_some() {
            match reload(&gateway, &running.0, &running.1, &logs) {
                Ok(next) => running = next,
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "config reload failed: nothing changed, the running config stays"
                ),
            }
        }
    });
    Ok(())
}

/// No SIGHUP off Unix: nothing to reload on.
#[cfg(not(unix))]
pub(crate) fn on_hangup(_: Gateway, _: Security, _: Settings, _: LogFilter) -> anyhow::Result<()> {
    Ok(())
}

/// Reads the settings again and applies what may change live, all or nothing: the security
/// settings and settings now in force.
#[cfg_attr(not(unix), allow(dead_code))]
fn reload(
    gateway: &Gateway,
    running: &Security,
    before: &Settings,
    logs: &LogFilter,
) -> anyhow::Result<(Security, Settings)> {
    let (cli, mut after) = Cli::reload()?;
    let Command::Serve(serve) = cli.command;
    // Everything is checked before anything changes.
    let filter = log_filter(&serve)?;
    let security = Security {
        api_keys: crate::api_keys(&serve, running.ws_auth)?,
        origins: OriginPolicy::from_list(&serve.allowed_origins),
        limits: crate::limits(&serve),
        ..running.clone()
    };
    logs.reload(filter).context("changing the log filter")?;
    gateway.reload(security.clone());

    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let changed: Vec<String> = names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .cloned()
        .collect();
    let (live, restart): (Vec<String>, Vec<String>) = changed
        .into_iter()
        .partition(|name| LIVE.contains(&name.as_str()));
    if !restart.is_empty() {
        tracing::warn!(
            settings = restart.join(", "),
            "config reload: these settings changed but need a restart; they keep their running values"
        );
        // Compared against what runs, so that the next reload names them again.
        for name in &restart {
            match before.get(name) {
                Some(value) => after.insert(name.clone(), value.clone()),
                None => after.remove(name),
            };
        }
    }
    tracing::info!(changed = live.join(", "), "config reloaded");
    Ok((security, after))
}
