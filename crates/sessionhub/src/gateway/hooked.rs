//! Where the gateway asks the application's [`Hooks`]: at connect (before the upgrade or
//! the stream), and on the connection's task for its lifetime. Only connections of a
//! gateway with hooks carry a [`Hooked`]; the others pay one empty `Option` for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::state::Gateway;
use crate::hooks::{Caller, Denial, EXPIRED, Hooks, Publish, Transport};
use crate::hub::Hub;
use crate::protocol::UserId;
use crate::session::{SessionEvents, SessionId};

/// How long before a connection's end the refresh hook is asked, so that its answer (an
/// HTTP hook has `--proxy-timeout`, 1 s by default) comes before the end.
const REFRESH_LEAD: Duration = Duration::from_secs(1);

/// A hooked connection: who it is to the hooks, and its lifetime if the connect hook set
/// one.
pub(super) struct Hooked {
    hooks: Arc<dyn Hooks>,
    caller: Caller,
    /// Channels the connect hook joins it to, until the connection joins them.
    pub(super) initial: Vec<String>,
    /// When the connection ends unless the refresh hook extends it.
    expires: Option<Instant>,
    /// The refresh hook did not extend it: it closes with this at `expires`.
    refused: Option<Denial>,
}

/// Asks the connect hook about `user`, who passed the built-in checks: `Ok(None)` without
/// hooks, else the user to connect as and the connection's hook state.
pub(super) async fn connect(
    gateway: &Gateway,
    user: &UserId,
    transport: Transport,
    headers: &HeaderMap,
) -> Result<Option<(UserId, Box<Hooked>)>, Denial> {
    let Some(hooks) = gateway.hooks.clone() else {
        return Ok(None);
    };
    let mut caller = Caller {
        user: user.clone(),
        client: None,
        transport,
        headers: Arc::new(headers.clone()),
    };
    let connect = hooks.connect(&caller).await?;
    if let Some(user) = connect.user {
        caller.user = user;
    }
    let user = caller.user.clone();
    let hooked = Hooked {
        hooks,
        caller,
        initial: connect.channels,
        expires: connect.expire_at.map(instant),
        refused: None,
    };
    Ok(Some((user, Box::new(hooked))))
}

/// A wall-clock time as a timer deadline (now, if it has passed).
fn instant(at: SystemTime) -> Instant {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// What a client's publish becomes.
pub(super) enum Publishing {
    /// Publish this.
    Publish(Box<RawValue>),
    /// Nothing to publish: the application took it.
    Handled,
}

/// Asks the publish hook, if there is one, about `data` on `channel`.
pub(super) async fn publish(
    hooks: &dyn Hooks,
    caller: &Caller,
    channel: &str,
    data: Box<RawValue>,
) -> Result<Publishing, Denial> {
    Ok(match hooks.publish(caller, channel, &data).await? {
        Publish::Allow => Publishing::Publish(data),
        Publish::Replace(data) => Publishing::Publish(data),
        Publish::Handled => Publishing::Handled,
    })
}

/// The caller of a `POST /sse/publish`, whose request is all there is of it.
pub(super) fn sse_publisher(user: UserId, headers: &HeaderMap) -> Caller {
    Caller {
        user,
        client: None,
        transport: Transport::Sse,
        headers: Arc::new(headers.clone()),
    }
}

impl Hooked {
    /// The hooks and who is asking, for a call made off the connection's state.
    pub(super) fn parts(&self) -> (Arc<dyn Hooks>, Caller) {
        (self.hooks.clone(), self.caller.clone())
    }

    /// Asks the subscribe hook.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), Denial> {
        self.hooks.subscribe(&self.caller, channel).await
    }

    /// The connection's id, once it has one.
    pub(super) fn set_client(&mut self, client: String) {
        self.caller.client = Some(client);
    }

    /// When the connection's lifetime needs a look: the refresh, or the close after a
    /// refused one. Shares the credentials check's timer (one timer per connection).
    pub(super) fn due(&self) -> Option<Instant> {
        let expires = self.expires?;
        Some(match self.refused {
            Some(_) => expires,
            None => expires.checked_sub(REFRESH_LEAD).unwrap_or(expires),
        })
    }

    /// Looks at the lifetime when [`Hooked::due`]: asks the refresh hook, or ends the
    /// connection (`Err`, with the close to send) once its end has come unextended.
    pub(super) async fn lifetime(&mut self) -> Result<(), Denial> {
        let Some(expires) = self.expires else {
            return Ok(());
        };
        if let Some(refused) = &self.refused {
            return if Instant::now() >= expires {
                Err(refused.clone())
            } else {
                Ok(())
            };
        }
        let expired = || Denial::new(EXPIRED, "connection expired");
        match self.hooks.refresh(&self.caller).await {
            Ok(Some(end)) if instant(end) > expires => {
                let end = instant(end);
                self.expires = Some(end);
                // An extension shorter than the lead would ask again at once, and again:
                // it is the last one.
                if end <= Instant::now() + REFRESH_LEAD {
                    self.refused = Some(expired());
                }
            }
            Ok(_) => self.refused = Some(expired()),
            Err(denial) => self.refused = Some(denial),
        }
        Ok(())
    }

    /// Tells the disconnect hook, on its own task: the connection is gone already and
    /// need not wait for the application.
    pub(super) fn disconnected(&self, code: u16, reason: &str) {
        let (hooks, caller, reason) = (self.hooks.clone(), self.caller.clone(), reason.to_owned());
        tokio::spawn(async move { hooks.disconnect(&caller, code, &reason).await });
    }
}

/// What a gateway with hooks tells about sessions: the hub (whose sockets bound to an
/// ended session close) and the hooks.
pub(super) struct HookedSessions {
    pub(super) hub: Hub,
    pub(super) hooks: Arc<dyn Hooks>,
}

#[async_trait::async_trait]
impl SessionEvents for HookedSessions {
    async fn ended(&self, id: &SessionId) {
        self.hub.ended(id).await;
        self.hooks.session_destroyed(id).await;
    }

    async fn created(&self, id: &SessionId) {
        self.hooks.session_created(id).await;
    }

    // The hub's own: the `session.destroyed` webhook.
    async fn destroyed(&self, id: &SessionId, principal: Option<&str>) {
        self.hub.destroyed(id, principal).await;
    }

    fn wants_destroyed(&self) -> bool {
        self.hub.wants_destroyed()
    }
}

/// Looks at the lifetime of `hooked` if that is due (see [`Hooked::lifetime`]).
pub(super) async fn look_if_due(hooked: Option<&mut Hooked>) -> Result<(), Denial> {
    match hooked {
        Some(hooked) if hooked.due().is_some_and(|due| Instant::now() >= due) => {
            hooked.lifetime().await
        }
        _ => Ok(()),
    }
}

/// The soonest of the credentials check and the lifetime's look, if any.
pub(super) fn next_look(credentials_check: Instant, hooked: Option<&Hooked>) -> Instant {
    match hooked.and_then(Hooked::due) {
        Some(due) => due.min(credentials_check),
        None => credentials_check,
    }
}
