//! Who a socket belongs to, and for how long. Checked before the upgrade (origin, connection
//! rate, credentials, per-user cap) so that a client that may not connect is refused with an
//! HTTP error and costs no socket task; then looked at again while the socket lives, because
//! a session can end and a token expire long after the connect.
//!
//! Both protocols' endpoints admit the same way; only the connection loop and the v1
//! channel rules read the resulting [`Credentials`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Extension;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use tokio::time::Instant;

use super::state::Gateway;
use crate::auth::{TokenError, WsAuth};
use crate::error::ApiError;
use crate::limits::{Limited, Per};
use crate::protocol::UserId;
use crate::session::{PRINCIPAL, SessionId, index_keep, presented_id};
use crate::store::{Attributes, lifetime_left, now_ms};

/// Slack after a session's expected expiry before checking it, so the store has expired it.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);
/// The next look at credentials that nothing can end.
const FAR: Duration = Duration::from_secs(86_400);

/// What ends the connection's right to stay open, besides the client.
pub(super) enum Credentials {
    /// Open mode: nothing.
    None,
    /// The HTTP session it was opened with: closed when that ends.
    Session {
        id: SessionId,
        /// When the session's absolute lifetime runs out, if it has one: HTTP use slides
        /// the idle timeout, never this.
        ends: Option<Instant>,
    },
    /// A token: closed when it expires.
    Token {
        expires: Instant,
        /// Channels the token lets the user join.
        channels: Vec<String>,
    },
}

#[derive(Deserialize)]
pub(super) struct ConnectQuery {
    pub(super) token: Option<String>,
    /// Protocol v1 in open mode: who the client says it is.
    pub(super) user: Option<String>,
}

/// The credential of `Authorization: Bearer <credential>`, untrimmed.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Everything checked before an upgrade: origin, connection rate, who the client is (and
/// that it is `requested`, if it asked to be someone), and the per-user connection cap.
pub(super) async fn admit(
    gateway: &Gateway,
    requested: Option<UserId>,
    query: &ConnectQuery,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<(UserId, Credentials), ApiError> {
    let who = authenticate(gateway, requested, query.token.as_deref(), headers);
    admit_as(gateway, peer, headers, who).await
}

/// [`admit`], with who the client is found by `who` (after the origin and address checks,
/// before the per-user ones): the Pusher endpoint's users come from a session or nowhere.
pub(super) async fn admit_as(
    gateway: &Gateway,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    who: impl Future<Output = Result<(UserId, Credentials), ApiError>>,
) -> Result<(UserId, Credentials), ApiError> {
    let security = gateway.security();
    check_origin(gateway, headers)?;
    let limits = &security.limits;
    if let Some(ip) = peer.map(|p| client_ip(p.0.0, headers, &gateway.sessions.trusted_proxies)) {
        let per = Per::Address(&ip);
        gateway
            .rates
            .check(Limited::Connect, per, limits.connects_per_ip)
            .await?;
    }
    let (user, credentials) = who.await?;
    let per = Per::User(user.as_str());
    gateway
        .rates
        .check(Limited::Connect, per, limits.connects_per_user)
        .await?;
    if gateway.hub.online().online >= security.limits.connections_per_node {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_full",
            "this node holds as many connections as it may; try another node",
        ));
    }
    if gateway.hub.local_connections(&user) >= security.limits.connections_per_user {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "this user has too many open connections on this node",
        ));
    }
    Ok((user, credentials))
}

/// Refuses a page whose origin may not use the sockets (or the SSE endpoints) here; a
/// request without `Origin` is not from a browser page and passes.
pub(super) fn check_origin(gateway: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    if gateway
        .security()
        .origins
        .allows(headers.get(header::ORIGIN), headers.get(header::HOST))
    {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "this origin may not open sockets here (see --allowed-origins)",
    ))
}

/// Who the client is, checked against the user it asks to connect as (if it asks).
pub(super) async fn authenticate(
    gateway: &Gateway,
    requested: Option<UserId>,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(UserId, Credentials), ApiError> {
    let security = gateway.security();
    let (user, credentials) = match security.ws_auth {
        WsAuth::Open => {
            let user = requested.clone().ok_or_else(|| {
                ApiError::bad_request("in open mode, say who you are: /ws?user=<id>")
            })?;
            (user, Credentials::None)
        }
        WsAuth::Session => session_user(gateway, headers).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "not_logged_in",
                "log in first: the socket's user comes from the HTTP session",
            )
        })?,
        WsAuth::Token => {
            let token = query_token.or_else(|| bearer(headers));
            connection_token(gateway, token)
                .await
                .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?
        }
    };
    if requested.is_some_and(|r| r != user) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you may only open your own sockets",
        ));
    }
    Ok((user, credentials))
}

/// The user of the live HTTP session the request presents, with credentials that end with
/// it; `None` when it presents none, or one that is over or has no user.
pub(super) async fn session_user(
    gateway: &Gateway,
    headers: &HeaderMap,
) -> Result<Option<(UserId, Credentials)>, ApiError> {
    let logged_in = logged_in(gateway, headers).await?;
    Ok(logged_in.map(|s| {
        (
            s.user,
            Credentials::Session {
                id: s.id,
                ends: s.ends,
            },
        )
    }))
}

/// A live HTTP session with a logged-in user.
pub(super) struct LoggedIn {
    pub(super) id: SessionId,
    pub(super) user: UserId,
    /// When the session's absolute lifetime runs out, if it has one.
    pub(super) ends: Option<Instant>,
    /// Its attributes, for what else the caller reads of the user (`user_info`).
    pub(super) attributes: Attributes,
}

