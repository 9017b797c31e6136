//! Where the client keeps its secrets: the OS keyring (through keyring-core) or, where no
//! keyring is available, a private file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keyring_core::api::CredentialStore;

use crate::error::{Error, Result};

/// Keyring service name under which every secret is stored.
pub const SERVICE: &str = "krisp";

/// The names of everything the client stores.
pub(crate) mod keys {
    pub const REFRESH_TOKEN: &str = "refresh_token";
    pub const DEVICE_TOKEN: &str = "device_token";
    pub const LICENSE_TOKEN: &str = "license_token";
    pub const TRUSTED_TIME: &str = "trusted_time";
    pub const REVOKED: &str = "revoked";
    /// Written and deleted again to check that a keyring works.
    pub const PROBE: &str = "probe";
    pub const ALL: [&str; 5] = [
        REFRESH_TOKEN,
        DEVICE_TOKEN,
        LICENSE_TOKEN,
        TRUSTED_TIME,
        REVOKED,
    ];
}

/// Which kind of storage holds the secrets (shown to the user and in logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An OS credential store, named by its vendor string.
    Keyring(String),
    /// The fallback file at this path.
    File(PathBuf),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Keyring(v) => write!(f, "system keyring ({v})"),
            Backend::File(p) => write!(f, "private file {}", p.display()),
        }
    }
}

/// A small key-value store for secrets.
pub trait SecretStore: Send + Sync {
    /// The value under `key`, or `None` if there is none.
    fn get(&self, key: &str) -> Result<Option<String>>;
    /// Stores `value` under `key`, replacing any old value.
    fn set(&self, key: &str, value: &str) -> Result<()>;
    /// Removes `key`; removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// What kind of storage this is.
    fn backend(&self) -> Backend;
}

/// Secrets in a keyring-core credential store (the OS keyring in the app, the mock store in
/// tests).
pub struct KeyringStore {
    store: Arc<CredentialStore>,
    service: String,
}

impl KeyringStore {
    /// Uses `store` directly (no process-wide state).
    pub fn new(store: Arc<CredentialStore>) -> Self {
        Self {
            store,
            service: SERVICE.to_owned(),
        }
    }

    /// Uses keyring-core's default store, if the app has set one.
    pub fn from_default_store() -> Option<Self> {
        keyring_core::get_default_store().map(Self::new)
    }

    fn entry(&self, key: &str) -> Result<keyring_core::Entry> {
        self.store
            .build(&self.service, key, None)
            .map_err(|e| Error::Keyring(e.to_string()))
    }
}

impl SecretStore for KeyringStore {
    fn get(&self, key: &str) -> Result<Option<String>> {
        match self.entry(key)?.get_password() {
            Ok(v) => Ok(Some(v)),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(Error::Keyring(e.to_string())),
        }
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        self.entry(key)?
            .set_password(value)
            .map_err(|e| Error::Keyring(e.to_string()))
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.entry(key)?.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(Error::Keyring(e.to_string())),
        }
    }

    fn backend(&self) -> Backend {
        Backend::Keyring(self.store.vendor())
    }
}

/// Fallback for machines without a keyring: a JSON map in a file only the user can read
/// (mode 0600 in a 0700 directory), replaced atomically on every write.
pub struct FileStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileStore {
    /// A store in `dir` (created with mode 0700 if missing) in the file `secrets.json`.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        // An existing directory may have been created more open than we want.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            Error::Io {
                path: dir.to_owned(),
                source,
            }
        })?;
        Ok(Self {
            path: dir.join("secrets.json"),
            lock: Mutex::new(()),
        })
    }

    /// The file holding the secrets.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<BTreeMap<String, String>> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Format {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(Error::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn write(&self, map: &BTreeMap<String, String>) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| Error::Io {
            path: tmp.clone(),
            source,
        };
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let body = serde_json::to_vec(map).map_err(|e| Error::Format {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }
}

