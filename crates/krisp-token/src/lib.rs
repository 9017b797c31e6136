//! The Krisp license token: one format shared by the server (which signs) and the desktop
//! client (which verifies offline), so the two cannot drift.
//!
//! A token is four dot-separated parts:
//!
//! ```text
//! krisp1.<key id>.<base64url(JSON claims)>.<base64url(Ed25519 signature)>
//! ```
//!
//! The signature covers the ASCII bytes of the first three parts (`krisp1.<kid>.<claims>`),
//! so the key id and the version are authenticated too. The client embeds one or more public
//! keys by id ([`KeySet`]); the server signs with its current key and publishes all public keys,
//! which is how keys rotate without breaking installed clients.
//!
//! ```
//! # #[cfg(feature = "sign")] {
//! use krisp_token::{Claims, KeySet, Signer, Status, verify};
//!
//! let signer = Signer::from_secret("k1", [7u8; 32]).expect("valid key id");
//! let claims = Claims {
//!     sub: "acc_1".into(),
//!     org: None,
//!     dev: "device-abc".into(),
//!     plan: "trial".into(),
//!     features: vec!["denoise".into()],
//!     iat: 1_000,
//!     exp: 2_000,
//!     grace: 3_000,
//! };
//! let token = signer.sign(&claims);
//!
//! let mut keys = KeySet::new();
//! keys.insert("k1", signer.public_key());
//! let license = verify(&token, &keys, "device-abc", 1_500).expect("valid token");
//! assert_eq!(license.status, Status::Active);
//! assert_eq!(verify(&token, &keys, "device-abc", 2_500).map(|l| l.status), Ok(Status::Grace));
//! assert!(verify(&token, &keys, "another-device", 1_500).is_err());
//! # }
//! ```
#![deny(missing_docs)]

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The version tag every token starts with.
pub const VERSION: &str = "krisp1";

/// Longest token [`verify`] will look at; real tokens are a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Allowed clock skew (seconds) between the signer and the verifier for `iat`.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// What a license token says. Times are Unix seconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account the license belongs to (for an organisation-enrolled machine, the
    /// organisation id).
    pub sub: String,
    /// The organisation whose seat the device uses, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The device id the license is bound to (the client's stable machine id).
    pub dev: String,
    /// Plan name, e.g. `trial`, `paid`, `org`.
    pub plan: String,
    /// Feature flags the plan grants.
    #[serde(default)]
    pub features: Vec<String>,
    /// Issued at.
    pub iat: i64,
    /// The license is fully valid until this time; the client should refresh before it.
    pub exp: i64,
    /// Past `exp`, the client may keep working offline until this time (grace period).
    pub grace: i64,
}

/// How a verified license stands at the time given to [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Before `exp`.
    Active,
    /// After `exp` but before `grace`: keep working, refresh as soon as possible.
    Grace,
}

/// A token that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    /// The signed claims.
    pub claims: Claims,
    /// The key id that signed it.
    pub kid: String,
    /// Active or in grace.
    pub status: Status,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a token at all: wrong number of parts, bad base64, bad JSON, too long.
    #[error("malformed license token: {0}")]
    Malformed(&'static str),
    /// A token format this client does not understand.
    #[error("unsupported license token version {0:?}")]
    UnsupportedVersion(String),
    /// Signed with a key this client does not know (maybe it needs an update).
    #[error("license token signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// The signature does not match: tampered with or forged.
    #[error("license token signature is invalid")]
    BadSignature,
    /// A valid license, but for another machine.
    #[error("license token is for device {found:?}, not this device {expected:?}")]
    WrongDevice {
        /// This machine's device id.
        expected: String,
        /// The device id in the token.
        found: String,
    },
    /// Issued in the future: the local clock is wrong or was rolled back.
    #[error("license token issued in the future (iat {iat}, now {now}); check the clock")]
    NotYetValid {
        /// Issued-at in the token.
        iat: i64,
        /// The verifier's time.
        now: i64,
    },
    /// Past the grace period.
    #[error("license expired (grace period ended at {grace_until})")]
    Expired {
        /// When the grace period ended.
        grace_until: i64,
    },
}

/// Errors handling keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Key ids are 1–32 characters of `A-Z a-z 0-9 _ -`.
    #[error("invalid key id {0:?} (use 1-32 characters of A-Z, a-z, 0-9, '_' or '-')")]
    BadKeyId(String),
    /// Not 32 bytes of base64url, or not a valid Ed25519 point.
    #[error("invalid Ed25519 public key")]
    BadPublicKey,
}

/// An Ed25519 public key that verifies license tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From the 32 raw key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::BadPublicKey)
    }

    /// From unpadded base64url (the form `GET /v1/keys` publishes).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let raw = B64.decode(s).map_err(|_| KeyError::BadPublicKey)?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| KeyError::BadPublicKey)?;
        Self::from_bytes(&bytes)
    }

    /// Unpadded base64url of the 32 key bytes.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.as_bytes())
    }
}

/// The public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, PublicKey>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust `key` under `kid` (replaces a key with the same id).
    pub fn insert(&mut self, kid: impl Into<String>, key: PublicKey) {
        self.keys.insert(kid.into(), key);
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.get(kid)
    }

    /// All `(kid, key)` pairs, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.keys.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Checks the key-id syntax shared by signer and verifier.
pub fn valid_kid(kid: &str) -> bool {
    (1..=32).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Verifies `token` offline: format, key id, signature, device binding and time.
///
/// `now` is Unix seconds; pass the client's (rollback-checked) clock.
pub fn verify(
    token: &str,
    keys: &KeySet,
    expected_device_id: &str,
    now: i64,
) -> Result<License, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(version), Some(kid), Some(payload_b64), Some(sig_b64), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(VerifyError::Malformed("expected 4 dot-separated parts"));
    };
    if version != VERSION {
        return Err(VerifyError::UnsupportedVersion(truncate(version)));
    }
    if !valid_kid(kid) {
        return Err(VerifyError::Malformed("bad key id"));
    }
    let key = keys
        .get(kid)
        .ok_or_else(|| VerifyError::UnknownKey(kid.to_owned()))?;
    let sig_raw = B64
        .decode(sig_b64)
        .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
    let sig_bytes: [u8; 64] = sig_raw
        .try_into()
        .map_err(|_| VerifyError::Malformed("signature is not 64 bytes"))?;
    let signature = Signature::from_bytes(&sig_bytes);
    let signed_len = version.len() + 1 + kid.len() + 1 + payload_b64.len();
    let signed = &token.as_bytes()[..signed_len];
    key.0
        .verify(signed, &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    // Only now, with an authentic payload, parse it.
    let payload = B64
        .decode(payload_b64)
        .map_err(|_| VerifyError::Malformed("claims are not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|_| VerifyError::Malformed("claims JSON"))?;
    if claims.dev != expected_device_id {
        return Err(VerifyError::WrongDevice {
            expected: expected_device_id.to_owned(),
            found: claims.dev,
        });
    }
    if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
        return Err(VerifyError::NotYetValid {
            iat: claims.iat,
            now,
        });
    }
    let status = if now < claims.exp {
        Status::Active
    } else if now < claims.grace {
        Status::Grace
    } else {
        return Err(VerifyError::Expired {
            grace_until: claims.grace,
        });
    };
    Ok(License {
        claims,
        kid: kid.to_owned(),
        status,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(16).collect()
}

mod clock;
pub use clock::Clock;

#[cfg(feature = "sign")]
mod sign;
#[cfg(feature = "sign")]
pub use sign::Signer;

#[cfg(all(test, feature = "sign"))]
mod tests;
