use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use tower::{Layer, Service};

use super::{Outcome, Session, SessionConfig, SessionEvents, SessionId};
use crate::error::ApiError;
use crate::store::SessionStore;

/// A tower layer that gives every request a [`Session`] and writes it back afterwards.
#[derive(Clone)]
pub struct SessionLayer {
    store: Arc<dyn SessionStore>,
    config: Arc<SessionConfig>,
    events: Option<Arc<dyn SessionEvents>>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// Sessions kept in `store`, behaving as `config` says.
    pub fn new(store: impl SessionStore, config: SessionConfig) -> Self {
        Self::from_arc(Arc::new(store), config)
    }

    /// Like [`SessionLayer::new`], for a store that is shared already.
    pub fn from_arc(store: Arc<dyn SessionStore>, config: SessionConfig) -> Self {
        Self {
            store,
            config: Arc::new(config),
            events: None,
        }
    }

    /// Tells `events` whenever a session ends (invalidate, rotation, eviction), e.g. a
    /// [`Hub`](crate::hub::Hub), which then closes the sockets bound to it on every node.
    pub fn with_events(mut self, events: Arc<dyn SessionEvents>) -> Self {
        self.events = Some(events);
        self
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around a handler.
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    layer: SessionLayer,
}

impl<S> Service<Request> for SessionService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let config = &layer.config;
            let presented = presented_id(request.headers(), config);
            let secure = is_secure(&request, config);
            let session = Session::new(
                layer.store.clone(),
                config.clone(),
                layer.events.clone(),
                presented,
            );
            request.extensions_mut().insert(session.clone());
            let mut response = inner.call(request).await?;
            match session.finish().await {
                Ok(outcome) => write_outcome(response.headers_mut(), config, secure, outcome),
                // The handler's writes did not reach the store: say so rather than answer as
                // if they had.
                Err(e) => response = ApiError::from(e).into_response(),
            }
            Ok(response)
        })
    }
}

/// The session id a request carries: the header first (non-browser clients), then the
/// cookie. Anything malformed counts as no id; the id is not checked against a store.
pub fn presented_id(headers: &HeaderMap, config: &SessionConfig) -> Option<SessionId> {
    if let Some(value) = headers.get(&config.header_name) {
        return value.to_str().ok()?.trim().parse().ok();
    }
    // `name=value` pairs split on `;`, each side trimmed: what `Cookie::split_parse` does for
    // a name and a value, without building a `Cookie` for every pair (it was 4 % of a
    // request's instructions).
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim() == config.cookie_name)
        .and_then(|(_, value)| value.trim().parse().ok())
}

fn is_secure(request: &Request, config: &SessionConfig) -> bool {
    if let Some(forced) = config.cookie_secure {
        return forced;
    }
    if request.uri().scheme_str() == Some("https") {
        return true;
    }
    let trusted = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|peer| config.trusted_proxies.contains(&peer.0.ip()));
    trusted
        && request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn write_outcome(headers: &mut HeaderMap, config: &SessionConfig, secure: bool, outcome: Outcome) {
    let (value, clear) = match &outcome {
        Outcome::Unchanged => return,
        Outcome::Issue(id) => (id.as_str(), false),
        Outcome::Clear => ("", true),
    };
    let mut cookie = Cookie::build((config.cookie_name.as_str(), value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .build();
    if clear {
        // A removal cookie must repeat Path and Secure or the browser keeps the old one.
        cookie.make_removal();
    }
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        headers.append(SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(config.header_name.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How `presented_id` read the cookie before it split the header itself.
    fn with_the_cookie_crate(headers: &HeaderMap, config: &SessionConfig) -> Option<SessionId> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| Cookie::split_parse(v).filter_map(Result::ok))
            .find(|c| c.name() == config.cookie_name)
            .and_then(|c| c.value().parse().ok())
    }

    #[test]
    fn the_cookie_is_read_as_the_cookie_crate_reads_it() {
        let config = SessionConfig::default();
        let id = SessionId::generate();
        let id = id.as_str();
        let other = "AAAAAAAAAAAAAAAAAAAAAA";
        let cases = [
            format!("SESSION={id}"),
            format!("  SESSION =\t{id}  "),
            format!("a=1; SESSION={id}; b=2"),
            format!("a=1;SESSION={id};b"),
            format!("SESSION={id}; SESSION={other}"),
            format!("SESSION=; SESSION={id}"),
            format!("SESSION=garbage; SESSION={id}"),
            format!("x; =v; ;; SESSION={id}"),
            format!("SESSION=\"{id}\""),
            format!("session={id}"),
            format!("SESSIONS={id}"),
            format!("SESSION={id}=x"),
            format!("SESSION=={id}"),
            id.to_string(),
            "SESSION=".to_owned(),
            ";;".to_owned(),
            String::new(),
        ];
        for case in &cases {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, HeaderValue::from_str(case).unwrap());
            assert_eq!(
                presented_id(&headers, &config),
                with_the_cookie_crate(&headers, &config),
                "{case:?}"
            );
        }
        // Several Cookie headers: the first pair with the name, in order.
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(
            COOKIE,
            HeaderValue::from_str(&format!("SESSION={id}")).unwrap(),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_str(&format!("SESSION={other}")).unwrap(),
        );
        let found = presented_id(&headers, &config);
        assert_eq!(found, with_the_cookie_crate(&headers, &config));
        assert_eq!(found.as_ref().map(SessionId::as_str), Some(id));
    }
}
