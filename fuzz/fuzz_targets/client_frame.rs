//! The frames a client sends: seed sockets (`/websocket/{id}`, `seed::Request`) and protocol
//! v1 (`/ws`, `v1::Request`), plus user ids and channel names.
//!
//! Input: any bytes, read as (lossy) UTF-8 text. Checks that parsing never panics, that every
//! user id that parses is in the documented alphabet and round-trips through its text and
//! its personal channel, that a parsed push re-encodes to a frame that parses the same, that
//! the id a v1 reply echoes is the frame's own numeric `id`, and that every error still makes
//! a well-formed error frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use sessionhub::protocol::{
    FrameError, MAX_CHANNEL_LEN, MAX_IDEMPOTENCY_KEY_LEN, MAX_USER_ID_LEN, UserId,
    is_public_channel_name, seed, v1,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    match seed::Request::parse(&text) {
        Ok(frame) => {
            let seed::Request::Push { to, data } = &frame;
            check_user_id(to);
            // VALUE travels as JSON text; the same frame, re-encoded, parses the same.
            assert!(serde_json::from_str::<serde_json::Value>(data).is_ok());
            let key = serde_json::to_string(to.as_str()).unwrap();
            let again = format!(r#"{{"KEY":{key},"VALUE":{data}}}"#);
            assert_eq!(seed::Request::parse(&again).as_ref(), Ok(&frame));
        }
        Err(error) => check_error(&error),
    }

    // The id echoed in a reply, success or error, is the frame's own numeric `id`. Checked
    // when the frame is JSON that `Value` holds: JSON with a number out of `f64`'s range
    // (`1e400`) is still JSON, and v1 takes it (`data` stays raw text).
    let frame_id = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .map(|v| v.get("id").and_then(serde_json::Value::as_u64));
    match v1::Request::parse(&text) {
        Ok(message) => {
            let id = match &message {
                v1::Request::Subscribe { id, .. }
                | v1::Request::Unsubscribe { id, .. }
                | v1::Request::Presence { id, .. }
                | v1::Request::Ping { id } => *id,
                v1::Request::Publish {
                    data,
                    id,
                    idempotency_key,
                    ..
                } => {
                    assert!(serde_json::from_str::<Box<RawValue>>(data.get()).is_ok());
                    if let Some(key) = idempotency_key {
                        assert!(!key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN);
                    }
                    *id
                }
            };
            if let Some(frame_id) = frame_id {
                assert_eq!(id, frame_id);
            }
        }
        Err((error, id)) => {
            check_error(&error);
            if let Some(frame_id) = frame_id {
                assert!(id.is_none() || id == frame_id, "{id:?} vs {frame_id:?}");
            }
        }
    }

    if let Ok(id) = text.parse::<UserId>() {
        assert_eq!(id.as_str(), text);
        check_user_id(&id);
    }
    if let Some(id) = UserId::from_channel(&text) {
        check_user_id(&id);
        assert_eq!(id.channel(), text);
    }
    if is_public_channel_name(&text) {
        assert!(!text.is_empty() && text.len() <= MAX_CHANNEL_LEN);
        assert!(!text.contains(['{', '}']) && !text.starts_with("session:"));
    }
});

fn check_user_id(id: &UserId) {
    let s = id.as_str();
    assert!(
        !s.is_empty() && s.len() <= MAX_USER_ID_LEN,
        "length of {s:?}"
    );
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b)),
        "alphabet of {s:?}"
    );
    assert_eq!(id.to_string(), s);
    assert_eq!(s.parse::<UserId>().ok().as_ref(), Some(id));
    assert_eq!(UserId::from_channel(&id.channel()).as_ref(), Some(id));
}

/// The error frame sent back must always serialize, whatever the input was.
fn check_error(error: &FrameError) {
    let reply = seed::Reply::Error {
        code: error.code(),
        message: error.to_string(),
    }
    .to_text();
    assert!(serde_json::from_str::<serde_json::Value>(&reply).is_ok());
}
