//! Pusher's HTTP API, as the Pusher server SDKs call it: every request signed with the
//! app's secret ([`crate::pusher::request`]), every answer cluster-wide.
//!
//! | route | what |
//! |---|---|
//! | `POST /apps/{id}/events` | an event on up to 100 channels (`#server-to-user-<id>`: to a signed-in user) |
//! | `POST /apps/{id}/batch_events` | up to 10 events, each on one channel |
//! | `GET /apps/{id}/channels` | the occupied channels (`filter_by_prefix`, `info=user_count`) |
//! | `GET /apps/{id}/channels/{name}` | `occupied`, `user_count`, `subscription_count`, `cache` |
//! | `GET /apps/{id}/channels/{name}/users` | the users of a presence channel |
//! | `POST /apps/{id}/users/{user}/terminate_connections` | close a user's connections |
//! | `POST /users/{user}/terminate_connections` | the same, the app named by `auth_key` (as the Python SDK calls it) |
//!
//! An event is a hub publication: its data goes through [`event::to_hub`], its name and
//! `socket_id` ride in the [`Envelope`], so every node's subscribers of the channel get it
//! (Pusher clients as the event, protocol v1 clients as a publication). Only cache channels
//! keep history: Pusher has none, and a cache channel's subscribers are sent its last event.
//! Channel counts come from every node's report (`control.rs`), presence from the presence
//! backend, a user's connections are closed by the control command the server API sends.
//! Refusals are the server API's JSON errors with Pusher's statuses. Channels are named as
//! the app names them and carried by the hub's channels in the app's namespace
//! ([`PusherApp::hub_channel`]): an app sees and counts its own channels only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::Json;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::broker::{BatchItem, Envelope, PublishOptions, Receipt};
use crate::control::{self, Command};
use crate::error::ApiError;
use crate::gateway::control::active_channels;
use crate::gateway::state::Gateway;
use crate::protocol::pusher_user::user_of_channel;
use crate::protocol::{UserId, pusher};
use crate::pusher::request::{self, Params};
use crate::pusher::{PusherApp, event};

/// Most channels one event may go to (Pusher's limit).
const MAX_CHANNELS: usize = 100;
/// Most events one batch may hold (Pusher's limit).
const MAX_BATCH: usize = 10;
/// Longest event name (Pusher's limit).
const MAX_EVENT_NAME_LEN: usize = 200;
/// The prefix of presence channels.
const PRESENCE: &str = "presence-";

/// A request that proved it came from the backend of the app its path names.
pub(super) struct Signed {
    app: Arc<PusherApp>,
    params: Params,
    body: Bytes,
}

impl FromRequest<Gateway> for Signed {
    type Rejection = ApiError;

    async fn from_request(req: Request, gateway: &Gateway) -> Result<Self, ApiError> {
        let apps = gateway.pusher.clone().expect("mounted with apps only");
        let method = req.method().as_str().to_owned();
        let uri = req.uri().clone();
        let app = match uri.path().strip_prefix("/apps/") {
            Some(rest) => apps
                .by_id(rest.split('/').next().unwrap_or_default())
                .cloned()
                .ok_or_else(|| ApiError::not_found("unknown app id"))?,
            // The Python SDK (3.3) calls /users/{user}/terminate_connections without the
            // app: its key names it.
            None => request::params(uri.query().unwrap_or_default())
                .ok()
                .and_then(|params| apps.by_key(params.get("auth_key")?).cloned())
                .ok_or_else(|| {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown auth_key")
                })?,
        };
        let limit = body_limit(&app, gateway.config.max_push_bytes);
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    format!("a request body may be at most {limit} bytes"),
                )
            })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let params = request::verify(
            &app,
            |key| apps.by_key(key).map(|app| &**app),
            &method,
            uri.path(),
            uri.query().unwrap_or_default(),
            &body,
            now,
        )
        .map_err(|e| {
            let status = StatusCode::from_u16(e.status()).expect("a valid status");
            let code = if status == StatusCode::BAD_REQUEST {
                "bad_request"
            } else {
                "unauthorized"
            };
            ApiError::new(status, code, e.to_string())
        })?;
        Ok(Self { app, params, body })
    }
}

