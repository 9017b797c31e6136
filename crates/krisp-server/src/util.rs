//! Small helpers: random ids and secrets, hashing, input validation.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest as _, Sha256};

use crate::error::{ApiError, ApiResult};

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable for a server that hands out secrets.
    getrandom::fill(&mut b).expect("invariant: the OS random number generator works");
    b
}

/// A random id like `acc_3f9a…` (96 bits).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(random::<12>()))
}

/// A bearer secret like `ka_…` (256 bits).
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}_{}", B64.encode(random::<32>()))
}

/// A uniformly random 6-digit code.
pub fn new_code() -> String {
    // Rejection sampling avoids modulo bias.
    loop {
        let n = u32::from_le_bytes(random::<4>());
        if n < u32::MAX - (u32::MAX % 1_000_000) {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

/// SHA-256 hex. Secrets are stored only as this.
pub fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Lower-cased, trimmed e-mail address after a conservative syntax check.
pub fn normalise_email(raw: &str) -> ApiResult<String> {
    let e = raw.trim().to_ascii_lowercase();
    let bad = || ApiError::bad_request("invalid_email", "not a valid e-mail address");
    if e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = e.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || local.contains('@')
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        || local.chars().any(|c| "\"(),:;<>[\\]".contains(c))
    {
        return Err(bad());
    }
    Ok(e)
}

/// A free-text field: 1..=max characters, no control characters.
pub fn check_text(field: &'static str, value: &str, max: usize) -> ApiResult<()> {
    let n = value.chars().count();
    if n == 0 || n > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..1000 {
            let c = new_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalise_email(" A@Example.COM ").ok(),
            Some("a@example.com".into())
        );
        for bad in [
            "",
            "a",
            "a@b",
            "@x.io",
            "a@@x.io",
            "a b@x.io",
            "a@x..",
            "x'@x;drop.io",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_separates_fields() {
        assert_ne!(hash(&["ab", "c"]), hash(&["a", "bc"]));
    }
}
