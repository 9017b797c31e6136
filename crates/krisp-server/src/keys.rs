//! License signing keys: a small key file (`<kid> <base64url secret>` per line; the last line
//! is the current signer, earlier lines stay published so older tokens keep verifying).

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use krisp_token::{KeySet, Signer};

use crate::config::KeySource;
use crate::error::Error;

pub(crate) struct Keyring {
    /// All keys, oldest first; the last one signs.
    keys: Vec<Signer>,
    public: KeySet,
}

impl Keyring {
    pub fn load(source: &KeySource, now: i64) -> Result<Self, Error> {
        let keys = match source {
            KeySource::Ephemeral => vec![new_signer(now)?],
            KeySource::Env(var) => {
                let text = std::env::var(var).map_err(|_| {
                    Error::SigningKey(format!("environment variable {var} is not set"))
                })?;
                parse(&text.replace(';', "\n"))?
            }
            KeySource::File(path) => {
                if !path.exists() {
                    tracing::warn!(path = %path.display(), "no signing key file: generating a new key (development default)");
                    append_new_key(path, now)?;
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::SigningKey(format!("reading {}: {e}", path.display())))?;
                parse(&text)?
            }
        };
        if keys.is_empty() {
            return Err(Error::SigningKey("no keys found".into()));
        }
        let mut public = KeySet::new();
        for k in &keys {
            public.insert(k.kid(), k.public_key());
        }
        Ok(Self { keys, public })
    }

    pub fn current(&self) -> &Signer {
        // `load` refuses an empty key list.
        &self.keys[self.keys.len() - 1]
    }

    pub fn public(&self) -> &KeySet {
        &self.public
    }
}

fn new_signer(now: i64) -> Result<Signer, Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Error::SigningKey(format!("no randomness: {e}")))?;
    let mut tag = [0u8; 3];
    getrandom::fill(&mut tag).map_err(|e| Error::SigningKey(format!("no randomness: {e}")))?;
    // Key ids say when they were made, plus a random tag so two servers never collide.
    let kid = format!("k{now}-{}", hex::encode(tag));
    Signer::from_secret(&kid, secret).map_err(|e| Error::SigningKey(e.to_string()))
}

/// Adds a fresh key at the end of `path` (creating it, mode 0600): it becomes the signer.
pub fn append_new_key(path: &Path, now: i64) -> Result<String, Error> {
    let signer = new_signer(now)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| Error::SigningKey(format!("creating {}: {e}", path.display())))?;
    writeln!(f, "{} {}", signer.kid(), B64.encode(signer.secret_bytes()))
        .map_err(|e| Error::SigningKey(format!("writing {}: {e}", path.display())))?;
    Ok(signer.kid().to_owned())
}

fn parse(text: &str) -> Result<Vec<Signer>, Error> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::SigningKey(format!("line {}: {why}", n + 1));
        let (kid, secret) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `<key id> <base64url secret>`"))?;
        let raw = B64
            .decode(secret.trim())
            .map_err(|_| bad("secret is not base64url"))?;
        let secret: [u8; 32] = raw.try_into().map_err(|_| bad("secret must be 32 bytes"))?;
        out.push(Signer::from_secret(kid, secret).map_err(|e| bad(&e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_file_loads_and_rotation_switches_signer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.txt");
        let first = Keyring::load(&KeySource::File(path.clone()), 1).expect("generated");
        let kid1 = first.current().kid().to_owned();
        let kid2 = append_new_key(&path, 2).expect("rotate");
        let second = Keyring::load(&KeySource::File(path), 2).expect("reload");
        assert_eq!(second.current().kid(), kid2);
        assert!(
            second.public().get(&kid1).is_some(),
            "old key stays published"
        );
    }

    #[test]
    fn bad_key_lines_are_reported() {
        assert!(parse("k1").is_err());
        assert!(parse("k1 notbase64!!").is_err());
        assert!(parse("k1 AAAA").is_err());
        assert!(
            parse("# comment\n\n")
                .map(|v| v.is_empty())
                .unwrap_or(false)
        );
    }
}