impl SecretStore for FileStore {
    fn get(&self, key: &str) -> Result<Option<String>> {
        self.locked(|| Ok(self.read()?.get(key).cloned()))
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        self.locked(|| {
            let mut map = self.read()?;
            map.insert(key.to_owned(), value.to_owned());
            self.write(&map)
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.locked(|| {
            let mut map = self.read()?;
            if map.remove(key).is_some() {
                self.write(&map)?;
            }
            Ok(())
        })
    }

    fn backend(&self) -> Backend {
        Backend::File(self.path.clone())
    }
}

/// Makes the platform keyring (through the `keyring` crate) keyring-core's default store.
#[cfg(feature = "system-keyring")]
pub fn install_system_keyring() -> Result<()> {
    keyring::Entry::store_status()
        .as_ref()
        .map_err(|e| Error::Keyring(e.to_string()))?;
    Ok(())
}

/// How long [`default_store`] waits for the keyring to answer its probe.
pub const KEYRING_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The keyring if one is available and answers (with feature `system-keyring`, the platform
/// keyring; otherwise a keyring-core default store the app installed), else the file store in
/// `fallback_dir`. "Answers" is checked by storing and deleting a probe entry within
/// [`KEYRING_PROBE_TIMEOUT`]: on Linux the Secret Service store is created without contacting
/// D-Bus, a headless machine has no Secret Service, and one without an unlocked collection
/// fails or waits for a prompt when asked to store.
pub fn default_store(fallback_dir: impl AsRef<Path>) -> Result<Box<dyn SecretStore>> {
    #[cfg(feature = "system-keyring")]
    if keyring_core::get_default_store().is_none()
        && let Err(e) = install_system_keyring()
    {
        tracing::warn!(error = %e, "the system keyring is not available");
    }
    if let Some(k) = KeyringStore::from_default_store() {
        // A Secret Service that is activated but has no unlocked collection may wait for a
        // password prompt nobody sees: give it a few seconds, then use the file.
        let probe = KeyringStore::new(k.store.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = std::thread::Builder::new()
            .name("krisp-keyring-probe".into())
            .spawn(move || {
                // A write, not only a read: a Secret Service without a usable collection
                // answers searches but fails (or prompts) on storing.
                let r = probe
                    .set(keys::PROBE, "1")
                    .and_then(|()| probe.delete(keys::PROBE));
                let _ = tx.send(r);
            });
        match rx.recv_timeout(KEYRING_PROBE_TIMEOUT) {
            Ok(Ok(())) => return Ok(Box::new(k)),
            Ok(Err(e)) => tracing::warn!(error = %e, "the system keyring does not answer"),
            Err(_) => tracing::warn!(
                "the system keyring did not answer within {} s",
                KEYRING_PROBE_TIMEOUT.as_secs()
            ),
        }
    }
    tracing::warn!(
        dir = %fallback_dir.as_ref().display(),
        "no system keyring available: keeping license secrets in a private file"
    );
    Ok(Box::new(FileStore::new(fallback_dir)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mock() -> KeyringStore {
        KeyringStore::new(keyring_core::mock::Store::new().expect("mock store"))
    }

    fn round_trip(store: &dyn SecretStore) {
        assert_eq!(store.get("a").expect("get"), None);
        store.set("a", "one").expect("set");
        store.set("b", "two").expect("set");
        assert_eq!(store.get("a").expect("get").as_deref(), Some("one"));
        store.set("a", "uno").expect("overwrite");
        assert_eq!(store.get("a").expect("get").as_deref(), Some("uno"));
        store.delete("a").expect("delete");
        store.delete("a").expect("deleting twice is fine");
        assert_eq!(store.get("a").expect("get"), None);
        assert_eq!(store.get("b").expect("get").as_deref(), Some("two"));
    }

    #[test]
    fn keyring_store_round_trips_on_the_mock_store() {
        let s = mock();
        round_trip(&s);
        assert!(matches!(s.backend(), Backend::Keyring(v) if v.contains("Mock")));
    }

    #[test]
    fn keyring_errors_surface_as_keyring_errors() {
        let s = mock();
        s.set("k", "v").expect("set");
        let entry = s.entry("k").expect("entry");
        let cred: &keyring_core::mock::Cred = entry.as_any().downcast_ref().expect("mock cred");
        cred.set_error(keyring_core::Error::NoStorageAccess(
            "locked".to_string().into(),
        ));
        assert!(matches!(s.get("k"), Err(Error::Keyring(_))));
        // The injected error is one-shot; the secret is still there.
        assert_eq!(s.get("k").expect("get").as_deref(), Some("v"));
    }

    #[test]
    fn file_store_round_trips_with_private_permissions() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("krisp");
        let s = FileStore::new(&dir).expect("file store");
        round_trip(&s);
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(s.path()), 0o600);
        assert_eq!(s.backend(), Backend::File(dir.join("secrets.json")));
        // A second instance sees what the first stored.
        let again = FileStore::new(&dir).expect("file store");
        assert_eq!(again.get("b").expect("get").as_deref(), Some("two"));
    }

    #[test]
    fn corrupt_secret_file_is_a_format_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = FileStore::new(tmp.path()).expect("file store");
        fs::write(s.path(), b"not json").expect("write");
        assert!(matches!(s.get("a"), Err(Error::Format { .. })));
    }
}
