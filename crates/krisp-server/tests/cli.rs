//! The `krisp-server` binary itself: starts with no set-up, prints dev codes to its log,
//! refuses unsafe or broken configuration with clear messages, rotates keys.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_krisp-server");

/// Kills the child on drop, so a failing test never leaves a server behind.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(dir: &std::path::Path, args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn krisp-server");
    let log = Arc::new(Mutex::new(String::new()));
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut l = log.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    Running { child, log }
}

async fn wait_healthy(base: &str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = c.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server did not become healthy");
}

fn code_from_log(log: &str, email: &str) -> Option<String> {
    let marker = format!("sign-in code for {email} is ");
    log.lines()
        .rev()
        .filter(|l| l.contains("DEV MAIL") && l.contains(&marker))
        .filter_map(|l| l.split(&marker).nth(1))
        .find_map(|rest| rest.get(..6))
        .map(str::to_owned)
}

#[tokio::test]
async fn binary_starts_with_no_setup_and_logs_dev_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = spawn(dir.path(), &["--listen", &listen]);
    let base = format!("http://{listen}");
    wait_healthy(&base).await;
    assert!(
        dir.path().join("krisp.db").exists(),
        "SQLite file created in the working dir"
    );
    let keyfile = dir.path().join("krisp-signing-keys.txt");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&keyfile)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "signing key readable by owner only");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v1/auth/email"))
        .json(&json!({"email": "dev@example.com"}))
        .send()
        .await
        .expect("request code");
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        let log = server.log.lock().expect("log").clone();
        if let Some(code) = code_from_log(&log, "dev@example.com") {
            break code;
        }
        assert!(Instant::now() < deadline, "no DEV MAIL line in log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = c
        .post(format!("{base}/v1/auth/verify"))
        .json(&json!({"email": "dev@example.com", "code": code}))
        .send()
        .await
        .expect("verify");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("ka_"))
    );
    let log = server.log.lock().expect("log").clone();
    assert!(
        !log.contains(body["access_token"].as_str().unwrap_or("-")),
        "tokens never logged"
    );
}

fn run_to_end(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run krisp-server");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn unsafe_or_broken_configuration_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, text) = run_to_end(dir.path(), &["--listen", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(text.contains("refusing plain HTTP"), "{text}");
    let (ok, text) = run_to_end(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--database-url", "mysql://x/y"],
    );
    assert!(!ok);
    assert!(text.contains("unsupported database URL"), "{text}");
    let (ok, text) = run_to_end(dir.path(), &["--tls-cert", "/nonexistent.pem"]);
    assert!(!ok, "a certificate without a key is refused");
    assert!(text.contains("--tls-key"), "{text}");
    std::fs::write(dir.path().join("bad-keys.txt"), "k1 not-a-key\n").expect("write");
    let (ok, text) = run_to_end(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--signing-key", "bad-keys.txt"],
    );
    assert!(!ok);
    assert!(
        text.contains("signing key") && text.contains("line 1"),
        "{text}"
    );
}

#[tokio::test]
async fn rotated_key_signs_and_old_key_stays_published() {
    let dir = tempfile::tempdir().expect("temp dir");
    for _ in 0..2 {
        let (ok, text) = run_to_end(dir.path(), &["rotate-key"]);
        assert!(ok, "{text}");
    }
    let keys = std::fs::read_to_string(dir.path().join("krisp-signing-keys.txt")).expect("keys");
    let kids: Vec<&str> = keys
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(kids.len(), 2);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _server = spawn(dir.path(), &["--listen", &listen]);
    let base = format!("http://{listen}");
    wait_healthy(&base).await;
    let v: Value = reqwest::get(format!("{base}/v1/keys"))
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    assert_eq!(v["current"], kids[1], "the last key signs");
    assert_eq!(
        v["keys"].as_array().map(Vec::len),
        Some(2),
        "both keys published"
    );
}
