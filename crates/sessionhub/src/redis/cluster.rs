//! Which Redis Cluster primary owns which hash slot, as the broker needs to know it.
//!
//! The session store and presence leave routing to redis-rs' cluster client. The broker
//! cannot: redis-rs resubscribes sharded channels in one `SSUBSCRIBE` routed by the first
//! channel (CROSSSLOT for channels in several slots, swallowed), and only forwards the
//! `sunsubscribe` a node sends when a slot leaves it (see `/docs/cluster.md`). So the broker
//! keeps its own connections, one per primary, and this slot map to pick them: read with
//! `CLUSTER SLOTS` from any node that answers (known primaries first, then the seeds), and
//! read again when a reply says it is out of date (`MOVED`, a primary gone) or a periodic
//! check finds it changed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ::redis::aio::{AsyncPushSender, MultiplexedConnection};
use ::redis::{Client, ConnectionInfo, ErrorKind, ProtocolVersion, RedisError, RedisResult, Value};

use super::{RESOLVE_TIMEOUT, at, bounded, timed_out};

/// Whether `error` is a cluster node refusing a command it did not run because the slot
/// is not (or not wholly) its own: the slot map is out of date, or a slot is moving.
/// The command may be sent again, to the owner the refreshed map names.
pub(crate) fn is_redirect(error: &RedisError) -> bool {
    matches!(
        error.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN")
    )
}

/// The number of hash slots.
const SLOTS: u16 = 16384;

/// The hash slot of `key`, as Redis computes it: CRC16 of its hash tag (the text between
/// the first `{` and the first `}` after it, if not empty) or of the whole key.
pub(crate) fn slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// A primary, as `host:port`.
pub(crate) type Node = Arc<str>;

/// Who owns which slots, at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// `(first slot, last slot, primary)`, ascending.
    ranges: Vec<(u16, u16, Node)>,
}

impl SlotMap {
    /// The primary that owns `slot`, if any does.
    pub(crate) fn owner(&self, slot: u16) -> Option<&Node> {
        let i = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges
            .get(i)
            .filter(|(first, _, _)| *first <= slot)
            .map(|(_, _, node)| node)
    }

    /// Every primary that owns a slot, each once.
    pub(crate) fn primaries(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self.ranges.iter().map(|(_, _, n)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Reads a `CLUSTER SLOTS` reply; `asked` stands in for a node that does not know its
    /// own address (an empty host).
    fn parse(reply: &Value, asked: &str) -> Option<Self> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(host, _)| host);
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return None;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(host) => std::str::from_utf8(host).ok()?,
                Value::SimpleString(host) => host.as_str(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                asked_host
            } else {
                host
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                return None;
            };
            ranges.push((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                Node::from(format!("{host}:{port}")),
            ));
        }
        ranges.sort();
        Some(Self { ranges })
    }
}

/// The broker's view of a Redis Cluster: its slot map, refreshed on demand.
pub(crate) struct Topology {
    seeds: Arc<[ConnectionInfo]>,
    map: Mutex<Arc<SlotMap>>,
    /// Held while the map is being read, so that a burst of `MOVED` replies reads it once.
    refreshing: tokio::sync::Mutex<()>,
    /// Bumped whenever the map changes.
    generation: Mutex<u64>,
    /// A reply said the map is out of date: read it before the next lookup.
    stale: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("map", &self.map())
            .finish_non_exhaustive()
    }
}

