//! [`HttpHooks`]: the hooks of `sessionhub serve`, answered by the application's backend
//! over HTTP. One POST with a JSON body per decision; the answer is `{"result": {...}}`
//! (allow), or `{"error": {...}}` / `{"disconnect": {...}}` (deny with a close code), close
//! to Centrifugo's proxy contract so that backends written for it need little change.
//! `docs/hooks.md` specifies every body.
//!
//! A backend that does not answer in time, answers other than 2xx, or answers something
//! else is a failure, and [`FailurePolicy`] decides (deny by default). Every call is counted
//! in `sessionhub_proxy_requests_total{hook,outcome}` and timed in
//! `sessionhub_proxy_duration_seconds{hook}`.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{Caller, Connect, Denial, EXPIRED, Hooks, Publish, UNAVAILABLE};
use crate::protocol::UserId;

/// A larger answer is a failure: real ones are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Under [`FailurePolicy::Allow`], how much longer a connection whose refresh failed may
/// live before the refresh is asked again.
const FAILED_REFRESH_GRACE: Duration = Duration::from_secs(10);

/// What a hook that could not be asked (timeout, connection error, non-2xx answer, an
/// answer that is not the contract's JSON) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Refuse (close code [`UNAVAILABLE`]): nobody gets in while the backend is down.
    #[default]
    Deny,
    /// Allow as if the hook were not configured.
    Allow,
}

impl FromStr for FailurePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(Self::Deny),
            "allow" => Ok(Self::Allow),
            other => Err(format!("{other:?}: expected deny or allow")),
        }
    }
}

/// Where the HTTP hooks are and how to call them. A hook without a URL keeps the built-in
/// behaviour.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Asked when a client connects.
    pub connect_url: Option<String>,
    /// Asked when a client subscribes.
    pub subscribe_url: Option<String>,
    /// Asked when a client publishes.
    pub publish_url: Option<String>,
    /// Asked shortly before a connection's lifetime (the connect answer's `expire_at`) ends.
    pub refresh_url: Option<String>,
    /// Client request headers passed on to the backend (as headers and in the body).
    /// Credentials such as `Cookie` and `Authorization` are forwarded only if named here.
    pub forward_headers: Vec<HeaderName>,
    /// How long one call may take, answer included.
    pub timeout: Duration,
    /// What a failed call decides.
    pub on_failure: FailurePolicy,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_url: None,
            subscribe_url: None,
            publish_url: None,
            refresh_url: None,
            forward_headers: Vec::new(),
            timeout: Duration::from_secs(1),
            on_failure: FailurePolicy::Deny,
        }
    }
}

/// A hook URL that is not an absolute http:// or https:// URL.
#[derive(Debug, thiserror::Error)]
#[error("{hook} proxy URL {url:?}: expected an absolute http:// or https:// URL")]
pub struct InvalidProxyUrl {
    hook: &'static str,
    url: String,
}

/// [`Hooks`] answered by the application's backend over HTTP.
pub struct HttpHooks {
    connect: Option<Uri>,
    subscribe: Option<Uri>,
    publish: Option<Uri>,
    refresh: Option<Uri>,
    forward: Vec<HeaderName>,
    timeout: Duration,
    on_failure: FailurePolicy,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHooks")
            .field("connect", &self.connect)
            .field("subscribe", &self.subscribe)
            .field("publish", &self.publish)
            .field("refresh", &self.refresh)
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

/// Why a call decided nothing.
#[derive(Debug)]
enum Failure {
    Timeout,
    Error(String),
}

/// The contract's answer.
#[derive(Deserialize)]
struct Answer {
    result: Option<Allowed>,
    error: Option<Refusal>,
    disconnect: Option<Refusal>,
}

#[derive(Deserialize, Default)]
struct Allowed {
    user: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    /// Unix seconds.
    expire_at: Option<u64>,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Refusal {
    code: Option<u16>,
    #[serde(alias = "reason")]
    message: Option<String>,
}

impl HttpHooks {
    /// Hooks calling the URLs in `config`.
    pub fn new(config: ProxyConfig) -> Result<Self, InvalidProxyUrl> {
        let uri =
            |hook: &'static str, url: Option<String>| -> Result<Option<Uri>, InvalidProxyUrl> {
                let Some(url) = url else { return Ok(None) };
                match url.parse::<Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.host().is_some() =>
                    {
                        Ok(Some(uri))
                    }
                    _ => Err(InvalidProxyUrl { hook, url }),
                }
            };
        Ok(Self {
            connect: uri("connect", config.connect_url)?,
            subscribe: uri("subscribe", config.subscribe_url)?,
            publish: uri("publish", config.publish_url)?,
            refresh: uri("refresh", config.refresh_url)?,
            forward: config.forward_headers,
            timeout: config.timeout,
            on_failure: config.on_failure,
            client: crate::http_client::pooled(),
        })
    }

