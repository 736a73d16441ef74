//! Unit tests of `socket.rs`: what a connection sends for a delivery.

use std::sync::Arc;

use super::super::super::state::test_gateway;
use super::*;
use crate::auth::WsAuth;
use crate::broker::Publication;

fn state() -> PusherConnection {
    let gateway = test_gateway(WsAuth::Open, &[]);
    let app = Arc::new(PusherApp::new("1", "key", "secret"));
    PusherConnection::new(app, "1.2".into(), &gateway)
}

fn delivery(channel: &str, offset: u64, envelope: &Envelope) -> Delivery {
    let publication = Publication {
        offset,
        epoch: "e".into(),
        data: envelope.wrap(r#"{"n":1}"#),
    };
    Delivery::new(channel, publication)
}

#[test]
fn outbound_skips_other_channels_the_excluded_socket_and_a_replayed_event_once() {
    let mut state = state();
    let none = Envelope::default();
    assert_eq!(
        state.outbound(&delivery("news", 1, &none)),
        None,
        "not on it"
    );
    let replayed = Some(("e".into(), 4));
    state.channels.insert(
        "news".into(),
        Subscription {
            member: None,
            replayed,
            direct_next: false,
        },
    );
    assert_eq!(
        state.outbound(&delivery("news", 4, &none)),
        None,
        "the replayed one, live"
    );
    let sent = state.outbound(&delivery("news", 5, &none)).unwrap();
    assert_eq!(
        sent.as_str(),
        r#"{"event":"message","channel":"news","data":"{\"n\":1}"}"#
    );
    assert!(
        state.outbound(&delivery("news", 4, &none)).is_some(),
        "dropped once only"
    );
    let mine = Envelope {
        event: Some("client-x".into()),
        except: Some("1.2".into()),
        ..Envelope::default()
    };
    assert_eq!(state.outbound(&delivery("news", 6, &mine)), None);
    let theirs = Envelope {
        except: Some("1.3".into()),
        ..mine
    };
    let sent = state.outbound(&delivery("news", 7, &theirs)).unwrap();
    assert!(
        sent.as_str().starts_with(r#"{"event":"client-x""#),
        "{sent}"
    );
}

#[test]
fn a_member_is_not_told_of_its_own_join() {
    let mut state = state();
    state.channels.insert(
        "presence-a".into(),
        Subscription {
            member: Some("u1".into()),
            replayed: None,
            direct_next: false,
        },
    );
    let join = |user: &str| {
        let frame =
            format!(r#"{{"type":"join","channel":"presence-a","user":"{user}","version":1}}"#);
        let publication = Publication {
            offset: 0,
            epoch: "".into(),
            data: frame.into(),
        };
        Delivery::new("$presence:presence-a", publication)
    };
    assert_eq!(state.outbound(&join("u1")), None);
    let added = state.outbound(&join("u2")).unwrap();
    assert!(
        added.as_str().contains("pusher_internal:member_added"),
        "{added}"
    );
}

/// Every Pusher connection is a task holding `run`'s future, so its size is paid per idle
/// connection, as v1's is (`socket.rs`'s `the_connection_future_stays_small`). 2 152 bytes
/// with the loop's rare awaits (subscribe, sign-in, client events, credentials and session
/// checks) boxed; 3 064 with them inline.
#[test]
fn the_connection_future_stays_small() {
    const LIMIT: usize = 2200;
    fn returned_size<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        size_of::<F>()
    }
    let size = returned_size(run);
    assert!(
        size <= LIMIT,
        "the Pusher connection future is {size} bytes, over {LIMIT}"
    );
}
