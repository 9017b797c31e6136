//! Test harness: starts the server in-process on loopback (SQLite file or a fresh database on
//! a PostgreSQL instance this test binary starts once), and talks to it with reqwest.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use krisp_server::{Clock, Config, KeySource, Limits, Server};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// Start of the manual test clock (Unix seconds).
pub const T0: i64 = 1_700_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// Declares each async `fn name(kind: Kind)` as `sqlite::name` and `postgres::name` tests.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name(crate::common::Kind::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { super::$name(crate::common::Kind::Postgres).await } )*
        }
    };
}

// ---------------------------------------------------------------- PostgreSQL

pub struct Pg {
    pub port: u16,
    pub dir: PathBuf,
}

static PG: OnceLock<Option<Pg>> = OnceLock::new();
static DB_SEQ: AtomicU32 = AtomicU32::new(0);

fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("KRISP_PG_BIN") {
        let d = PathBuf::from(d);
        return (d.join("postgres").exists() && d.join("initdb").exists()).then_some(d);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn as_pg_user(bin: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// The supervisor is deliberately never waited for: it must outlive this process.
#[allow(clippy::zombie_processes)]
fn start_pg() -> Option<Pg> {
    let Some(bin) = pg_bin_dir() else {
        if std::env::var("KRISP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!(
                "KRISP_REQUIRE_SERVERS=1 but no PostgreSQL binaries (apt-get install postgresql)"
            );
        }
        // Straight to stderr, not eprintln!: the test harness would capture and hide that.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n\n!!!!!!!! SKIPPING ALL POSTGRESQL TESTS: no /usr/lib/postgresql/*/bin/postgres \
             (apt-get install -y postgresql, or set KRISP_PG_BIN; CI sets KRISP_REQUIRE_SERVERS=1) \
             !!!!!!!!\n\n"
        );
        return None;
    };
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("krisp-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    if root {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(ok.success(), "chown of the PostgreSQL dir failed");
    }
    let data = dir.join("data");
    let out = as_pg_user(&bin.join("initdb"), root)
        .arg("-D")
        .arg(&data)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        .output()
        .expect("running initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    // A supervisor outlives this process by design: when the test binary exits (pass, fail,
    // panic or kill) it stops PostgreSQL and removes the directory.
    let script = format!(
        r#"{run} "{bin}/postgres" -D "{d}/data" -p {port} -k "{d}" -c listen_addresses=127.0.0.1 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
             >"{d}/pg.log" 2>&1 &
           while kill -0 {me} 2>/dev/null; do sleep 0.5; done
           if [ -f "{d}/data/postmaster.pid" ]; then kill -INT "$(head -1 "{d}/data/postmaster.pid")"; fi
           for i in $(seq 1 50); do [ -f "{d}/data/postmaster.pid" ] || break; sleep 0.2; done
           rm -rf "{d}""#,
        run = if root { "runuser -u postgres --" } else { "" },
        bin = bin.display(),
        d = dir.display(),
        me = std::process::id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the PostgreSQL supervisor");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = as_pg_user(&bin.join("pg_isready"), false)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-q",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not start; log: {}",
            std::fs::read_to_string(dir.join("pg.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "PostgreSQL {} on 127.0.0.1:{port} ({})",
        bin.display(),
        dir.display()
    );
    Some(Pg { port, dir })
}

/// A fresh, empty PostgreSQL database URL, or `None` (after a loud message) if PostgreSQL is
/// not installed.
pub async fn fresh_pg_database() -> Option<String> {
    let pg = tokio::task::spawn_blocking(|| PG.get_or_init(start_pg).as_ref().map(|p| p.port))
        .await
        .expect("PostgreSQL start-up thread")?;
    let name = format!(
        "krisp_t{}_{}",
        std::process::id(),
        DB_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::any::install_default_drivers();
    let admin = format!("postgres://postgres@127.0.0.1:{pg}/postgres");
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect to test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    Some(format!("postgres://postgres@127.0.0.1:{pg}/{name}"))
}

// ---------------------------------------------------------------- server + client

pub struct Ctx {
    pub server: Server,
    pub client: reqwest::Client,
    pub base: String,
    pub clock: Clock,
    pub db_url: String,
    pub kind: Kind,
    _tmp: Option<tempfile::TempDir>,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub struct Session {
    pub access: String,
    pub refresh: String,
    pub account_id: String,
    pub email: String,
}

/// Generous limits so ordinary tests never trip them; rate-limit tests tighten them.
pub fn test_limits() -> Limits {
    Limits {
        auth_per_ip: 1_000,
        ban_after: 2_000,
        requests_per_sec_per_ip: 0,
        ..Limits::default()
    }
}

pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("reqwest client")
}

impl Ctx {
    pub async fn new(kind: Kind) -> Option<Self> {
        Self::with(kind, |_| {}).await
    }

    pub async fn with(kind: Kind, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let (db_url, tmp) = match kind {
            Kind::Sqlite => {
                let tmp = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", tmp.path().join("krisp.db").display());
                (url, Some(tmp))
            }
            Kind::Postgres => (fresh_pg_database().await?, None),
        };
        let clock = Clock::manual(T0);
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().expect("literal"),
            database_url: db_url.clone(),
            signing_key: KeySource::Ephemeral,
            dev_outbox: true,
            clock: clock.clone(),
            limits: test_limits(),
            max_connections: 8,
            ..Config::default()
        };
        tweak(&mut cfg);
        let clock = cfg.clock.clone();
        let server = krisp_server::start(cfg).await.expect("server starts");
        Some(Self {
            base: server.url(),
            server,
            client: client(),
            clock,
            db_url,
            kind,
            _tmp: tmp,
        })
    }

    /// A second instance on the same database and clock (multi-instance behaviour).
    pub async fn another_instance(&self) -> Server {
        krisp_server::start(Config {
            listen: "127.0.0.1:0".parse().expect("literal"),
            database_url: self.db_url.clone(),
            signing_key: KeySource::Ephemeral,
            dev_outbox: true,
            clock: self.clock.clone(),
            limits: test_limits(),
            max_connections: 4,
            ..Config::default()
        })
        .await
        .expect("second instance starts")
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        self.send_to(&self.base, method, path, token, body).await
    }

    pub async fn send_to(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.expect("HTTP request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send(reqwest::Method::POST, path, token, Some(&body))
            .await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send(reqwest::Method::PUT, path, token, Some(&body))
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(reqwest::Method::DELETE, path, token, None).await
    }

    pub fn code_for(&self, email: &str) -> String {
        self.server
            .outbox()
            .and_then(|o| o.last_code_for(email))
            .expect("a code was sent")
    }

    pub async fn request_code(&self, email: &str) -> String {
        let r = self
            .post("/v1/auth/email", None, json!({ "email": email }))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        self.code_for(email)
    }

    pub async fn sign_in(&self, email: &str) -> Session {
        let code = self.request_code(email).await;
        let r = self
            .post(
                "/v1/auth/verify",
                None,
                json!({ "email": email, "code": code }),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        Session {
            access: r.body["access_token"].as_str().expect("access").to_owned(),
            refresh: r.body["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
            account_id: r.body["account_id"].as_str().expect("id").to_owned(),
            email: email.to_owned(),
        }
    }

    pub async fn activate(&self, s: &Session, device_id: &str) -> Resp {
        self.post(
            "/v1/devices",
            Some(&s.access),
            json!({ "device_id": device_id, "name": "Test laptop", "os": "linux" }),
        )
        .await
    }

    pub async fn license(&self, token: &str, device_id: &str) -> Resp {
        self.post(
            "/v1/license",
            Some(token),
            json!({ "device_id": device_id }),
        )
        .await
    }

    /// Public keys as a client would embed them, fetched from `GET /v1/keys`.
    pub async fn keyset(&self) -> krisp_server::krisp_token::KeySet {
        let r = self.get("/v1/keys", None).await;
        let mut ks = krisp_server::krisp_token::KeySet::new();
        for k in r.body["keys"].as_array().expect("keys") {
            ks.insert(
                k["kid"].as_str().expect("kid"),
                krisp_server::krisp_token::PublicKey::from_base64(
                    k["public_key"].as_str().expect("public_key"),
                )
                .expect("valid key"),
            );
        }
        ks
    }

    /// Every row of every table of the database, as text (one string per row).
    pub async fn dump_all_rows(&self) -> Vec<(String, String)> {
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.db_url)
            .await
            .expect("connect for inspection");
        let tables: Vec<(String,)> = match self.kind {
            Kind::Sqlite => sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
            ),
            Kind::Postgres => sqlx::query_as(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
                 AND tablename <> '_sqlx_migrations' ORDER BY tablename",
            ),
        }
        .fetch_all(&mut conn)
        .await
        .expect("list tables");
        assert!(tables.len() >= 8, "expected all tables, got {tables:?}");
        let mut out = Vec::new();
        for (t,) in tables {
            let sql = match self.kind {
                Kind::Sqlite => {
                    let cols: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT name FROM pragma_table_info('{t}')"
                    )))
                    .fetch_all(&mut conn)
                    .await
                    .expect("columns");
                    let expr: Vec<String> = cols
                        .iter()
                        .map(|(c,)| format!("COALESCE(CAST(\"{c}\" AS TEXT), 'NULL')"))
                        .collect();
                    format!("SELECT {} FROM \"{t}\"", expr.join(" || '|' || "))
                }
                Kind::Postgres => format!("SELECT r::text FROM \"{t}\" r"),
            };
            let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .expect("dump table");
            out.extend(rows.into_iter().map(|(r,)| (t.clone(), r)));
        }
        out
    }
}

/// reqwest is built with rustls but no default provider (the workspace picks ring once per
/// binary); tests install it before building clients. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