    /// Whether any hook has a URL (else there is nothing to install).
    pub fn is_empty(&self) -> bool {
        self.connect.is_none()
            && self.subscribe.is_none()
            && self.publish.is_none()
            && self.refresh.is_none()
    }

    /// The body every hook gets, plus the hook's own fields in `extra`.
    fn body(&self, caller: &Caller, extra: Map<String, Value>) -> Vec<u8> {
        let mut body = Map::new();
        body.insert("user".into(), caller.user.as_str().into());
        if let Some(client) = &caller.client {
            body.insert("client".into(), client.as_str().into());
        }
        body.insert("transport".into(), caller.transport.as_str().into());
        let headers: Map<String, Value> = self
            .forwarded(&caller.headers)
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.into())))
            .collect();
        body.insert("headers".into(), Value::Object(headers));
        body.extend(extra);
        serde_json::to_vec(&body).expect("a JSON map serializes")
    }

    fn forwarded<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
        self.forward
            .iter()
            .flat_map(|name| headers.get_all(name).iter().map(move |value| (name, value)))
    }

    /// One call, counted and timed; the answer, or why there is none.
    async fn call(
        &self,
        hook: &'static str,
        url: &Uri,
        caller: &Caller,
        extra: Map<String, Value>,
    ) -> Result<Answer, Failure> {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.send(url, caller, extra))
            .await
            .unwrap_or(Err(Failure::Timeout));
        metrics::histogram!("sessionhub_proxy_duration_seconds", "hook" => hook)
            .record(started.elapsed().as_secs_f64());
        let outcome = match &answer {
            Ok(Answer {
                result: Some(_), ..
            }) => "allow",
            Ok(_) => "deny",
            Err(Failure::Timeout) => "timeout",
            Err(Failure::Error(e)) => {
                tracing::warn!(hook, %url, error = %e, "the proxy hook failed");
                "error"
            }
        };
        if matches!(answer, Err(Failure::Timeout)) {
            tracing::warn!(hook, %url, timeout = ?self.timeout, "the proxy hook did not answer in time");
        }
        metrics::counter!("sessionhub_proxy_requests_total", "hook" => hook, "outcome" => outcome)
            .increment(1);
        answer
    }

    async fn send(
        &self,
        url: &Uri,
        caller: &Caller,
        extra: Map<String, Value>,
    ) -> Result<Answer, Failure> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in self.forwarded(&caller.headers) {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(self.body(caller, extra))))
            .map_err(|e| Failure::Error(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Failure::Error(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Error(format!("HTTP {status}")));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::Error(e.to_string()))?
            .to_bytes();
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| Failure::Error(format!("not the hook's JSON answer: {e}")))?;
        if answer.result.is_none() && answer.error.is_none() && answer.disconnect.is_none() {
            return Err(Failure::Error(
                "the answer has none of result, error, disconnect".into(),
            ));
        }
        Ok(answer)
    }

    /// The refusal a failure makes under [`FailurePolicy::Deny`].
    fn unavailable() -> Denial {
        Denial::new(
            UNAVAILABLE,
            "the application could not be asked; try again later",
        )
    }
}

