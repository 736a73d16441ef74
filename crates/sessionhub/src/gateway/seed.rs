//! What a frame means on the seed endpoint (`GET /websocket/{id}`): the only thing a seed
//! client can ask is a push to a user, so this is short, and it stays apart from v1 because
//! the seed's frames are frozen while v1 grows.

use futures_util::FutureExt;

use super::plan::Plan;
use super::state::Gateway;
use crate::broker::PublishOptions;
use crate::protocol::seed::{Reply, Request};
use crate::protocol::{FrameError, UserId};

/// The greeting, first frame on every seed connection.
pub(super) fn greeting(user: &UserId, node: &str) -> String {
    Reply::Connected {
        id: user.as_str(),
        node,
    }
    .to_text()
}

/// The error frame for a refused frame.
pub(super) fn refusal(e: &FrameError) -> String {
    error(e.code(), e.to_string())
}

fn error(code: &str, message: String) -> String {
    Reply::Error { code, message }.to_text()
}

/// Plans one frame: `{"KEY", "VALUE"}` becomes a publish under way.
pub(super) fn plan(text: &str, gateway: &Gateway) -> Plan {
    let Request::Push { to, data } = match Request::parse(text) {
        Ok(frame) => frame,
        Err(e) => return Plan::Reply(vec![refusal(&e)]),
    };
    let channel = to.channel();
    if !gateway.config.security.client_may_publish(&channel) {
        return Plan::Reply(vec![refusal(&FrameError::PublishForbidden)]);
    }
    let gateway = gateway.clone();
    Plan::Later(
        async move {
            let options = PublishOptions::with_history();
            match gateway.hub.publish(&channel, data.into(), &options).await {
                Ok(_) => Vec::new(),
                Err(e) => vec![error(e.code(), e.to_string())],
            }
        }
        .boxed(),
    )
}
