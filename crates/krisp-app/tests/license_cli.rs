//! `krisp login`, `krisp license`, `krisp logout` against the real license server on loopback
//! (krisp-server in this process, SQLite in a temp dir, its dev outbox standing in for the
//! SMTP relay), the way a user runs them: a separate `krisp` process reading the e-mail
//! address and the code from its terminal.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::backend::Backend;

/// A user's machine: its own config folder (settings, device id, the private secrets file).
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn krisp(&self, backend_url: &str, keys: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_krisp"));
        c.env("KRISP_CONFIG_DIR", self.config())
            .env("KRISP_SERVER", backend_url)
            .env("KRISP_DEV_TRUSTED_KEYS", keys)
            .env("KRISP_POLICY_FILE", self.dir.path().join("no-policy.toml"))
            // No desktop session: no Secret Service answers, so secrets go to the private
            // file (the fallback path); the keyring path has its own test below.
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("RUST_LOG");
        c
    }

    fn secrets(&self) -> Value {
        std::fs::read(self.config().join("secrets").join("secrets.json"))
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or(Value::Null)
    }
}

fn license_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "krisp license failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `krisp login`, answering the code prompt with the code the server mailed.
fn login(m: &Machine, b: &Backend, email: &str) -> Output {
    login_with(m, b, email, |_| {})
}

