//! Decoding what the session scripts answer.
//!
//! LOAD and UPDATE_LOAD answer a record as one JSON text (`cjson.encode` of the HGETALL
//! reply) rather than a RESP array because of what each costs (measured with callgrind):
//! redis-rs parses a RESP array element by element, at about 1,000 instructions each; and
//! Redis turns one string out of Lua more cheaply than an array. The strings are the same
//! bytes either way, so a record decodes exactly as it would from RESP. The update scripts
//! answer the new value of each increment, or a failure word.

use std::borrow::Cow;

use ::redis::Value;

use super::{ATTRIBUTE, FIELD_CREATED, FIELD_VERSION, META, VERSION, unexpected};
use crate::error::StoreError;
use crate::store::{Attributes, Change, Record, Updated};

/// One string of a script's JSON reply: borrowed from the reply unless it had escapes.
pub(super) type Text<'a> = Cow<'a, [u8]>;

/// Decodes what LOAD and UPDATE_LOAD answer: `cjson.encode` of the HGETALL reply, with
/// `extra` more strings appended (the increments' results), which come back as they are.
pub(super) fn decode_json_reply(
    json: &[u8],
    extra: usize,
) -> Result<(Option<Record>, Vec<Text<'_>>), &'static str> {
    let mut items = cjson_strings(json).ok_or("unexpected reply")?;
    let Some(fields) = items
        .len()
        .checked_sub(extra)
        .filter(|n| n.is_multiple_of(2))
    else {
        return Err("unexpected reply");
    };
    let results = items.split_off(fields);
    Ok((decode_fields(&items)?, results))
}

/// The strings of a JSON array of strings as `cjson.encode` writes it (no whitespace), each
/// as the bytes it stands for; `None` for anything else.
///
/// cjson copies bytes as they are, so the text need not be UTF-8, and escapes only `"`,
/// `\`, `/` and the control characters (`\b \t \n \f \r`, others and DEL as `\u00XX`).
/// A string without a backslash, nearly every one, is borrowed from the reply. Written here
/// rather than left to serde_json, which spent ~450 instructions a string on this (two thirds
/// of the node's work decoding a session, callgrind); a `\u` escape above `\u007f`, which
/// cjson never writes, is refused.
fn cjson_strings(json: &[u8]) -> Option<Vec<Text<'_>>> {
    let mut rest = json.strip_prefix(b"[")?;
    let mut items = Vec::with_capacity(16);
    if rest == b"]" {
        return Some(items);
    }
    loop {
        rest = rest.strip_prefix(b"\"")?;
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[end] == b'"' {
            items.push(Cow::Borrowed(&rest[..end]));
            rest = &rest[end + 1..];
        } else {
            let (text, after) = unescape(rest, end)?;
            items.push(Cow::Owned(text));
            rest = after;
        }
        match rest.split_first()? {
            (b',', after) => rest = after,
            (b']', after) => return after.is_empty().then_some(items),
            _ => return None,
        }
    }
}

