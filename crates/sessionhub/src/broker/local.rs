use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tungstenite::Utf8Bytes;

use super::{
    Broker, Deliver, HistoryConfig, HistoryPage, HistoryQuery, Publication, PublishOptions,
    Receipt, Recovery, StreamPosition, new_epoch,
};
use crate::error::BrokerError;

/// The broker of a single node: a publish is a direct call into the local sink, and
/// history lives in memory (a restart starts every channel in a new epoch, which clients
/// see as `recovered: false`).
pub struct LocalBroker {
    sink: Arc<dyn Deliver>,
    config: HistoryConfig,
    channels: Mutex<HashMap<String, History>>,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct History {
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<(Publication, Instant)>,
    /// Idempotency key -> (offset, when first seen).
    keys: HashMap<String, (u64, Instant)>,
    used: Instant,
}

impl History {
    fn new() -> Self {
        Self {
            epoch: new_epoch().into(),
            top: 0,
            entries: VecDeque::new(),
            keys: HashMap::new(),
            used: Instant::now(),
        }
    }

    fn prune(&mut self, config: &HistoryConfig) {
        let now = Instant::now();
        while self.entries.len() > config.size
            || self
                .entries
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) > config.ttl)
        {
            self.entries.pop_front();
        }
        self.keys
            .retain(|_, (_, at)| now.duration_since(*at) <= config.idempotency_window);
    }
}

impl LocalBroker {
    /// A broker that delivers every publish to `sink`, with the default history.
    pub fn new(sink: Arc<dyn Deliver>) -> Self {
        Self::with_history(sink, HistoryConfig::default())
    }

    /// A broker that delivers every publish to `sink` and keeps history as `config` says.
    pub fn with_history(sink: Arc<dyn Deliver>, config: HistoryConfig) -> Self {
        Self {
            sink,
            config,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Delivers a publication kept out of history: offset 0, epoch "".
    fn deliver_unkept(&self, channel: &str, data: Utf8Bytes) -> Receipt {
        let publication = Publication {
            offset: 0,
            epoch: "".into(),
            data,
        };
        let connections = self.sink.deliver(channel, publication);
        Receipt {
            nodes: usize::from(connections > 0),
            connections: Some(connections),
            offset: 0,
            epoch: "".into(),
            duplicate: false,
        }
    }

    /// Runs `f` on the channel's history, creating it (or a new epoch, if the old one
    /// outlived its meta TTL) first.
    fn with_channel<T>(&self, channel: &str, f: impl FnOnce(&mut History) -> T) -> T {
        let mut channels = self.channels.lock().unwrap();
        let now = Instant::now();
        if channels.len() > 1024 {
            // Forget channels idle past their meta TTL, as Redis would expire them.
            let meta_ttl = self.config.meta_ttl;
            channels.retain(|_, h| now.duration_since(h.used) <= meta_ttl);
        }
        let history = channels
            .entry(channel.to_owned())
            .or_insert_with(History::new);
        if now.duration_since(history.used) > self.config.meta_ttl {
            *history = History::new();
        }
        history.used = now;
        history.prune(&self.config);
        f(history)
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(
        &self,
        channel: &str,
        data: Utf8Bytes,
        options: &PublishOptions,
    ) -> Result<Receipt, BrokerError> {
        if !options.history || !self.config.keeps_history() {
            let Some(key) = &options.idempotency_key else {
                return Ok(self.deliver_unkept(channel, data));
            };
            // Kept out of history, the key is still remembered: a retry publishes once.
            return Ok(self.with_channel(channel, |history| {
                if history.keys.contains_key(key) {
                    return Receipt {
                        nodes: 0,
                        connections: Some(0),
                        offset: 0,
                        epoch: "".into(),
                        duplicate: true,
                    };
                }
                history.keys.insert(key.clone(), (0, Instant::now()));
                self.deliver_unkept(channel, data)
            }));
        }
        // Delivering under the channel's lock keeps live publications in offset order.
        Ok(self.with_channel(channel, |history| {
            if let Some(key) = &options.idempotency_key
                && let Some((offset, _)) = history.keys.get(key)
            {
                return Receipt {
                    nodes: 0,
                    connections: Some(0),
                    offset: *offset,
                    epoch: history.epoch.clone(),
                    duplicate: true,
                };
            }
            history.top += 1;
            let publication = Publication {
                offset: history.top,
                epoch: history.epoch.clone(),
                data,
            };
            history
                .entries
                .push_back((publication.clone(), Instant::now()));
            history.prune(&self.config);
            if let Some(key) = &options.idempotency_key {
                history
                    .keys
                    .insert(key.clone(), (history.top, Instant::now()));
            }
            let connections = self.sink.deliver(channel, publication);
            Receipt {
                nodes: usize::from(connections > 0),
                connections: Some(connections),
                offset: history.top,
                epoch: history.epoch.clone(),
                duplicate: false,
            }
        }))
    }

    async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError> {
        if !self.config.keeps_history() {
            return Ok(Recovery::without_history(since));
        }
        Ok(self.with_channel(channel, |history| {
            let after = since.map_or(u64::MAX, |s| s.offset);
            let entries = history
                .entries
                .iter()
                .filter(|(p, _)| p.offset > after)
                .map(|(p, _)| p.clone())
                .collect();
            Recovery::decide(history.epoch.clone(), history.top, since, entries)
        }))
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        if !self.config.keeps_history() {
            return Ok(HistoryPage::without_history());
        }
        Ok(self.with_channel(channel, |history| HistoryPage {
            epoch: history.epoch.clone(),
            offset: history.top,
            publications: query.select(
                &history.epoch,
                history.entries.iter().map(|(p, _)| p.clone()),
            ),
        }))
    }

    // The sink already knows which channels have connections; there is nothing to join.
    fn subscribe(&self, _channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, _channel: &str) {}
}