/// [`login`] with `setup` applied to the command first (e.g. a desktop session's bus).
fn login_with(m: &Machine, b: &Backend, email: &str, setup: impl Fn(&mut Command)) -> Output {
    let earlier = b.code_for(email);
    let mut cmd = m.krisp(&b.url, &b.keys);
    setup(&mut cmd);
    let mut child = cmd
        .args(["login", "--email", email])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let code = loop {
        if let Some(c) = b.code_for(email).filter(|c| Some(c) != earlier.as_ref()) {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no code was mailed to {email}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    child.wait_with_output().unwrap()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn sign_in_activate_show_and_sign_out_from_the_command_line() {
    let mut b = Backend::start();
    let m = Machine::new();

    // Before signing in: unlicensed, and the status says what to do.
    let v = license_json(
        m.krisp(&b.url, &b.keys)
            .args(["license", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["state"], "unlicensed", "{v}");
    assert_eq!(v["allows_noise_removal"], false);
    assert!(v["message"].as_str().unwrap().contains("sign in"), "{v}");

    let out = login(&m, &b, "ada@example.com");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "login failed: {stderr}");
    assert!(stderr.contains("signed in as ada@example.com"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Licensed"),
        "{out:?}"
    );

    // Licensed, bound to this machine's id, secrets in a private file (no keyring here).
    let v = license_json(
        m.krisp(&b.url, &b.keys)
            .args(["license", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(v["account"], "ada@example.com");
    assert!(
        v["expires"].as_str().unwrap().starts_with("renews by 20"),
        "{v}"
    );
    let id = std::fs::read_to_string(m.config().join("device-id")).unwrap();
    assert_eq!(v["device_id"], id.trim());
    assert_eq!(mode(&m.config().join("device-id")), 0o600);
    let secrets = m.config().join("secrets").join("secrets.json");
    assert_eq!(mode(&secrets), 0o600);
    let s = m.secrets();
    for k in ["refresh_token", "license_token"] {
        assert!(s.get(k).is_some(), "{k} missing from the store: {s}");
    }
    assert!(
        !std::fs::read_to_string(m.config().join("settings.toml"))
            .unwrap_or_default()
            .contains(s["refresh_token"].as_str().unwrap()),
        "a secret leaked into the settings file"
    );

    // A renewal with the server.
    let v = license_json(
        m.krisp(&b.url, &b.keys)
            .args(["license", "--check", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["state"], "active", "{v}");

    // A token copied to another machine does not work there.
    let other = Machine::new();
    std::fs::create_dir_all(other.config().join("secrets")).unwrap();
    std::fs::copy(
        &secrets,
        other.config().join("secrets").join("secrets.json"),
    )
    .unwrap();
    let v = license_json(
        other
            .krisp(&b.url, &b.keys)
            .args(["license", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("another computer"),
        "{v}"
    );

    // Sign-out frees the seat and forgets the secrets…
    let out = m.krisp(&b.url, &b.keys).arg("logout").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = m.secrets();
    for k in ["refresh_token", "device_token", "license_token"] {
        assert!(s.get(k).is_none(), "{k} left behind: {s}");
    }
    let v = license_json(
        m.krisp(&b.url, &b.keys)
            .args(["license", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["state"], "unlicensed", "{v}");

    // …but not while the server is down: then nothing is removed and the user is told.
    let out = login(&m, &b, "ada@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.stop();
    let out = m.krisp(&b.url, &b.keys).arg("logout").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was removed"), "{err}");
    assert!(m.secrets().get("refresh_token").is_some());
    // Offline, the stored license keeps working.
    let v = license_json(
        m.krisp(&b.url, &b.keys)
            .args(["license", "--check", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["allows_noise_removal"], true, "{v}");
}

/// A server that answers every request with an HTML error page (a captive portal, a proxy).
fn html_responder() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "<html><body><h1>502 Bad Gateway</h1></body></html>";
            let _ = write!(
                s,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_login_against_a_broken_or_absent_server_fails_with_a_clear_message() {
    let m = Machine::new();
    for url in [html_responder(), "http://127.0.0.1:9".to_owned()] {
        let out = m
            .krisp(&url, "")
            .args(["login", "--email", "ada@example.com"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("asking") && err.contains("for a sign-in code"),
            "{url}: {err}"
        );
        assert!(err.lines().count() <= 3, "not a short message: {err}");
        assert!(m.secrets().is_null(), "nothing stored after a failure");
    }
}

/// A private D-Bus session with gnome-keyring's Secret Service, unlocked, as on a desktop.
struct Desktop {
    dbus: std::process::Child,
    keyring: Option<std::process::Child>,
    address: String,
    _dir: tempfile::TempDir,
}

impl Desktop {
    fn start() -> Option<Desktop> {
        let have = |p: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !have("gnome-keyring-daemon") || !have("dbus-daemon") {
            assert!(
                std::env::var_os("KRISP_REQUIRE_SERVERS").is_none(),
                "gnome-keyring-daemon or dbus-daemon missing (KRISP_REQUIRE_SERVERS is set)"
            );
            eprintln!(
                "\n!!!! SKIPPING the keyring test: no gnome-keyring-daemon/dbus-daemon !!!!\n"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}/bus", dir.path().display());
        let dbus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", &format!("--address={address}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bus = dir.path().join("bus");
        let t = Instant::now();
        while !bus.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--unlock", "--components=secrets", "--foreground"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("HOME", dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The login keyring's password, as a desktop login would give it.
        let mut stdin = keyring.stdin.take().unwrap();
        stdin.write_all(b"test-password").unwrap();
        drop(stdin);
        Some(Desktop {
            dbus,
            keyring: Some(keyring),
            address,
            _dir: dir,
        })
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        if let Some(mut k) = self.keyring.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        let _ = self.dbus.kill();
        let _ = self.dbus.wait();
    }
}

#[test]
fn on_a_desktop_the_secrets_go_to_the_keyring_not_to_a_file() {
    let Some(desktop) = Desktop::start() else {
        return;
    };
    let b = Backend::start();
    let m = Machine::new();
    let with_desktop = |c: &mut Command| {
        c.env("DBUS_SESSION_BUS_ADDRESS", &desktop.address);
    };
    // The Secret Service needs a moment to claim its bus name.
    let t = Instant::now();
    let summary = loop {
        let mut c = m.krisp(&b.url, &b.keys);
        with_desktop(&mut c);
        let v = license_json(c.args(["license", "--json"]).output().unwrap());
        if v["secrets"].as_str().unwrap().contains("keyring")
            || t.elapsed() > Duration::from_secs(10)
        {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        summary["secrets"]
            .as_str()
            .unwrap()
            .contains("system keyring"),
        "{summary}"
    );

    let out = login_with(&m, &b, "grace@example.com", with_desktop);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Secrets are kept in system keyring"), "{err}");
    assert!(
        m.secrets().is_null(),
        "a secrets file was written: {}",
        m.secrets()
    );

    let mut c = m.krisp(&b.url, &b.keys);
    with_desktop(&mut c);
    let v = license_json(c.args(["license", "--json"]).output().unwrap());
    assert_eq!(v["state"], "active", "{v}");

    // Without the desktop session the same machine has no access to them.
    let v = license_json(
        m.krisp(&b.url, &b.keys)
            .args(["license", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["state"], "unlicensed", "{v}");

    let mut c = m.krisp(&b.url, &b.keys);
    with_desktop(&mut c);
    let out = c.arg("logout").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = m.krisp(&b.url, &b.keys);
    with_desktop(&mut c);
    let v = license_json(c.args(["license", "--json"]).output().unwrap());
    assert_eq!(
        v["state"], "unlicensed",
        "logout left the keyring entries: {v}"
    );
}

/// A session bus where the Secret Service can be activated but has no unlocked collection
/// (a headless login, a fresh account): storing would fail or wait for a prompt nobody
/// sees. Krisp must not hang or fail: it keeps its secrets in the private file.
#[test]
fn a_keyring_that_cannot_store_falls_back_to_the_private_file() {
    if Command::new("sh")
        .args(["-c", "command -v dbus-daemon"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        assert!(
            std::env::var_os("KRISP_REQUIRE_SERVERS").is_none(),
            "no dbus-daemon"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}/bus", dir.path().display());
    let mut dbus = Command::new("dbus-daemon")
        .args(["--session", "--nofork", &format!("--address={address}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !dir.path().join("bus").exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = Machine::new();
    let t = Instant::now();
    let out = m
        .krisp("http://127.0.0.1:9", "")
        .args(["license", "--json"])
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let took = t.elapsed();
    let _ = dbus.kill();
    let _ = dbus.wait();
    let _ = Command::new("pkill")
        .args([
            "-f",
            &format!("gnome-keyring-daemon.*{}", dir.path().display()),
        ])
        .status();
    let v = license_json(out);
    assert!(
        v["secrets"].as_str().unwrap().contains("private file"),
        "{v}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}