impl Topology {
    pub(crate) fn new(seeds: Arc<[ConnectionInfo]>) -> Self {
        Self {
            seeds,
            map: Mutex::new(Arc::default()),
            refreshing: tokio::sync::Mutex::new(()),
            generation: Mutex::new(0),
            stale: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The map as last read (empty before the first read).
    pub(crate) fn map(&self) -> Arc<SlotMap> {
        self.map.lock().expect("never poisoned").clone()
    }

    /// How many times the map has changed; tells a reader whether to look again.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.lock().expect("never poisoned")
    }

    /// The map, read again first if a reply said it is out of date or it was never read.
    pub(crate) async fn current(&self) -> RedisResult<Arc<SlotMap>> {
        let stale = self.stale.swap(false, Ordering::Relaxed);
        if (stale || self.map().ranges.is_empty())
            && let Err(e) = self.refresh().await
        {
            self.invalidate();
            return Err(e);
        }
        Ok(self.map())
    }

    /// The primary that owns `slot`, as [`current`](Self::current) knows it.
    pub(crate) async fn owner(&self, slot: u16) -> RedisResult<Node> {
        self.current().await?.owner(slot).cloned().ok_or_else(|| {
            RedisError::from((
                ErrorKind::ClusterConnectionNotFound,
                "no primary owns the slot",
                format!("slot {slot}"),
            ))
        })
    }

    /// Marks the map out of date (a `MOVED` reply, a primary gone): the next lookup reads
    /// it again.
    pub(crate) fn invalidate(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Whether the map was marked out of date, clearing the mark: the caller reads it again
    /// with [`refresh`](Self::refresh), and marks it again if that fails.
    pub(crate) fn take_stale(&self) -> bool {
        self.stale.swap(false, Ordering::Relaxed)
    }

    /// Reads the map again from the first node that answers: the primaries it knows, then
    /// the seeds. Returns whether it changed. Callers that arrive while a read is under way
    /// wait for it instead of starting their own.
    pub(crate) async fn refresh(&self) -> RedisResult<bool> {
        let generation = self.generation();
        let _refreshing = self.refreshing.lock().await;
        if self.generation() != generation {
            return Ok(true);
        }
        let known = self.map().primaries();
        let mut last = None;
        let candidates = known
            .iter()
            .map(|node| self.info(node))
            .chain(self.seeds.iter().cloned().map(Ok));
        for info in candidates {
            let info = info?;
            let asked = info.addr().to_string();
            match tokio::time::timeout(RESOLVE_TIMEOUT, ask_slots(info)).await {
                Ok(Ok(reply)) => match SlotMap::parse(&reply, &asked) {
                    Some(map) if !map.ranges.is_empty() => return Ok(self.replace(map)),
                    _ => {
                        last = Some(RedisError::from((
                            ErrorKind::ClusterConnectionNotFound,
                            "CLUSTER SLOTS names no slot owner",
                            asked,
                        )))
                    }
                },
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(timed_out("no CLUSTER SLOTS reply", RESOLVE_TIMEOUT)),
            }
        }
        Err(last.expect("at least one seed"))
    }

    fn replace(&self, map: SlotMap) -> bool {
        let mut current = self.map.lock().expect("never poisoned");
        if **current == map {
            return false;
        }
        tracing::debug!(
            primaries = map.primaries().len(),
            "redis cluster: slot map changed"
        );
        *current = Arc::new(map);
        *self.generation.lock().expect("never poisoned") += 1;
        true
    }

    /// How to reach `node`: the first seed's credentials and TLS at its address.
    fn info(&self, node: &str) -> RedisResult<ConnectionInfo> {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse().ok()?)))
            .ok_or_else(|| {
                RedisError::from((ErrorKind::InvalidClientConfig, "bad node address"))
            })?;
        Ok(at(&self.seeds[0], host.to_owned(), port))
    }

    /// A client for `node`.
    pub(crate) fn client(&self, node: &str) -> RedisResult<Client> {
        Client::open(self.info(node)?)
    }

    /// A RESP3 connection to `node` for sharded subscriptions, whose pushes (messages,
    /// `sunsubscribe`, and its own closing) go to `pushes`.
    pub(crate) async fn subscriber(
        &self,
        node: &str,
        pushes: impl AsyncPushSender,
    ) -> RedisResult<MultiplexedConnection> {
        let info = self.info(node)?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        Client::open(info.set_redis_settings(resp3))?
            .get_multiplexed_async_connection_with_config(&bounded().set_push_sender(pushes))
            .await
    }
}

async fn ask_slots(info: ConnectionInfo) -> RedisResult<Value> {
    let mut connection = Client::open(info)?
        .get_multiplexed_async_connection_with_config(&bounded())
        .await?;
    ::redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from Redis' own documentation and `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), 3443);
        assert_eq!(slot("sessionhub:ch:{news}"), slot("news"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot("a{}b"), 13694);
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
    }

    #[test]
    fn the_owner_of_a_slot_is_found_by_range() {
        let node = |n: &str| Value::Array(vec![Value::BulkString(n.into()), Value::Int(7000)]);
        let entry = |first, last, host: &str| {
            Value::Array(vec![Value::Int(first), Value::Int(last), node(host)])
        };
        let reply = Value::Array(vec![
            entry(5461, 10922, "10.0.0.2"),
            entry(0, 5460, ""),
            entry(10923, 16383, "10.0.0.3"),
        ]);
        let map = SlotMap::parse(&reply, "10.0.0.1:7000").unwrap();
        assert_eq!(map.owner(0).map(|n| &**n), Some("10.0.0.1:7000"));
        assert_eq!(map.owner(5461).map(|n| &**n), Some("10.0.0.2:7000"));
        assert_eq!(map.owner(16383).map(|n| &**n), Some("10.0.0.3:7000"));
        assert_eq!(map.primaries().len(), 3);
        let partial = SlotMap::parse(&Value::Array(vec![entry(10, 20, "h")]), "h:1").unwrap();
        assert_eq!(partial.owner(9), None);
        assert_eq!(partial.owner(21), None);
        assert!(SlotMap::parse(&Value::Int(1), "h:1").is_none());
    }
}
