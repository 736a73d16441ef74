//! Publishing a batch in one round trip per server: the items' publish scripts go to
//! each server (the one Redis, or on a cluster each primary owning some item's channel)
//! as one pipeline of EVALSHAs, in the batch's order, so items on one channel take their
//! offsets in order. A server that lacks the script answers NOSCRIPT for those items
//! without running anything; they are sent once more behind a SCRIPT LOAD.

use std::collections::HashMap;

use ::redis::{Pipeline, RedisResult, ServerErrorKind};

use super::RedisBroker;
use super::commands::{Link, Route, pipeline};
use super::reply::parse_receipt;
use crate::broker::{BatchItem, Receipt};
use crate::error::BrokerError;
use crate::redis::cluster::Node;

/// Publishes `items` with history (the broker keeps some); one result per item, in order.
pub(super) async fn publish(
    broker: &RedisBroker,
    items: &[BatchItem],
) -> Vec<Result<Receipt, BrokerError>> {
    let mut results: Vec<Option<Result<Receipt, BrokerError>>> =
        items.iter().map(|_| None).collect();
    // Item indexes by the server that owns their channel, in batch order.
    let mut groups: HashMap<Node, (String, Vec<usize>)> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let meta = broker.keys.channel_key(&item.channel, "meta");
        match broker.commands.server(Route::Key(&meta)).await {
            Ok(server) => groups
                .entry(server)
                .or_insert((meta, Vec::new()))
                .1
                .push(index),
            Err(e) => results[index] = Some(Err(BrokerError::unavailable("redis cluster", e))),
        }
    }
    let sends = groups.into_values().map(|(meta, indexes)| async move {
        let answers = send(broker, items, &indexes, &meta).await;
        (indexes, answers)
    });
    for (indexes, answers) in futures_util::future::join_all(sends).await {
        for (index, answer) in indexes.into_iter().zip(answers) {
            results[index] = Some(answer);
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every item answered"))
        .collect()
}

/// Sends the items `indexes` to the server that owns `route_key`'s slot.
async fn send(
    broker: &RedisBroker,
    items: &[BatchItem],
    indexes: &[usize],
    route_key: &str,
) -> Vec<Result<Receipt, BrokerError>> {
    let route = Route::Key(route_key);
    let build = |load, indexes| scripts(broker, items, indexes, load);
    let mut answers = match pipeline::<String>(&broker.commands, route, build(false, indexes)).await
    {
        Ok(answers) => answers,
        Err(e) => return indexes.iter().map(|_| Err(each(&e))).collect(),
    };
    let missing: Vec<usize> = (0..indexes.len())
        .filter(|&i| is_noscript(&answers[i]))
        .collect();
    if !missing.is_empty() {
        let again: Vec<usize> = missing.iter().map(|&i| indexes[i]).collect();
        let retried = pipeline::<String>(&broker.commands, route, build(true, &again)).await;
        match retried {
            Ok(retried) => {
                for (slot, answer) in missing.into_iter().zip(retried) {
                    answers[slot] = answer;
                }
            }
            Err(e) => {
                let mut results: Vec<_> = answers.into_iter().map(receipt).collect();
                for slot in missing {
                    results[slot] = Err(each(&e));
                }
                return results;
            }
        }
    }
    answers.into_iter().map(receipt).collect()
}

/// A failure of the whole pipeline, told to each of its items.
fn each(error: &BrokerError) -> BrokerError {
    BrokerError::unavailable("redis pipeline", error.to_string())
}

fn receipt(answer: RedisResult<String>) -> Result<Receipt, BrokerError> {
    let reply = answer.map_err(|e| BrokerError::unavailable("redis publish", e))?;
    parse_receipt(&reply).ok_or_else(|| {
        BrokerError::unavailable("redis publish", format!("unexpected reply {reply:?}"))
    })
}

fn is_noscript(answer: &RedisResult<String>) -> bool {
    answer
        .as_ref()
        .is_err_and(|e| e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::NoScript))
}

/// Builds, for a link, the pipeline of the publish scripts of items `indexes`, behind a
/// SCRIPT LOAD (whose answer is left out) if `load`.
fn scripts<'a>(
    broker: &'a RedisBroker,
    items: &'a [BatchItem],
    indexes: &'a [usize],
    load: bool,
) -> impl FnOnce(&Link) -> Pipeline + 'a {
    move |link| {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        if load {
            pipe.cmd("SCRIPT")
                .arg("LOAD")
                .arg(&broker.publish_text)
                .ignore();
        }
        add_scripts(&mut pipe, broker, items, indexes, &link.bind);
        pipe
    }
}

/// Adds the EVALSHA of each item's publish script, with the keys and arguments
/// `RedisBroker::publish` gives it; `bind` is the link's (see `Link::bind`).
fn add_scripts(
    pipe: &mut Pipeline,
    broker: &RedisBroker,
    items: &[BatchItem],
    indexes: &[usize],
    bind: &str,
) {
    let keys = &broker.keys;
    for &index in indexes {
        let item = &items[index];
        let channel = &item.channel;
        let idempotency = item
            .idempotency_key
            .as_ref()
            .map(|key| keys.channel_key(channel, &format!("idem:{key}")));
        let command = pipe
            .cmd("EVALSHA")
            .arg(broker.publish_script.get_hash())
            .arg(2 + usize::from(idempotency.is_some()))
            .arg(keys.channel_key(channel, "meta"))
            .arg(keys.channel_key(channel, "history"));
        if let Some(idempotency) = &idempotency {
            command.arg(idempotency);
        }
        command
            .arg(item.data.as_str())
            .arg(keys.channel(channel))
            .arg(broker.epochs.next())
            .arg(bind);
    }
}
