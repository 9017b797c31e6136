//! Server configuration: what the CLI flags fill in, and what tests build directly.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::clock::Clock;

/// Where the Ed25519 license-signing keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A key file (one `<kid> <base64url secret>` per line, the last line signs). Created with
    /// a fresh key if it does not exist (development default).
    File(PathBuf),
    /// The same format in an environment variable's value (lines or `;`-separated).
    Env(String),
    /// A fresh random key held in memory only (tests).
    Ephemeral,
}

/// PEM files for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Rate-limit and abuse settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Length of a rate-limit window for sign-in, seconds.
    pub window_secs: i64,
    /// Sign-in codes one address may request per window.
    pub codes_per_email: i64,
    /// Sign-in requests plus failed code checks one IP may make per window.
    pub auth_per_ip: i64,
    /// An IP that keeps going past this many in one window is banned.
    pub ban_after: i64,
    /// Ban length, seconds.
    pub ban_secs: i64,
    /// General per-IP request budget per second on this instance (0 = off). In memory, so
    /// per instance; the sign-in limits above are in the database and hold across instances.
    pub requests_per_sec_per_ip: u32,
    /// Wrong tries a code survives.
    pub max_code_attempts: i64,
    /// Wrong codes one address may see per hour, over all its codes (all instances).
    pub failures_per_email_hour: i64,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window_secs: 600,
            codes_per_email: 5,
            auth_per_ip: 30,
            ban_after: 60,
            ban_secs: 3600,
            requests_per_sec_per_ip: 100,
            max_code_attempts: 5,
            failures_per_email_hour: 10,
            max_body_bytes: 16 * 1024,
        }
    }
}

/// Lifetimes and plan policy, seconds.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Sign-in code lifetime.
    pub code_ttl: i64,
    /// Access token lifetime.
    pub access_ttl: i64,
    /// Refresh token (session) lifetime.
    pub refresh_ttl: i64,
    /// License token validity (`exp - iat`).
    pub license_ttl: i64,
    /// Offline grace after `exp`.
    pub license_grace: i64,
    /// Length of the free trial of a new personal account.
    pub trial_secs: i64,
    /// Devices a personal trial may activate.
    pub trial_seats: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            code_ttl: 600,
            access_ttl: 900,
            refresh_ttl: 30 * 86_400,
            license_ttl: 86_400,
            license_grace: 7 * 86_400,
            trial_secs: 14 * 86_400,
            trial_seats: 2,
        }
    }
}

/// Everything [`crate::start`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite://path` or `postgres://…`.
    pub database_url: String,
    /// Serve HTTPS with these files; plain HTTP when `None` (loopback development only).
    pub tls: Option<TlsFiles>,
    /// License signing keys.
    pub signing_key: KeySource,
    /// `smtp://…` or `smtps://…` relay (lettre URL syntax). `None`: codes go to the log.
    pub smtp_url: Option<String>,
    /// Sender address of sign-in mails.
    pub mail_from: String,
    /// Keep sent mails in memory for tests to read ([`crate::Server::outbox`]).
    pub dev_outbox: bool,
    /// Time source.
    pub clock: Clock,
    /// Rate limits.
    pub limits: Limits,
    /// Lifetimes and plans.
    pub policy: Policy,
    /// Database pool size.
    pub max_connections: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            database_url: "sqlite://krisp.db".into(),
            tls: None,
            signing_key: KeySource::File(PathBuf::from("krisp-signing-keys.txt")),
            smtp_url: None,
            mail_from: "Krisp <no-reply@localhost>".into(),
            dev_outbox: false,
            clock: Clock::system(),
            limits: Limits::default(),
            policy: Policy::default(),
            max_connections: 16,
        }
    }
}
