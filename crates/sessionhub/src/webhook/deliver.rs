//! The delivery task: claims events, POSTs each signed, acks what the receiver took and
//! gives the rest back with backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use futures_util::future::join_all;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_util::sync::CancellationToken;

use super::{Claimed, Target, Webhooks};

/// Most events one claim takes, delivered concurrently.
const BATCH: usize = 16;
/// How long the task waits before looking again when the queue had nothing due.
const IDLE: Duration = Duration::from_millis(200);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> HttpClient {
    crate::http_client::pooled()
}

/// The delay before retry number `attempt` (1 for the first): `base` doubled per failure,
/// at most `max`, with "equal jitter" (half fixed, half random) so that events that
/// failed together do not all come back together.
pub(super) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let full = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    let random = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX);
    full / 2 + full.mul_f64(random / 2.0)
}

impl Webhooks {
    /// Delivers queued events until `stop` is cancelled, each target's on its own. Every
    /// node runs one; a queue hands each event to one of them.
    pub fn spawn_delivery(self: Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let client = client();
            join_all(
                self.targets
                    .iter()
                    .map(|target| deliver_to(target, &client, &stop)),
            )
            .await;
        })
    }
}

/// Delivers `target`'s queued events until `stop` is cancelled.
async fn deliver_to(target: &Target, client: &HttpClient, stop: &CancellationToken) {
    loop {
        let claimed = tokio::select! {
            () = stop.cancelled() => return,
            claimed = target.queue.claim(BATCH) => claimed,
        };
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot claim events; retrying");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(IDLE) => continue,
            }
        }
        join_all(claimed.iter().map(|c| target.deliver(client, c))).await;
    }
}

impl Target {
    /// POSTs one event; acks it if the receiver took it, else retries it later or, past the
    /// last attempt, drops it.
    async fn deliver(&self, client: &HttpClient, claimed: &Claimed) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let Some(post) = self
            .config
            .format
            .request(&claimed.event, &self.config.secrets, now)
        else {
            // Queued before a change of format: nothing to send it as.
            if let Err(e) = self.queue.ack(claimed).await {
                tracing::warn!(id = %claimed.event.id, error = %e, "webhooks: queue not updated");
            }
            return;
        };
        let mut request =
            axum::http::Request::post(&self.config.url).header("content-type", "application/json");
        for (name, value) in post.headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::from(post.body)));
        let outcome = match request {
            Err(e) => Err(format!("invalid request: {e}")),
            Ok(request) => {
                match tokio::time::timeout(self.config.timeout, client.request(request)).await {
                    Err(_) => Err("timed out".to_owned()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(response)) if response.status().is_success() => Ok(()),
                    Ok(Ok(response)) => Err(format!("status {}", response.status())),
                }
            }
        };
        let id = &claimed.event.id;
        let done = match outcome {
            Ok(()) => {
                metrics::counter!("sessionhub_webhooks_delivered_total").increment(1);
                let age = crate::store::now_ms().saturating_sub(claimed.event.time);
                metrics::histogram!("sessionhub_webhook_delivery_seconds")
                    .record(age as f64 / 1000.0);
                self.queue.ack(claimed).await
            }
            Err(why) if claimed.attempts + 1 >= self.config.max_attempts => {
                tracing::warn!(%id, kind = %claimed.event.kind, error = why, attempts = claimed.attempts + 1, "webhook not delivered; giving up");
                metrics::counter!("sessionhub_webhooks_dropped_total", "reason" => "attempts")
                    .increment(1);
                self.queue.ack(claimed).await
            }
            Err(why) => {
                let delay = backoff(
                    claimed.attempts + 1,
                    self.config.backoff,
                    self.config.max_backoff,
                );
                tracing::info!(%id, kind = %claimed.event.kind, error = why, ?delay, "webhook not delivered; retrying");
                metrics::counter!("sessionhub_webhooks_retried_total").increment(1);
                self.queue.retry(claimed, delay).await
            }
        };
        if let Err(e) = done {
            // The claim's lease runs out and the event is claimed again: delivered twice at
            // worst, never lost.
            tracing::warn!(%id, error = %e, "webhooks: queue not updated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..=4u32 {
            let full = base * (1 << (attempt - 1));
            for _ in 0..50 {
                let d = backoff(attempt, base, max);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        for _ in 0..50 {
            let d = backoff(60, base, max);
            assert!(d >= max / 2 && d <= max, "{d:?}");
        }
    }
}