/// The rest of a JSON string whose first escape is at `escape`: its bytes, and what follows
/// the closing quote.
fn unescape(text: &[u8], escape: usize) -> Option<(Vec<u8>, &[u8])> {
    let mut out = text[..escape].to_vec();
    let mut i = escape;
    loop {
        match *text.get(i)? {
            b'"' => return Some((out, &text[i + 1..])),
            b'\\' => {
                let byte = match *text.get(i + 1)? {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        let hex = text.get(i + 2..i + 6)?;
                        let code = hex.iter().try_fold(0u32, |code, &digit| {
                            Some(code * 16 + char::from(digit).to_digit(16)?)
                        })?;
                        i += 4;
                        u8::try_from(code).ok().filter(u8::is_ascii)?
                    }
                    _ => return None,
                };
                out.push(byte);
                i += 2;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
}

/// Decodes a hash from its flat field/value list, by the rules of
/// [`RedisStore::decode_hash`](super::RedisStore::decode_hash). `None` if the list is empty.
pub(super) fn decode_fields<T: AsRef<[u8]>>(items: &[T]) -> Result<Option<Record>, &'static str> {
    if items.is_empty() {
        return Ok(None);
    }
    if !items.len().is_multiple_of(2) {
        return Err("unexpected reply");
    }
    let mut version = None;
    let mut created_ms = None;
    let mut attributes = Attributes::new();
    for pair in items.chunks_exact(2) {
        let (field, value) = (pair[0].as_ref(), pair[1].as_ref());
        let field = std::str::from_utf8(field).map_err(|_| "a field name is not UTF-8")?;
        if let Some(name) = field.strip_prefix(ATTRIBUTE) {
            let value = serde_json::from_slice(value).map_err(|_| "an attribute is not JSON")?;
            attributes.insert(name.to_owned(), value);
        } else if field == FIELD_VERSION {
            version = Some(value);
        } else if field == FIELD_CREATED {
            created_ms = Some(value);
        } else if !field.starts_with(META) {
            return Err("a field outside the format");
        }
    }
    if version != Some(VERSION.as_bytes()) {
        return Err("missing or unknown format version");
    }
    let created_ms = created_ms
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .ok_or("missing or invalid creation time")?;
    Ok(Some(Record {
        attributes,
        created_ms,
    }))
}

pub(super) fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Decodes the UPDATE/ROTATE reply: the new value of each increment, or a failure.
pub(super) fn decode_outcome(
    reply: Value,
    changes: &[(String, Change)],
) -> Result<Updated, StoreError> {
    match &reply {
        Value::Array(items) => items
            .iter()
            .map(|v| text(v).map(str::as_bytes))
            .collect::<Option<Vec<_>>>()
            .and_then(|texts| increments_of(&texts))
            .map(Updated::Applied)
            .ok_or_else(|| unexpected(&reply)),
        _ => failure(&reply, changes).map(|()| Updated::Missing),
    }
}

/// The new values of increments, as the scripts reply them (decimal text).
pub(super) fn increments_of<T: AsRef<[u8]>>(items: &[T]) -> Option<Vec<i64>> {
    items
        .iter()
        .map(|v| std::str::from_utf8(v.as_ref()).ok()?.parse::<i64>().ok())
        .collect()
}

/// Decodes the reply of an update script that did not apply the changes: `Ok` for `missing`;
/// an error for `taken`, `nan <index of the change>`, `overflow <index>` or anything else.
pub(super) fn failure(reply: &Value, changes: &[(String, Change)]) -> Result<(), StoreError> {
    let reply_text = text(reply).ok_or_else(|| unexpected(reply))?;
    let (what, index) = reply_text.split_once(' ').unwrap_or((reply_text, ""));
    let failed_name = || {
        index
            .parse::<usize>()
            .ok()
            .and_then(|i| changes.get(i))
            .map(|(name, _)| name.clone())
            .ok_or_else(|| unexpected(reply))
    };
    match what {
        "missing" => Ok(()),
        "taken" => Err(StoreError::RotationTargetTaken),
        "nan" => Err(StoreError::NotAnInteger(failed_name()?)),
        "overflow" => Err(StoreError::Overflow(failed_name()?)),
        _ => Err(unexpected(reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::{RedisStore, json_text};
    use serde_json::Value as Json;

    /// The hash `create` writes for `record`.
    fn written(record: &Record) -> Vec<(Vec<u8>, Vec<u8>)> {
        let meta = [
            (FIELD_VERSION, VERSION.to_owned()),
            (FIELD_CREATED, record.created_ms.to_string()),
        ];
        let attributes = record
            .attributes
            .iter()
            .map(|(name, value)| (format!("{ATTRIBUTE}{name}"), json_text(value).unwrap()));
        meta.into_iter()
            .map(|(f, v)| (f.to_owned(), v))
            .chain(attributes)
            .map(|(f, v)| (f.into_bytes(), v.into_bytes()))
            .collect()
    }

    /// What `cjson.encode` writes for a string (Redis' lua_cjson.c, `char2escape`).
    fn cjson_string(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'/' => out.extend_from_slice(b"\\/"),
                0x08 => out.extend_from_slice(b"\\b"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                0x0c => out.extend_from_slice(b"\\f"),
                b'\r' => out.extend_from_slice(b"\\r"),
                0..0x20 | 0x7f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    #[test]
    fn cjson_arrays_of_strings_decode_to_their_bytes() {
        let strings: [&[u8]; 8] = [
            b"",
            b"m:v",
            b"\"vu0\"",
            b"quote\"back\\slash/",
            b"\x00\x01\x08\t\n\x0b\x0c\r\x1f\x7f",
            "\u{2028} \u{e9}".as_bytes(),
            b"\xff\xfe not UTF-8",
            b"{\"a\":[1,2]}",
        ];
        let mut json = b"[".to_vec();
        for (i, s) in strings.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend(cjson_string(s));
        }
        json.push(b']');
        let decoded = cjson_strings(&json).unwrap();
        assert_eq!(decoded, strings.map(Cow::Borrowed));
        // Only the strings with an escape are copied.
        assert!(matches!(decoded[1], Cow::Borrowed(_)));
        assert!(matches!(decoded[2], Cow::Owned(_)));
        assert_eq!(cjson_strings(b"[]").unwrap(), Vec::<Cow<[u8]>>::new());
    }

    #[test]
    fn anything_but_a_cjson_array_of_strings_is_refused() {
        let bad: [&[u8]; 16] = [
            b"",
            b"[",
            b"{}",
            b"[\"a\"",
            b"[\"a]",
            b"[\"a\",]",
            b"[\"a\" ]",
            b"[\"a\"]x",
            b"[1]",
            b"[\"a\"\"b\"]",
            b"[\"\\x\"]",
            b"[\"\\u00\"]",
            b"[\"\\u+07f\"]",
            b"[\"\\u0080\"]",
            b"[\"\\u12g4\"]",
            b"[\"a\\\"]",
        ];
        for json in bad {
            assert_eq!(
                cjson_strings(json),
                None,
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    /// Found by the `stored_record` fuzz target: serde_json's default float parsing is not
    /// correctly rounded, so a float attribute came back from Redis one unit in the last place
    /// off (for ~30% of random bit patterns), and moved again on every write and load.
    #[test]
    fn float_attributes_survive_a_write_and_a_load() {
        let mut record = Record::new();
        record
            .attributes
            .insert("f".into(), Json::from(1.0715660391465826e-75));
        assert_eq!(RedisStore::decode_hash(written(&record)), Some(record));

        // The fuzzer's input: a long decimal, decoded, written back and decoded again.
        let long = format!("170000000000{}0", "2".repeat(66));
        let stored = [("m:v", "1"), ("m:created", "1700000000000"), ("a:x", &long)];
        let record = RedisStore::decode_hash(
            stored.map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec())),
        )
        .unwrap();
        assert_eq!(RedisStore::decode_hash(written(&record)), Some(record));
    }
}
