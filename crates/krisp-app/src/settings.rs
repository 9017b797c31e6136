//! User settings: TOML in the platform config dir, written atomically; a corrupt file is
//! reported and kept as a backup, never silently lost.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What the user chose, persisted between runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Input device (source name); `None`: the system default.
    pub input: Option<String>,
    /// Noise removal on at start.
    pub enabled: bool,
    /// Attenuation limit in dB.
    pub strength_db: f32,
    /// Model name.
    pub model: String,
    /// License server chosen by the user (the IT policy and `$KRISP_SERVER` come first).
    pub server_url: Option<String>,
    /// The e-mail address signed in with (not a secret; shown by `krisp status`).
    pub account: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            input: None,
            enabled: true,
            strength_db: krisp_dsp::FULL_STRENGTH_DB,
            model: krisp_dsp::DEFAULT_MODEL.into(),
            server_url: None,
            account: None,
        }
    }
}

/// `$KRISP_CONFIG_DIR` or the platform config dir (`~/.config/krisp` on Linux).
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KRISP_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    directories::ProjectDirs::from("", "", "krisp")
        .map(|p| p.config_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".krisp"))
}

fn path() -> PathBuf {
    config_dir().join("settings.toml")
}

impl Settings {
    /// Loads the settings; a missing file gives defaults, a corrupt one is backed up and
    /// reported (the second value is that warning).
    pub fn load() -> (Settings, Option<String>) {
        load_from(&path())
    }

    /// Writes the settings atomically.
    pub fn save(&self) -> Result<()> {
        save_to(&path(), self)
    }
}

pub fn load_from(p: &Path) -> (Settings, Option<String>) {
    match std::fs::read_to_string(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Settings::default(), None),
        Err(e) => (
            Settings::default(),
            Some(format!("cannot read {}: {e}; using defaults", p.display())),
        ),
        Ok(text) => match toml::from_str(&text) {
            Ok(s) => (s, None),
            Err(e) => {
                let backup = p.with_extension(format!(
                    "toml.corrupt-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                let _ = std::fs::copy(p, &backup);
                (
                    Settings::default(),
                    Some(format!(
                        "settings file {} is corrupt ({}); kept a copy at {} and using defaults",
                        p.display(),
                        e.message(),
                        backup.display()
                    )),
                )
            }
        },
    }
}

pub fn save_to(p: &Path, s: &Settings) -> Result<()> {
    let dir = p.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = toml::to_string_pretty(s)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), text)?;
    tmp.persist(p)
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("krisp/settings.toml");
        let s = Settings {
            input: Some("usb_mic".into()),
            enabled: false,
            strength_db: 12.0,
            model: "rnnoise".into(),
            server_url: Some("https://licenses.example.org".into()),
            account: Some("ada@example.com".into()),
        };
        save_to(&p, &s).unwrap();
        assert_eq!(load_from(&p), (s, None));
    }

    #[test]
    fn corrupt_settings_are_backed_up_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("settings.toml");
        std::fs::write(&p, "input = [not toml").unwrap();
        let (s, warning) = load_from(&p);
        assert_eq!(s, Settings::default());
        let w = warning.unwrap();
        assert!(w.contains("corrupt"), "{w}");
        let backups: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(backups.len(), 1);
        assert_eq!(
            std::fs::read_to_string(backups[0].path()).unwrap(),
            "input = [not toml"
        );
    }
}
