//! Test harness: the real krisp-server in-process on loopback (SQLite in a temp dir, a signing
//! key file so a restarted server signs with the same key, manual clocks), plus tiny raw TCP
//! responders and a recording proxy.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyring_core::api::CredentialStore;
use krisp_license::krisp_token::{KeySet, PublicKey};
use krisp_license::{ClientConfig, Clock, KeyringStore, LicenseClient, SecretStore};
use serde_json::{Value, json};

/// Start of the manual clocks (Unix seconds).
pub const T0: i64 = 1_700_000_000;
pub const DAY: i64 = 86_400;

pub struct Backend {
    pub server: Option<krisp_server::Server>,
    pub addr: SocketAddr,
    pub clock: krisp_server::Clock,
    tmp: tempfile::TempDir,
}

impl Backend {
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let clock = krisp_server::Clock::manual(T0);
        let server = start_server(&tmp, clock.clone(), "127.0.0.1:0".parse().expect("lit")).await;
        Self {
            addr: server.local_addr(),
            server: Some(server),
            clock,
            tmp,
        }
    }

    /// Moves the server's manual clock to `t` (it only has `advance`).
    pub fn set_time(&self, t: i64) {
        self.clock.advance(t - self.clock.now());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server (the port then refuses connections).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Starts it again on the same address, database and signing key.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.server = Some(start_server(&self.tmp, self.clock.clone(), self.addr).await);
    }

    fn server(&self) -> &krisp_server::Server {
        self.server.as_ref().expect("server running")
    }

    pub fn code_for(&self, email: &str) -> String {
        self.server()
            .outbox()
            .and_then(|o| o.last_code_for(email))
            .expect("a code was sent")
    }

    /// The keys a client would embed, as the server publishes them at GET /v1/keys.
    pub async fn keyset(&self) -> KeySet {
        let v: Value = http()
            .get(format!("{}/v1/keys", self.url()))
            .send()
            .await
            .expect("GET /v1/keys")
            .json()
            .await
            .expect("keys JSON");
        let mut ks = KeySet::new();
        for k in v["keys"].as_array().expect("keys array") {
            ks.insert(
                k["kid"].as_str().expect("kid"),
                PublicKey::from_base64(k["public_key"].as_str().expect("key")).expect("key"),
            );
        }
        ks
    }

    /// Signs `email` in directly (not through the client) and returns its access token.
    pub async fn access_token_for(&self, email: &str) -> String {
        let c = http();
        c.post(format!("{}/v1/auth/email", self.url()))
            .json(&json!({ "email": email }))
            .send()
            .await
            .expect("code request");
        let v: Value = c
            .post(format!("{}/v1/auth/verify", self.url()))
            .json(&json!({ "email": email, "code": self.code_for(email) }))
            .send()
            .await
            .expect("verify")
            .json()
            .await
            .expect("session JSON");
        v["access_token"].as_str().expect("access token").to_owned()
    }

    /// Creates an organisation owned by `admin_email` and returns its enrolment token.
    pub async fn org_enrolment_token(&self, admin_email: &str) -> String {
        let access = self.access_token_for(admin_email).await;
        let c = http();
        let org: Value = c
            .post(format!("{}/v1/orgs", self.url()))
            .bearer_auth(&access)
            .json(&json!({ "name": "Acme IT", "seats": 5 }))
            .send()
            .await
            .expect("create org")
            .json()
            .await
            .expect("org JSON");
        let id = org["id"].as_str().expect("org id");
        let t: Value = c
            .post(format!("{}/v1/orgs/{id}/enrolment-token", self.url()))
            .bearer_auth(&access)
            .send()
            .await
            .expect("enrolment token")
            .json()
            .await
            .expect("token JSON");
        t["enrolment_token"].as_str().expect("token").to_owned()
    }
}

async fn start_server(
    tmp: &tempfile::TempDir,
    clock: krisp_server::Clock,
    listen: SocketAddr,
) -> krisp_server::Server {
    let cfg = krisp_server::Config {
        listen,
        database_url: format!("sqlite://{}", tmp.path().join("krisp.db").display()),
        signing_key: krisp_server::KeySource::File(tmp.path().join("keys.txt")),
        dev_outbox: true,
        clock,
        limits: krisp_server::Limits {
            auth_per_ip: 1_000,
            ban_after: 2_000,
            requests_per_sec_per_ip: 0,
            ..krisp_server::Limits::default()
        },
        max_connections: 4,
        ..krisp_server::Config::default()
    };
    // The port of a just-stopped server may take a moment to be free again.
    let mut last = None;
    for _ in 0..50 {
        match krisp_server::start(cfg.clone()).await {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server did not start: {last:?}");
}

pub fn http() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider (as in the client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("reqwest client")
}

/// A fresh keyring-core mock store; the same `Arc` can back several clients (a restart).
pub fn mock_store() -> Arc<CredentialStore> {
    keyring_core::mock::Store::new().expect("mock store")
}

pub fn keyring(store: &Arc<CredentialStore>) -> Box<dyn SecretStore> {
    Box::new(KeyringStore::new(store.clone()))
}

pub fn client(
    url: &str,
    device_id: &str,
    keys: KeySet,
    clock: &Clock,
    store: Box<dyn SecretStore>,
) -> LicenseClient {
    let mut cfg = ClientConfig::new(url, device_id, keys);
    cfg.clock = clock.clone();
    cfg.timeout = Duration::from_secs(10);
    LicenseClient::new(cfg, store).expect("client")
}

/// Signs `email` in through the client (reading the code from the server's outbox).
pub async fn sign_in(backend: &Backend, c: &LicenseClient, email: &str) {
    c.request_code(email).await.expect("request code");
    c.sign_in(email, &backend.code_for(email))
        .await
        .expect("sign in");
}

// ---------------------------------------------------------------- raw TCP helpers

fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end..].to_vec()))
}

/// Answers every connection with `response` (raw bytes) and closes it.
pub fn canned_responder(response: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = read_request(&mut s);
            let _ = s.write_all(response);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://{addr}")
}

/// One request the client sent through the [`recording_proxy`].
#[derive(Debug, Clone)]
pub struct Recorded {
    pub request_line: String,
    pub body: Vec<u8>,
}

/// A plain HTTP/1.1 proxy in front of `upstream` that records every request line and body.
pub fn recording_proxy(upstream: SocketAddr) -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let log = log2.clone();
            std::thread::spawn(move || {
                // One request per connection: the answer closes it.
                if let Some((head, body)) = read_request(&mut s) {
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or_default().to_owned();
                    log.lock().expect("log").push(Recorded {
                        request_line: request_line.clone(),
                        body: body.clone(),
                    });
                    // One upstream connection per request, closed after the answer.
                    let mut out = format!("{request_line}\r\n");
                    for h in lines.filter(|l| !l.is_empty()) {
                        if !h.to_ascii_lowercase().starts_with("connection:") {
                            out.push_str(h);
                            out.push_str("\r\n");
                        }
                    }
                    out.push_str("connection: close\r\n\r\n");
                    let Ok(mut up) = TcpStream::connect(upstream) else {
                        return;
                    };
                    if up.write_all(out.as_bytes()).is_err() || up.write_all(&body).is_err() {
                        return;
                    }
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer);
                    let _ = s.write_all(&answer);
                    // The answer says "connection: close"; end this client connection too.
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            });
        }
    });
    (format!("http://{addr}"), log)
}