/// The largest body `app`'s API takes: a full batch of events at the app's largest data
/// (twice over, for JSON escapes) or an event to the most channels, and never less than the
/// server API's `max_push_bytes`.
fn body_limit(app: &PusherApp, max_push_bytes: usize) -> usize {
    let batch = MAX_BATCH * (2 * app.max_event_bytes + 1024);
    let event = 2 * app.max_event_bytes + MAX_CHANNELS * 200;
    max_push_bytes.max(batch).max(event)
}

impl Signed {
    /// The body as `T`.
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("the body is not a valid event: {e}")))
    }

    /// The `info` parameter's attributes.
    fn info(&self) -> Vec<&str> {
        info_attributes(self.params.get("info").map(String::as_str))
    }
}

fn info_attributes(info: Option<&str>) -> Vec<&str> {
    info.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}

/// One event, as `POST /events` and each item of `POST /batch_events` take it.
#[derive(Debug, Deserialize)]
struct EventBody {
    name: Option<String>,
    data: Option<Value>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// An event checked and ready to publish.
struct Event {
    /// The channels, as the app names them.
    channels: Vec<String>,
    /// The sessionhub channels that carry them, in the same order.
    hubs: Vec<String>,
    payload: String,
    attributes: Vec<String>,
}

impl EventBody {
    /// Checks it against Pusher's rules and `app`'s limits; at most `max_channels`.
    fn check(self, app: &PusherApp, max_channels: usize) -> Result<Event, ApiError> {
        let name = self
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("an event needs a `name`"))?;
        if name.len() > MAX_EVENT_NAME_LEN {
            return Err(ApiError::bad_request(format!(
                "an event name may be at most {MAX_EVENT_NAME_LEN} characters"
            )));
        }
        let data = match self.data {
            Some(Value::String(text)) => text,
            // The SDKs send a string; an object is taken as its JSON text.
            Some(other) => other.to_string(),
            None => return Err(ApiError::bad_request("an event needs `data`")),
        };
        if data.len() > app.max_event_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                format!(
                    "event data may be at most {} bytes, not {}",
                    app.max_event_bytes,
                    data.len()
                ),
            ));
        }
        let channels = match (self.channels, self.channel) {
            (Some(channels), None) => channels,
            (None, Some(channel)) => vec![channel],
            _ => {
                return Err(ApiError::bad_request(
                    "an event needs `channels` or `channel`, not both",
                ));
            }
        };
        if channels.is_empty() || channels.len() > max_channels {
            return Err(ApiError::bad_request(format!(
                "an event goes to 1 to {max_channels} channels, not {}",
                channels.len()
            )));
        }
        let hubs = channels
            .iter()
            .map(|channel| match user_of_channel(channel) {
                // `sendToUser` is an event on the user's `#server-to-user-<id>`.
                Some(_) => Ok([app.namespace(), channel].concat()),
                None => hub_channel(app, channel),
            })
            .collect::<Result<_, _>>()?;
        if let Some(socket) = &self.socket_id
            && !pusher::is_socket_id(socket)
        {
            return Err(ApiError::bad_request(format!(
                "socket_id {socket:?} is not a socket id (digits.digits)"
            )));
        }
        let envelope = Envelope {
            event: Some(name),
            except: self.socket_id,
            user: None,
            // Only cache channels keep events, and only their kept event's age is asked.
            at: channels
                .iter()
                .any(|c| pusher::is_cache_channel(c))
                .then(crate::store::now_ms),
        };
        Ok(Event {
            channels,
            hubs,
            payload: envelope.wrap(&event::to_hub(&data)).to_string(),
            attributes: info_attributes(self.info.as_deref())
                .into_iter()
                .map(str::to_owned)
                .collect(),
        })
    }
}

fn publish_options(channel: &str) -> PublishOptions {
    PublishOptions {
        history: pusher::is_cache_channel(channel),
        idempotency_key: None,
    }
}

