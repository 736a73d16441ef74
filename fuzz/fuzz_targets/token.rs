//! Socket tokens (HS256 JWTs) and API keys.
//!
//! Input: any bytes, read as (lossy) UTF-8 text, verified as a token against a fixed secret.
//! Verification must never panic, and must accept nothing that the secret did not sign:
//! every accepted token is checked here against an independent HMAC-SHA256 of its first two
//! segments, and must not have expired. A verifier holding a second secret too (a rotation)
//! must reach the same verdict. The text is also checked as an API key.
#![no_main]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use libfuzzer_sys::fuzz_target;
use sessionhub::auth::{ApiKeys, Claims, TokenError, TokenVerifier};
use sha2::{Digest, Sha256};

/// The secret the seed tokens in `corpus/token` are signed with.
const SECRET: &str = "fuzz-secret";

static VERIFIER: LazyLock<TokenVerifier> =
    LazyLock::new(|| TokenVerifier::new([SECRET]).expect("a secret"));
static ROTATING: LazyLock<TokenVerifier> =
    LazyLock::new(|| TokenVerifier::new(["", "another-secret", SECRET]).expect("secrets"));
static KEYS: LazyLock<ApiKeys> = LazyLock::new(|| ApiKeys::new([SECRET]));

/// Lenient base64url: any padding, any trailing bits. Stricter than this is up to the
/// verifier; the check below only asks whether the signature bytes are right.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);

    let verdict = VERIFIER.verify(&token);
    if let Ok(claims) = &verdict {
        assert!(
            signed_with_secret(&token),
            "accepted a token the secret did not sign"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(claims.exp >= now, "accepted an expired token");
    }
    if matches!(verdict, Err(TokenError::Expired)) {
        // Expired is only ever said of a genuine token.
        assert!(
            signed_with_secret(&token),
            "expired, yet not signed with the secret"
        );
    }
    assert_eq!(
        summary(&ROTATING.verify(&token)),
        summary(&verdict),
        "a second secret changed the verdict"
    );

    assert_eq!(KEYS.verify(&token), token == SECRET);
});

fn summary(verdict: &Result<Claims, TokenError>) -> Result<(&str, u64, &[String]), TokenError> {
    verdict
        .as_ref()
        .map(|c| (c.sub.as_str(), c.exp, c.channels.as_slice()))
        .map_err(|e| *e)
}

/// Whether the last segment is the HMAC-SHA256, under [`SECRET`], of everything before it.
fn signed_with_secret(token: &str) -> bool {
    let Some((message, signature)) = token.rsplit_once('.') else {
        return false;
    };
    LENIENT
        .decode(signature)
        .is_ok_and(|signature| signature == hmac_sha256(SECRET.as_bytes(), message.as_bytes()))
}

/// HMAC (RFC 2104) over SHA-256, for a key of at most one block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    assert!(key.len() <= BLOCK);
    let mut padded = [0u8; BLOCK];
    padded[..key.len()].copy_from_slice(key);
    let inner_key: Vec<u8> = padded.iter().map(|b| b ^ 0x36).collect();
    let outer_key: Vec<u8> = padded.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_key)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_key)
        .chain_update(inner)
        .finalize()
        .to_vec()
}
