//! Every metric sessionhub records, with its help text, in one list: [`describe`] registers
//! them all when the server starts, at zero, so that `/metrics` exports every name from the
//! first scrape (a dashboard then shows 0, not "no data", and a typo in a dashboard query is
//! caught by a test rather than by an operator at 3 a.m.).
//!
//! The code records them where they happen, by name; a test here fails when a name recorded
//! anywhere in the crate is missing from [`METRICS`].

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value read now.
    Gauge,
    /// A distribution, exported as `_bucket`, `_sum` and `_count`.
    Histogram,
}

/// Every metric: name, kind, help text (labels in brackets).
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "sessionhub_connections",
        Kind::Gauge,
        "Open connections on this node",
    ),
    (
        "sessionhub_users",
        Kind::Gauge,
        "Distinct users with an open connection on this node",
    ),
    (
        "sessionhub_broker_up",
        Kind::Gauge,
        "1 when the broker can carry messages",
    ),
    (
        "sessionhub_store_up",
        Kind::Gauge,
        "1 when the session store answers",
    ),
    (
        "sessionhub_messages_in_total",
        Kind::Counter,
        "Publishes handled [outcome: ok, error]",
    ),
    (
        "sessionhub_messages_out_total",
        Kind::Counter,
        "Messages delivered to local connections (written or queued)",
    ),
    (
        "sessionhub_messages_direct_total",
        Kind::Counter,
        "Of those, written straight to the socket by the delivering task",
    ),
    (
        "sessionhub_direct_writes_split_total",
        Kind::Counter,
        "Direct writes the kernel took only part of (the socket's task wrote the rest)",
    ),
    (
        "sessionhub_client_frames_total",
        Kind::Counter,
        "Text and binary frames received from clients",
    ),
    (
        "sessionhub_disconnects_total",
        Kind::Counter,
        "Connections closed [reason]",
    ),
    (
        "sessionhub_token_refreshes_total",
        Kind::Counter,
        "Token refreshes on live connections [outcome: refreshed, or the refusal's code]",
    ),
    (
        "sessionhub_subscribe_tokens_total",
        Kind::Counter,
        "Subscribe tokens checked for private channels [outcome: accepted, or the refusal's code]",
    ),
    (
        "sessionhub_slow_consumers_total",
        Kind::Counter,
        "Connections closed because their queue was full",
    ),
    (
        "sessionhub_recoveries_total",
        Kind::Counter,
        "Subscribes that asked to recover [outcome: recovered, not_recovered]",
    ),
    (
        "sessionhub_broker_reconnects_total",
        Kind::Counter,
        "Times the broker link came back after a loss (clients were told to recover)",
    ),
    (
        "sessionhub_rate_limited_total",
        Kind::Counter,
        "Connects, client publishes and logins refused by a rate limit [limit: connect, publish, login]",
    ),
    (
        "sessionhub_rate_limit_fallbacks_total",
        Kind::Counter,
        "Rate limit takes made on the node alone because Redis did not answer",
    ),
    (
        "sessionhub_errors_total",
        Kind::Counter,
        "Error answers to HTTP requests [code]",
    ),
    (
        "sessionhub_session_reads_total",
        Kind::Counter,
        "Session loads",
    ),
    (
        "sessionhub_session_writes_total",
        Kind::Counter,
        "Session writes",
    ),
    (
        "sessionhub_session_creates_total",
        Kind::Counter,
        "Sessions created",
    ),
    (
        "sessionhub_session_invalidations_total",
        Kind::Counter,
        "Sessions ended",
    ),
    (
        "sessionhub_store_errors_total",
        Kind::Counter,
        "Failed session store calls [op]",
    ),
    (
        "sessionhub_store_duration_seconds",
        Kind::Histogram,
        "Session store call latency [op]",
    ),
    (
        "sessionhub_publish_duration_seconds",
        Kind::Histogram,
        "Publish latency through the broker",
    ),
    (
        "sessionhub_delivery_latency_seconds",
        Kind::Histogram,
        "From a message reaching this node to its frame being written",
    ),
    (
        "sessionhub_proxy_requests_total",
        Kind::Counter,
        "HTTP hook calls [hook: connect, subscribe, publish, refresh; outcome: allow, deny, timeout, error]",
    ),
    (
        "sessionhub_proxy_duration_seconds",
        Kind::Histogram,
        "HTTP hook call latency, answer included [hook]",
    ),
    (
        "sessionhub_webhooks_delivered_total",
        Kind::Counter,
        "Webhook events the receiver accepted (2xx)",
    ),
    (
        "sessionhub_webhooks_retried_total",
        Kind::Counter,
        "Webhook deliveries that failed (5xx, timeout, refused) and were queued for a retry",
    ),
    (
        "sessionhub_webhooks_dropped_total",
        Kind::Counter,
        "Webhook events given up [reason: queue_full, queue_error, attempts, undecodable]",
    ),
    (
        "sessionhub_webhooks_cancelled_total",
        Kind::Counter,
        "Held webhook events (vacated, leave) and their comebacks not sent: a comeback within the grace, two per pair",
    ),
    (
        "sessionhub_webhook_delivery_seconds",
        Kind::Histogram,
        "From a webhook event happening to its receiver accepting it, retries and grace included",
    ),
];

/// Describes every metric and registers it at zero with the installed recorder.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(name, help);
                metrics::counter!(name).increment(0);
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, help);
                metrics::gauge!(name).increment(0.0);
            }
            Kind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
                let _ = metrics::histogram!(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::METRICS;

    /// Every `"sessionhub_…"` string literal in the crate's sources, outside this file.
    fn recorded(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                recorded(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("telemetry.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("\"sessionhub_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if piece[name.len()..].starts_with('"') {
                        found.push(format!("sessionhub_{name}"));
                    }
                }
            }
        }
    }

    #[test]
    fn every_recorded_metric_is_listed() {
        let mut found = Vec::new();
        recorded(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.len() >= 10,
            "the scan found the metric names: {found:?}"
        );
        for name in found {
            assert!(
                METRICS.iter().any(|(n, _, _)| *n == name),
                "{name} is recorded but not listed in telemetry::METRICS"
            );
        }
    }
}
