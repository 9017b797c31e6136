//! The real platform keyring (feature `system-keyring`). On Linux it needs a Secret Service:
//!
//! ```sh
//! dbus-run-session -- sh -c 'export HOME=$(mktemp -d); echo -n x | gnome-keyring-daemon \
//!   --unlock --components=secrets >/dev/null; \
//!   cargo test -p krisp-license --features system-keyring --test system_keyring'
//! ```
#![cfg(feature = "system-keyring")]

use krisp_license::{Backend, default_store, install_system_keyring};

#[test]
fn secrets_round_trip_through_the_platform_keyring() {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!! SKIPPING the platform keyring test: no D-Bus session (see this file's header) !!!!\n"
        );
        return;
    }
    install_system_keyring().expect("platform keyring available");
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = default_store(tmp.path()).expect("store");
    assert!(
        matches!(store.backend(), Backend::Keyring(_)),
        "{}",
        store.backend()
    );
    let key = format!("test_{}", std::process::id());
    store.set(&key, "s3cret").expect("set");
    assert_eq!(store.get(&key).expect("get").as_deref(), Some("s3cret"));
    store.delete(&key).expect("delete");
    assert_eq!(store.get(&key).expect("get"), None);
}