/// The refusal in an answer without `result`; `default` is its code when it names none.
fn refusal(answer: Answer, default: u16) -> Denial {
    let refusal = answer.error.or(answer.disconnect);
    let (code, message) = refusal.map_or((None, None), |r| (r.code, r.message));
    Denial::new(
        code.unwrap_or(default),
        message.unwrap_or_else(|| "refused by the application".into()),
    )
}

fn unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[async_trait]
impl Hooks for HttpHooks {
    async fn connect(&self, caller: &Caller) -> Result<Connect, Denial> {
        let Some(url) = &self.connect else {
            return Ok(Connect::default());
        };
        let answer = match self.call("connect", url, caller, Map::new()).await {
            Ok(answer) => answer,
            Err(_) if self.on_failure == FailurePolicy::Allow => return Ok(Connect::default()),
            Err(_) => return Err(Self::unavailable()),
        };
        let Some(allowed) = answer.result else {
            return Err(refusal(answer, super::DENIED));
        };
        let user = match allowed.user.filter(|u| !u.is_empty()) {
            Some(user) => match user.parse::<UserId>() {
                Ok(user) => Some(user),
                Err(_) => {
                    tracing::warn!(user, "the connect hook named an invalid user id");
                    return match self.on_failure {
                        FailurePolicy::Allow => Ok(Connect::default()),
                        FailurePolicy::Deny => Err(Self::unavailable()),
                    };
                }
            },
            None => None,
        };
        Ok(Connect {
            user,
            channels: allowed.channels,
            expire_at: allowed.expire_at.map(unix),
        })
    }

    async fn subscribe(&self, caller: &Caller, channel: &str) -> Result<(), Denial> {
        let Some(url) = &self.subscribe else {
            return Ok(());
        };
        let extra = Map::from_iter([("channel".to_owned(), json!(channel))]);
        match self.call("subscribe", url, caller, extra).await {
            Ok(Answer {
                result: Some(_), ..
            }) => Ok(()),
            Ok(answer) => Err(refusal(answer, super::DENIED)),
            Err(_) if self.on_failure == FailurePolicy::Allow => Ok(()),
            Err(_) => Err(Self::unavailable()),
        }
    }

    async fn publish(
        &self,
        caller: &Caller,
        channel: &str,
        data: &RawValue,
    ) -> Result<Publish, Denial> {
        let Some(url) = &self.publish else {
            return Ok(Publish::Allow);
        };
        let data: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
        let extra = Map::from_iter([
            ("channel".to_owned(), json!(channel)),
            ("data".to_owned(), data),
        ]);
        match self.call("publish", url, caller, extra).await {
            Ok(Answer {
                result: Some(allowed),
                ..
            }) => Ok(allowed.data.map_or(Publish::Allow, Publish::Replace)),
            Ok(answer) => Err(refusal(answer, super::DENIED)),
            Err(_) if self.on_failure == FailurePolicy::Allow => Ok(Publish::Allow),
            Err(_) => Err(Self::unavailable()),
        }
    }

    async fn refresh(&self, caller: &Caller) -> Result<Option<SystemTime>, Denial> {
        let Some(url) = &self.refresh else {
            return Ok(None);
        };
        match self.call("refresh", url, caller, Map::new()).await {
            Ok(Answer {
                result: Some(allowed),
                ..
            }) => Ok(allowed.expire_at.map(unix)),
            Ok(answer) => Err(refusal(answer, EXPIRED)),
            Err(_) if self.on_failure == FailurePolicy::Allow => {
                Ok(Some(SystemTime::now() + FAILED_REFRESH_GRACE))
            }
            Err(_) => Err(Self::unavailable()),
        }
    }
}