/// 503 naming what was published and what was not, when some publications failed.
fn partly_published<T>(
    what: &str,
    results: &[Result<Receipt, crate::error::BrokerError>],
    names: impl Fn(usize) -> T,
) -> Result<(), ApiError>
where
    T: std::fmt::Display,
{
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{} ({e})", names(i))))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        format!(
            "{} of {} {what} published; not: {}",
            results.len() - failed.len(),
            results.len(),
            failed.join(", ")
        ),
    ))
}

/// `POST /apps/{id}/events`: publishes an event on each of its channels.
pub(super) async fn events(
    State(gateway): State<Gateway>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let event = signed
        .json::<EventBody>()?
        .check(&signed.app, MAX_CHANNELS)?;
    let hub = &gateway.hub;
    let payload = event.payload.as_str();
    let results = join_all(event.hubs.iter().map(|channel| async move {
        let options = publish_options(channel);
        hub.publish(channel, payload.into(), &options).await
    }))
    .await;
    partly_published("channels", &results, |i| &event.channels[i])?;
    if event.attributes.is_empty() {
        return Ok(Json(json!({})));
    }
    let subscribers = subscribers_if_asked(&gateway, std::iter::once(&event.attributes)).await?;
    let mut channels = Map::new();
    for (channel, hub) in event.channels.iter().zip(&event.hubs) {
        let attributes = &event.attributes;
        let info = channel_info(&gateway, hub, attributes, false, subscribers.as_ref()).await?;
        channels.insert(channel.clone(), Value::Object(info));
    }
    Ok(Json(json!({ "channels": channels })))
}

/// The body of `POST /batch_events`.
#[derive(Debug, Deserialize)]
struct BatchBody {
    batch: Vec<EventBody>,
}

/// `POST /apps/{id}/batch_events`: publishes up to 10 events, each on one channel; cache
/// channels' events go to the broker together (they keep history), the others at once.
pub(super) async fn batch_events(
    State(gateway): State<Gateway>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let batch = signed.json::<BatchBody>()?.batch;
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} events, not {}",
            batch.len()
        )));
    }
    let events = batch
        .into_iter()
        .map(|item| item.check(&signed.app, 1))
        .collect::<Result<Vec<_>, _>>()?;
    let channel = |i: usize| events[i].hubs[0].as_str();
    let (cached, live): (Vec<usize>, Vec<usize>) =
        (0..events.len()).partition(|&i| pusher::is_cache_channel(channel(i)));
    let items: Vec<BatchItem> = cached
        .iter()
        .map(|&i| BatchItem {
            channel: channel(i).to_owned(),
            data: events[i].payload.as_str().into(),
            idempotency_key: None,
        })
        .collect();
    let hub = &gateway.hub;
    let live_publishes = join_all(live.iter().map(|&i| {
        let channel = channel(i);
        let options = publish_options(channel);
        let data = events[i].payload.as_str().into();
        async move { hub.publish(channel, data, &options).await }
    }));
    let (cached_results, live_results) = if items.is_empty() {
        (Vec::new(), live_publishes.await)
    } else {
        tokio::join!(gateway.hub.publish_batch(&items), live_publishes)
    };
    // Back in the batch's order, so that a failure names the right item.
    let mut results: Vec<Option<Result<Receipt, _>>> = (0..events.len()).map(|_| None).collect();
    for (i, result) in cached.into_iter().zip(cached_results) {
        results[i] = Some(result);
    }
    for (i, result) in live.into_iter().zip(live_results) {
        results[i] = Some(result);
    }
    let results: Vec<_> = results.into_iter().map(|r| r.expect("one each")).collect();
    partly_published("events", &results, |i| format!("batch[{i}]"))?;
    if events.iter().all(|e| e.attributes.is_empty()) {
        return Ok(Json(json!({})));
    }
    let subscribers = subscribers_if_asked(&gateway, events.iter().map(|e| &e.attributes)).await?;
    let mut infos = Vec::with_capacity(events.len());
    for event in &events {
        let (channel, attributes) = (&event.hubs[0], &event.attributes);
        let info = channel_info(&gateway, channel, attributes, false, subscribers.as_ref()).await?;
        infos.push(Value::Object(info));
    }
    Ok(Json(json!({ "batch": infos })))
}

