//! The IT policy file (TOML), written by silent installers: pre-sets the server, the
//! organisation enrolment token and settings users may not change.
//!
//! ```toml
//! server_url = "https://licensing.example.com"
//! enrolment_token = "ket_..."
//! start_at_login = true
//! locked = ["server_url", "start_at_login"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where installers put the policy file (Linux: the .deb; macOS: the .pkg's postinstall or
/// MDM). On Windows the MSI writes the same values to `HKLM\SOFTWARE\Policies\Krisp`
/// (reading them is still to do in the app).
#[cfg(not(target_os = "macos"))]
pub const DEFAULT_POLICY_PATH: &str = "/etc/krisp/policy.toml";
/// Where installers put the policy file (Linux: the .deb; macOS: the .pkg's postinstall or
/// MDM).
#[cfg(target_os = "macos")]
pub const DEFAULT_POLICY_PATH: &str = "/Library/Application Support/Krisp/policy.toml";

/// Environment variable that overrides [`DEFAULT_POLICY_PATH`].
pub const POLICY_PATH_ENV: &str = "KRISP_POLICY_FILE";

/// The policy an administrator set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// License server to use instead of the built-in one.
    pub server_url: Option<String>,
    /// Organisation enrolment token for silent activation (no user sign-in).
    pub enrolment_token: Option<String>,
    /// Start Krisp when the user logs in.
    pub start_at_login: Option<bool>,
    /// Names of settings the user may not change.
    #[serde(default)]
    pub locked: Vec<String>,
}

impl Policy {
    /// The policy file's path: `$KRISP_POLICY_FILE` if set, else [`DEFAULT_POLICY_PATH`].
    pub fn path() -> PathBuf {
        std::env::var_os(POLICY_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_PATH))
    }

    /// Reads the policy at `path`; `None` when there is no file (no policy).
    pub fn load(path: impl AsRef<Path>) -> Result<Option<Self>> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|detail| Error::Format {
                path: path.to_owned(),
                detail,
            })
    }

    /// Parses policy TOML.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Whether the administrator locked the setting `name`.
    pub fn is_locked(&self, name: &str) -> bool {
        self.locked.iter().any(|l| l == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_policy_parses() {
        let p = Policy::parse(
            "server_url = \"https://l.example\"\nenrolment_token = \"ket_1\"\n\
             start_at_login = true\nlocked = [\"server_url\"]\n",
        )
        .expect("valid policy");
        assert_eq!(p.server_url.as_deref(), Some("https://l.example"));
        assert_eq!(p.enrolment_token.as_deref(), Some("ket_1"));
        assert_eq!(p.start_at_login, Some(true));
        assert!(p.is_locked("server_url"));
        assert!(!p.is_locked("start_at_login"));
    }

    #[test]
    fn unknown_keys_are_refused_so_typos_are_noticed() {
        assert!(Policy::parse("server_ur = \"x\"").is_err());
    }

    #[test]
    fn missing_file_means_no_policy_and_bad_file_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            Policy::load(tmp.path().join("none.toml")).expect("ok"),
            None
        );
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, "locked = 3").expect("write");
        assert!(matches!(Policy::load(&bad), Err(Error::Format { .. })));
    }
}
