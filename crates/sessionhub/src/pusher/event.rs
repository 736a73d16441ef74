//! A Pusher event's data on the hub. Pusher's `data` is a string; the hub carries JSON
//! text. The string travels as the JSON it holds when it holds JSON other than a string
//! (so that protocol v1 clients of the channel get `{"some":"data"}` as an object), and as
//! a JSON string otherwise; [`data_of`] gives back the same string for Pusher clients.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// The JSON text that carries Pusher event data `data` through the hub.
pub fn to_hub(data: &str) -> Cow<'_, str> {
    match serde_json::from_str::<&RawValue>(data) {
        Ok(raw) if !raw.get().starts_with('"') => Cow::Borrowed(data),
        _ => Cow::Owned(serde_json::to_string(data).expect("strings serialize")),
    }
}

/// The Pusher event data a hub publication (JSON text) carries: a JSON string's content,
/// any other JSON as its text. The inverse of [`to_hub`].
pub fn data_of(json: &str) -> Cow<'_, str> {
    match serde_json::from_str::<String>(json) {
        Ok(text) => Cow::Owned(text),
        Err(_) => Cow::Borrowed(json),
    }
}

/// Whether `channel` is a cache channel (`cache-`, `private-cache-`, `presence-cache-`,
/// `private-encrypted-cache-`): one whose last event is kept for new subscribers.
pub fn is_cache_channel(channel: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "presence-cache-",
        "private-encrypted-cache-",
    ]
    .iter()
    .any(|prefix| channel.starts_with(prefix))
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
            assert_eq!(data_of(&hub), data, "{hub}");
        }
        assert_eq!(to_hub(r#"{"some":"data"}"#), r#"{"some":"data"}"#);
        assert_eq!(to_hub("plain"), r#""plain""#);
    }

    #[test]
    fn cache_channels_are_named_so() {
        for yes in [
            "cache-a",
            "private-cache-a",
            "presence-cache-a",
            "private-encrypted-cache-a",
        ] {
            assert!(is_cache_channel(yes), "{yes}");
        }
        for no in ["a-cache-b", "private-a", "presence-a", "cachex"] {
            assert!(!is_cache_channel(no), "{no}");
        }
    }
}