/// What Pusher tells of one channel (`channel`: the hub's name) for `attributes` (`user_count` on presence channels,
/// `subscription_count`), plus `occupied` when `occupied` is asked. `subscribers` are the
/// cluster's counts when the caller has them already (one ask of every node for many
/// channels).
async fn channel_info(
    gateway: &Gateway,
    channel: &str,
    attributes: &[impl AsRef<str>],
    occupied: bool,
    subscribers: Option<&BTreeMap<String, usize>>,
) -> Result<Map<String, Value>, ApiError> {
    let wants = |a: &str| attributes.iter().any(|x| x.as_ref() == a);
    let mut info = Map::new();
    let mut users = None;
    if wants("user_count") && pusher::pusher_name(channel).starts_with(PRESENCE) {
        let count = gateway.presence.stats(channel).await?.users;
        info.insert("user_count".into(), count.into());
        users = Some(count);
    }
    if wants("subscription_count") || (occupied && users.is_none()) {
        let count = match subscribers {
            Some(counts) => counts.get(channel).copied().unwrap_or(0),
            None => active_channels(gateway, channel)
                .await?
                .subscribers
                .get(channel)
                .copied()
                .unwrap_or(0),
        };
        if wants("subscription_count") {
            info.insert("subscription_count".into(), count.into());
        }
        if occupied {
            info.insert("occupied".into(), (count > 0 || users > Some(0)).into());
        }
    } else if occupied {
        info.insert("occupied".into(), (users > Some(0)).into());
    }
    Ok(info)
}

/// Every channel's subscribers, cluster-wide, if some of `attributes` ask for
/// `subscription_count`.
async fn subscribers_if_asked<'a>(
    gateway: &Gateway,
    mut attributes: impl Iterator<Item = &'a Vec<String>>,
) -> Result<Option<BTreeMap<String, usize>>, ApiError> {
    if !attributes.any(|a| a.iter().any(|a| a == "subscription_count")) {
        return Ok(None);
    }
    Ok(Some(active_channels(gateway, "").await?.subscribers))
}

/// Refuses attributes other than `allowed`, and `user_count` outside presence channels.
fn check_attributes(attributes: &[&str], allowed: &[&str], presence: bool) -> Result<(), ApiError> {
    if let Some(bad) = attributes.iter().find(|a| !allowed.contains(a)) {
        return Err(ApiError::bad_request(format!(
            "info: unknown attribute {bad:?} (known: {})",
            allowed.join(", ")
        )));
    }
    if attributes.contains(&"user_count") && !presence {
        return Err(ApiError::bad_request(format!(
            "info=user_count is only for presence channels (filter_by_prefix={PRESENCE}…)"
        )));
    }
    Ok(())
}

/// `GET /apps/{id}/channels`: the occupied channels, cluster-wide.
pub(super) async fn channels(
    State(gateway): State<Gateway>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let prefix = signed
        .params
        .get("filter_by_prefix")
        .map_or("", String::as_str);
    let attributes = signed.info();
    check_attributes(
        &attributes,
        &["user_count", "subscription_count"],
        prefix.starts_with(PRESENCE),
    )?;
    let app = &signed.app;
    let active = active_channels(&gateway, &[app.namespace(), prefix].concat()).await?;
    let mut channels = BTreeMap::new();
    // Other apps' channels, and protocol v1's that no Pusher client could name (`user:…`),
    // are not listed.
    for (hub, subscribers) in &active.subscribers {
        let Some(channel) = app.pusher_channel(hub) else {
            continue;
        };
        let mut info = Map::new();
        if attributes.contains(&"user_count") {
            let users = gateway.presence.stats(hub).await?.users;
            info.insert("user_count".into(), users.into());
        }
        if attributes.contains(&"subscription_count") {
            info.insert("subscription_count".into(), (*subscribers).into());
        }
        channels.insert(channel, Value::Object(info));
    }
    Ok(Json(json!({ "channels": channels })))
}

