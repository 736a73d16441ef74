//! The `Sessionhub-Signature` header: `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, each `v1`
//! the HMAC-SHA256 of `"{t}.{body}"` under one of the secrets (several during a rotation).
//! Signing the timestamp with the body lets a receiver refuse a replayed request: it checks
//! that `t` is recent ([`verify`]'s `tolerance`) as well as the MAC.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header that carries the signature.
pub const HEADER: &str = "Sessionhub-Signature";

type HmacSha256 = hmac::Hmac<Sha256>;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<unix seconds>,v1=<hex>...`.
    #[error("malformed signature header")]
    Malformed,
    /// `t` is further from now than the tolerance: a replay, or a clock far off.
    #[error("signature timestamp outside the tolerance")]
    Expired,
    /// No `v1` matches under any secret: the body or timestamp was changed, or the secret
    /// is wrong.
    #[error("no signature matches")]
    Mismatch,
}

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The header value for `body` sent at `timestamp` (Unix seconds), one `v1` per secret.
pub fn sign(secrets: &[impl AsRef<str>], timestamp: u64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac(secret.as_ref(), timestamp, body)));
    }
    header
}

/// Checks `header` for `body` as a receiver does: `t` within `tolerance` seconds of `now`
/// (Unix seconds), and some `v1` the MAC under some secret of `secrets`.
pub fn verify(
    header: &str,
    body: &[u8],
    secrets: &[impl AsRef<str>],
    now: u64,
    tolerance: u64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<u64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            // Other schemes a later version may add.
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance {
        return Err(SignatureError::Expired);
    }
    let matches = secrets.iter().any(|secret| {
        let expected = mac(secret.as_ref(), timestamp, body);
        signatures
            .iter()
            .any(|s| bool::from(s.as_slice().ct_eq(&expected)))
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"1","type":"user.online"}"#;

    #[test]
    fn a_signed_body_verifies_within_the_tolerance() {
        let header = sign(&["s3cret"], 1_000, BODY);
        assert_eq!(verify(&header, BODY, &["s3cret"], 1_000, 300), Ok(()));
        assert_eq!(verify(&header, BODY, &["s3cret"], 1_300, 300), Ok(()));
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_an_old_timestamp_is_refused() {
        let header = sign(&["s3cret"], 1_000, BODY);
        let tampered = br#"{"id":"2","type":"user.online"}"#;
        assert_eq!(
            verify(&header, tampered, &["s3cret"], 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, BODY, &["other"], 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, BODY, &["s3cret"], 1_301, 300),
            Err(SignatureError::Expired)
        );
        // A replayed MAC under a new timestamp does not verify either.
        let v1 = header.split_once(",v1=").unwrap().1;
        let moved = format!("t=1100,v1={v1}");
        assert_eq!(
            verify(&moved, BODY, &["s3cret"], 1_100, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn during_a_rotation_either_secret_verifies() {
        let header = sign(&["new", "old"], 1_000, BODY);
        assert_eq!(header.matches("v1=").count(), 2);
        assert_eq!(verify(&header, BODY, &["old"], 1_000, 300), Ok(()));
        assert_eq!(verify(&header, BODY, &["new"], 1_000, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused_not_panicked_on() {
        for header in [
            "",
            "t=",
            "t=x,v1=00",
            "v1=00",
            "t=1000",
            "t=1000,v1=zz",
            "t=1000,v1=0",
            "junk",
        ] {
            assert_eq!(
                verify(header, BODY, &["s"], 1_000, 300),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }

    /// RFC 4231 test case 2, so the MAC is HMAC-SHA256 and not something that merely
    /// round-trips.
    #[test]
    fn the_mac_is_hmac_sha256() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(hex::encode(super::mac("Jefe", 7, b"x")), {
            let mut m = HmacSha256::new_from_slice(b"Jefe").unwrap();
            m.update(b"7.x");
            hex::encode(m.finalize().into_bytes())
        });
    }
}
