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
    if !gateway.security().client_may_publish(&channel) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::state::test_gateway;
    use super::*;
    use crate::auth::WsAuth;
    use crate::hub::Outbound;

    fn replies_now(plan: Plan) -> Vec<String> {
        match plan {
            Plan::Reply(replies) => replies,
            Plan::Later(_) => panic!("a publish, not a refusal"),
        }
    }

    #[tokio::test]
    async fn a_push_frame_reaches_every_connection_of_its_user() {
        let gateway = test_gateway(WsAuth::Open, &[]);
        let bob: UserId = "456".parse().unwrap();
        let mut connection = gateway.hub.connect(&bob);
        connection.join(&bob.channel()).await.unwrap();
        let Plan::Later(publish) = plan(r#"{"KEY":456,"VALUE":"aaaa"}"#, &gateway) else {
            panic!("not a publish");
        };
        assert!(
            publish.await.is_empty(),
            "a push that worked answers nothing"
        );
        let next = tokio::time::timeout(Duration::from_secs(2), connection.recv());
        let Outbound::Message(delivery) = next.await.unwrap() else {
            panic!("not a publication");
        };
        assert_eq!(delivery.seed_frame().as_str(), "aaaa");
    }

    #[test]
    fn bad_and_forbidden_frames_are_refused_at_once() {
        let open = test_gateway(WsAuth::Open, &[]);
        assert_eq!(
            replies_now(plan(r#"{"KEY":456}"#, &open)),
            [
                r#"{"type":"error","code":"invalid_frame","message":"expected {\"KEY\": <user id>, \"VALUE\": <message>}"}"#
            ]
        );
        let guarded = test_gateway(WsAuth::Session, &["user:=subscribe"]);
        assert_eq!(
            replies_now(plan(r#"{"KEY":456,"VALUE":"x"}"#, &guarded)),
            [
                r#"{"type":"error","code":"forbidden","message":"you may not publish to that channel"}"#
            ]
        );
        let user: UserId = "456".parse().unwrap();
        assert_eq!(
            greeting(&user, "n1"),
            r#"{"type":"connected","id":"456","node":"n1"}"#
        );
    }
}