/// The sessionhub channel that carries `app`'s `channel`; 400 for a name that is not a
/// Pusher channel sessionhub carries.
fn hub_channel(app: &PusherApp, channel: &str) -> Result<String, ApiError> {
    app.hub_channel(channel)
        .map_err(|e| ApiError::bad_request(format!("{channel:?}: {e}")))
}

/// `GET /apps/{id}/channels/{name}`: whether a channel is occupied, and how much.
pub(super) async fn channel(
    State(gateway): State<Gateway>,
    Path((_, channel)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let hub = hub_channel(&signed.app, &channel)?;
    let attributes = signed.info();
    check_attributes(
        &attributes,
        &["user_count", "subscription_count", "cache"],
        channel.starts_with(PRESENCE),
    )?;
    let mut info = channel_info(&gateway, &hub, &attributes, true, None).await?;
    // As Sockudo answers it (Pusher documents no shape): the kept event as its subscribers
    // get it, and the seconds it has left; nothing on other channels or when none is kept.
    if attributes.contains(&"cache")
        && pusher::is_cache_channel(&channel)
        && let Some(cached) = super::cached_event(&hub, &gateway).await?
    {
        let kept = gateway
            .pusher
            .as_ref()
            .expect("mounted with apps only")
            .cache_ttl();
        let age = cached
            .at
            .map_or(0, |at| crate::store::now_ms().saturating_sub(at));
        let left = (kept.as_millis() as u64).saturating_sub(age).div_ceil(1000);
        info.insert("cache".into(), json!({ "data": cached.frame, "ttl": left }));
    }
    Ok(Json(Value::Object(info)))
}

/// `GET /apps/{id}/channels/{name}/users`: the users of a presence channel, cluster-wide.
pub(super) async fn users(
    State(gateway): State<Gateway>,
    Path((_, channel)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let hub = hub_channel(&signed.app, &channel)?;
    if !channel.starts_with(PRESENCE) {
        return Err(ApiError::bad_request(format!(
            "users are listed for presence channels only ({PRESENCE}…)"
        )));
    }
    let members = gateway.presence.members(&hub).await?;
    let users: Vec<Value> = members.into_iter().map(|m| json!({"id": m.user})).collect();
    Ok(Json(json!({ "users": users })))
}

/// `POST /apps/{id}/users/{user}/terminate_connections`: closes every connection of the
/// user on every node.
pub(super) async fn terminate_connections(
    State(gateway): State<Gateway>,
    Path((_, user)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    terminate(&gateway, &signed.app, &user).await
}

/// `POST /users/{user}/terminate_connections`, the app named by `auth_key`.
pub(super) async fn terminate_connections_of_key(
    State(gateway): State<Gateway>,
    Path(user): Path<String>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    terminate(&gateway, &signed.app, &user).await
}

/// Closes `user`'s connections, and the app's connections signed in as `user`, which are
/// the hub user `{namespace}{user}` (the same one when the app has no namespace).
async fn terminate(
    gateway: &Gateway,
    app: &PusherApp,
    user: &str,
) -> Result<Json<Value>, ApiError> {
    let user: UserId = user.parse()?;
    let mut users = vec![user.as_str().to_owned()];
    if !app.namespace().is_empty() {
        users.push([app.namespace(), user.as_str()].concat());
    }
    for user in users {
        let command = Command::Disconnect {
            user,
            node: None,
            connection: None,
            reconnect: false,
            reason: "terminated by the app".to_owned(),
        };
        control::send(&gateway.hub, &command).await?;
    }
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_count_is_for_presence_channels_only() {
        let allowed = ["user_count", "subscription_count"];
        assert!(check_attributes(&["user_count"], &allowed, true).is_ok());
        assert!(check_attributes(&["user_count"], &allowed, false).is_err());
        assert!(check_attributes(&["subscription_count"], &allowed, false).is_ok());
        assert!(check_attributes(&["cache"], &allowed, true).is_err());
        assert_eq!(
            info_attributes(Some("user_count, subscription_count,")).len(),
            2
        );
    }
}