/// The live HTTP session the request presents and its user; `None` when it presents none,
/// or one that is over or has no user. One load, which slides the session's idle expiry
/// as any use does.
pub(super) async fn logged_in(
    gateway: &Gateway,
    headers: &HeaderMap,
) -> Result<Option<LoggedIn>, ApiError> {
    let Some(id) = presented_id(headers, &gateway.sessions) else {
        return Ok(None);
    };
    let Some(record) = gateway
        .store
        .load(&id, gateway.sessions.idle_timeout)
        .await?
    else {
        return Ok(None);
    };
    let Some(user) = record
        .attributes
        .get(PRINCIPAL)
        .and_then(|p| p.as_str())
        .and_then(|p| p.parse::<UserId>().ok())
    else {
        return Ok(None);
    };
    // An outlived session is over even before a request gets to delete it.
    let left = lifetime_left(gateway.sessions.max_lifetime, record.created_ms, now_ms());
    let ends = match left {
        Some(left) if left.is_zero() => return Ok(None),
        left => left.map(|left| Instant::now() + left),
    };
    Ok(Some(LoggedIn {
        id,
        user,
        ends,
        attributes: record.attributes,
    }))
}

/// Verifies a connection token, at connect or in a live refresh: its user, and credentials
/// that end at its `exp` and carry its `channels` claim. A subscribe token (it has a
/// `channel` claim) is refused: it was made to join one channel, not to connect.
pub(super) async fn connection_token(
    gateway: &Gateway,
    token: Option<&str>,
) -> Result<(UserId, Credentials), TokenError> {
    let security = gateway.security_owned();
    let verifier = security.tokens.as_ref();
    let claims = match (token, verifier) {
        (Some(token), Some(verifier)) => verifier.verify(token.trim()).await?,
        (None, _) => return Err(TokenError::Missing),
        (Some(_), None) => return Err(TokenError::Invalid),
    };
    if claims.channel.is_some() {
        return Err(TokenError::SubscribeOnly);
    }
    let user = claims
        .sub
        .parse::<UserId>()
        .map_err(|_| TokenError::Invalid)?;
    // To the millisecond: whole seconds from now would end the connection up to a second
    // past `exp`.
    let left = (claims.exp.saturating_mul(1000)).saturating_sub(now_ms());
    let credentials = Credentials::Token {
        expires: Instant::now() + Duration::from_millis(left),
        channels: claims.channels,
    };
    Ok((user, credentials))
}

/// Whole seconds until token credentials expire; `None` for the others.
pub(super) fn expires_in(credentials: &Credentials) -> Option<u64> {
    match credentials {
        Credentials::Token { expires, .. } => {
            Some(expires.saturating_duration_since(Instant::now()).as_secs())
        }
        _ => None,
    }
}

/// The client's address, as the gateway's trusted proxies report it.
pub(super) fn client_address(peer: SocketAddr, headers: &HeaderMap, gateway: &Gateway) -> IpAddr {
    client_ip(peer, headers, &gateway.sessions.trusted_proxies)
}

/// The client's address: the peer, or the last hop a trusted proxy reports.
pub(super) fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer.ip()) {
        return peer.ip();
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(peer.ip())
}

/// `next`, or the session's absolute end if that comes first.
fn before_end(next: Instant, ends: Option<Instant>) -> Instant {
    ends.map_or(next, |ends| ends.min(next))
}

/// When to look at the credentials first, from what the connect learned: no round trip.
pub(super) fn first_credentials_check(credentials: &Credentials, gateway: &Gateway) -> Instant {
    match credentials {
        Credentials::None => Instant::now() + FAR,
        Credentials::Token { expires, .. } => *expires,
        Credentials::Session { ends, .. } => {
            // Loading the session to admit the socket slid its expiry to a whole idle timeout.
            let idle = Instant::now() + gateway.sessions.idle_timeout + EXPIRY_SLACK;
            before_end(idle, *ends)
        }
    }
}

/// Looks at the credentials when their check is due: `None` if they ended, else when to
/// look again.
pub(super) async fn check_credentials(
    credentials: &Credentials,
    gateway: &Gateway,
) -> Option<Instant> {
    let now = Instant::now();
    match credentials {
        Credentials::None => Some(now + FAR),
        // Checked only once its expiry has come.
        Credentials::Token { .. } => None,
        Credentials::Session { id, ends } => {
            if ends.is_some_and(|ends| now >= ends) {
                return None;
            }
            let next = match gateway.store.expires_in(id).await {
                Ok(Some(left)) => now + left + EXPIRY_SLACK,
                Ok(None) => return None,
                // The store is down: look again soon rather than close a socket on a blip.
                Err(_) => now + Duration::from_secs(1),
            };
            Some(before_end(next, *ends))
        }
    }
}

/// Slides the socket's session as an HTTP request would (its expiry and its entry in the
/// per-user index, so that logging the user out everywhere still finds it): `None` if the
/// session is gone, else when to look at it next.
pub(super) async fn use_session(
    id: &SessionId,
    ends: Option<Instant>,
    user: &UserId,
    gateway: &Gateway,
) -> Option<Instant> {
    let idle = gateway.sessions.idle_timeout;
    let store = &gateway.store;
    match store.load(id, idle).await {
        Ok(Some(_)) => {
            if let Err(e) = store.index_add(user.as_str(), id, index_keep(idle)).await {
                tracing::warn!(error = %e, "could not refresh a socket's session in the user index");
            }
        }
        Ok(None) => return None,
        Err(e) => {
            // The store is down: look again soon, as the expiry check does.
            tracing::warn!(error = %e, "could not slide a socket's session");
            return Some(Instant::now() + Duration::from_secs(1));
        }
    }
    let next = Instant::now() + idle + EXPIRY_SLACK;
    Some(before_end(next, ends))
}
