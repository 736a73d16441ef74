//! Stored session records: the Redis hash layout and the memory store's journal rows.
//!
//! Input: the whole input is tried as a journal row (JSON). It is also read as a Redis hash:
//! the first byte is a separator, the rest is split on it into field, value, field, value...
//! (an odd last piece is dropped). Decoding must never panic, and a record that decodes
//! re-encodes, in the same layout, to one that decodes to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessionhub::store::{MemoryStore, Record, RedisStore};

fuzz_target!(|data: &[u8]| {
    if let Some((record, expires_ms)) = MemoryStore::decode_journal_entry(data) {
        let row = serde_json::json!({ "record": &record, "expires_ms": expires_ms });
        let row = serde_json::to_vec(&row).unwrap();
        assert_eq!(
            MemoryStore::decode_journal_entry(&row),
            Some((record, expires_ms))
        );
    }

    let Some((&separator, rest)) = data.split_first() else {
        return;
    };
    let pieces: Vec<&[u8]> = rest.split(|&b| b == separator).collect();
    let fields = pieces
        .chunks_exact(2)
        .map(|pair| (pair[0].to_vec(), pair[1].to_vec()));
    if let Some(record) = RedisStore::decode_hash(fields) {
        for name in record.attributes.keys() {
            let field = format!("a:{name}");
            assert!(pieces.chunks_exact(2).any(|p| p[0] == field.as_bytes()));
        }
        assert_eq!(RedisStore::decode_hash(redis_hash(&record)), Some(record));
    }
});

/// The hash `RedisStore` writes for `record` (see the layout in `store/redis.rs`).
fn redis_hash(record: &Record) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = vec![
        (b"m:v".to_vec(), b"1".to_vec()),
        (
            b"m:created".to_vec(),
            record.created_ms.to_string().into_bytes(),
        ),
    ];
    for (name, value) in &record.attributes {
        fields.push((
            format!("a:{name}").into_bytes(),
            serde_json::to_vec(value).unwrap(),
        ));
    }
    fields
}
