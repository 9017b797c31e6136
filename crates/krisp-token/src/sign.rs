//! Signing side (feature `sign`): only the server holds secret keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signer as _, SigningKey};

use crate::{Claims, KeyError, PublicKey, VERSION, valid_kid};

/// A secret Ed25519 key with its key id. Zeroised on drop.
pub struct Signer {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From a key id and the 32 secret bytes (the caller gets them from a CSPRNG or a file).
    pub fn from_secret(kid: &str, secret: [u8; 32]) -> Result<Self, KeyError> {
        if !valid_kid(kid) {
            return Err(KeyError::BadKeyId(kid.to_owned()));
        }
        Ok(Self {
            kid: kid.to_owned(),
            key: SigningKey::from_bytes(&secret),
        })
    }

    /// The key id put in every token this key signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// The 32 secret bytes (to persist the key).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Encodes and signs `claims` into a `krisp1.<kid>.<claims>.<sig>` token.
    pub fn sign(&self, claims: &Claims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(200 + payload.len() * 4 / 3);
        token.push_str(VERSION);
        token.push('.');
        token.push_str(&self.kid);
        token.push('.');
        B64.encode_string(&payload, &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        B64.encode_string(signature.to_bytes(), &mut token);
        token
    }
}
