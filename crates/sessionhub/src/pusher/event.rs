//! A Pusher event's data on the hub. Pusher's `data` is a string; the hub carries JSON
//! text. The string travels as the JSON it holds when it holds JSON other than a string
//! (so that protocol v1 clients of the channel get `{"some":"data"}` as an object), and as
//! a JSON string otherwise; [`crate::protocol::pusher::event`] gives Pusher clients back
//! the same string (a JSON string's content, any other JSON as its text).

use std::borrow::Cow;

use serde_json::value::RawValue;

/// The JSON text that carries Pusher event data `data` through the hub.
pub fn to_hub(data: &str) -> Cow<'_, str> {
    match serde_json::from_str::<&RawValue>(data) {
        Ok(raw) if !raw.get().starts_with('"') => Cow::Borrowed(data),
        _ => Cow::Owned(serde_json::to_string(data).expect("strings serialize")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_comes_back_as_it_went() {
        for data in [
            r#"{"some":"data"}"#,
            " [1, 2] ",
            "12",
            "true",
            "null",
            r#""quoted""#,
            "plain text",
            "",
            "{not json",
            "\u{1e}x",
        ] {
            let hub = to_hub(data);
            assert!(serde_json::from_str::<&RawValue>(&hub).is_ok(), "{hub}");
            let frame = crate::protocol::pusher::event("e", "c", &hub, None);
            let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(frame["data"], data, "{hub}");
        }
        assert_eq!(to_hub(r#"{"some":"data"}"#), r#"{"some":"data"}"#);
        assert_eq!(to_hub("plain"), r#""plain""#);
    }
}
