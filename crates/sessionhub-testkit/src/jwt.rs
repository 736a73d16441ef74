//! Tokens signed with the key pairs in `fixtures/jwt/` (made for tests only: their private
//! halves are public), for checking every algorithm and source of keys sessionhub takes.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// One of the fixture key pairs; its `kid` in `fixtures/jwt/jwks.json` is [`TestKey::kid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    /// RSA 2048, RS256.
    Rsa1,
    /// Another RSA 2048, RS256 (for rotations).
    Rsa2,
    /// EC P-256, ES256.
    Ec1,
    /// Ed25519, EdDSA.
    Ed1,
}

impl TestKey {
    /// Every fixture key.
    pub const ALL: [TestKey; 4] = [Self::Rsa1, Self::Rsa2, Self::Ec1, Self::Ed1];

    /// Its `kid`, also the stem of its files.
    pub fn kid(self) -> &'static str {
        match self {
            Self::Rsa1 => "rsa-1",
            Self::Rsa2 => "rsa-2",
            Self::Ec1 => "ec-1",
            Self::Ed1 => "ed-1",
        }
    }

    /// The algorithm it signs with.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::Rsa1 | Self::Rsa2 => Algorithm::RS256,
            Self::Ec1 => Algorithm::ES256,
            Self::Ed1 => Algorithm::EdDSA,
        }
    }

    /// The path of its PEM public key.
    pub fn public_pem_path(self) -> PathBuf {
        dir().join(format!("{}.pub.pem", self.kid()))
    }

    /// Its PEM public key.
    pub fn public_pem(self) -> String {
        std::fs::read_to_string(self.public_pem_path()).expect("the fixture exists")
    }

    /// `claims` signed with this key; the header names `kid` if given.
    pub fn sign(self, kid: Option<&str>, claims: &Value) -> String {
        let pem = std::fs::read(dir().join(format!("{}.key.pem", self.kid())))
            .expect("the fixture exists");
        let key = match self.algorithm() {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("the fixture parses");
        let mut header = Header::new(self.algorithm());
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).expect("signing works")
    }
}

/// A JWK Set with the public halves of `keys`.
pub fn jwks(keys: &[TestKey]) -> Value {
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("jwks.json")).expect("the fixture exists"),
    )
    .expect("the fixture is JSON");
    let wanted: Vec<Value> = all["keys"]
        .as_array()
        .expect("a JWK Set")
        .iter()
        .filter(|k| keys.iter().any(|t| k["kid"] == t.kid()))
        .cloned()
        .collect();
    serde_json::json!({ "keys": wanted })
}

/// `claims` signed with HS256 and `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing works")
}

/// Seconds since the Unix epoch, `offset` from now.
pub fn now_plus(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    now + offset
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/jwt")
}
