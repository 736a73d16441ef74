use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Bytes of randomness in a session id.
const ID_BYTES: usize = 16;
/// Length of the base64url (unpadded) text of an id.
const ID_LEN: usize = 22;

/// A session id: 128 bits from the operating system's CSPRNG, as unpadded base64url.
///
/// Its `Debug` output is redacted: an id is a bearer credential and must not reach logs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id.
    ///
    /// # Panics
    /// If the operating system has no random source, which no supported platform lacks; a
    /// session id must never come from a weaker generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The id as sent in cookies and headers.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Text that is not a well-formed session id.
#[derive(Debug, thiserror::Error)]
#[error("malformed session id")]
pub struct MalformedId;

impl FromStr for SessionId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Decoding (rather than only checking the alphabet) also rejects ids whose last
        // character carries non-zero padding bits, so every id has one spelling.
        if s.len() != ID_LEN {
            return Err(MalformedId);
        }
        match URL_SAFE_NO_PAD.decode(s) {
            Ok(bytes) if bytes.len() == ID_BYTES => Ok(Self(s.to_owned())),
            _ => Err(MalformedId),
        }
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ID_LEN);
        assert_eq!(a.as_str().parse::<SessionId>().unwrap(), a);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAAAAAAAA", // 23 chars
            "AAAAAAAAAAAAAAAAAAAA+/",  // standard alphabet
            "AAAAAAAAAAAAAAAAAAAAA=",  // padding
            "AAAAAAAAAAAAAAAAAAAAAB",  // non-canonical trailing bits
            "ÄAAAAAAAAAAAAAAAAAAAA",   // non-ASCII, 22 bytes
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn debug_does_not_reveal_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(id.as_str()));
    }
}
