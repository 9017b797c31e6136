//! The Krisp license and account backend.
//!
//! Password-less sign-in by e-mailed code, personal plans and organisations with seats,
//! device activation, Ed25519-signed license tokens (format in [`krisp_token`]), account
//! export and deletion, rate limits, audit log. SQLite by default, PostgreSQL by URL; the
//! server keeps nothing between requests that matters for correctness, so several instances
//! can share one PostgreSQL.
//!
//! Run it with [`serve`] (what the binary does) or [`start`] (tests: returns a handle with
//! the bound address and, if asked, the outbox of sent codes).
//!
//! ```no_run
//! # async fn run() -> Result<(), krisp_server::Error> {
//! let cfg = krisp_server::Config {
//!     listen: "127.0.0.1:0".parse().expect("literal address"),
//!     database_url: "sqlite://krisp-test.db".into(),
//!     signing_key: krisp_server::KeySource::Ephemeral,
//!     dev_outbox: true,
//!     ..Default::default()
//! };
//! let server = krisp_server::start(cfg).await?;
//! println!("listening on {}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod api;
mod audit;
mod clock;
mod config;
mod db;
mod error;
mod http;
mod keys;
mod mail;
mod metrics;
mod ops;
mod ratelimit;
mod tls;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use clock::Clock;
pub use config::{Config, KeySource, Limits, Policy, TlsFiles};
pub use db::Backend;
pub use error::Error;
pub use http::ROUTES;
pub use keys::append_new_key;
pub use krisp_token;
pub use mail::{Outbox, SentMail};
pub use ops::{Plan, set_plan};

/// The OpenAPI 3.1 document served at `/openapi.json` (checked in as `openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// A running server.
pub struct Server {
    addr: SocketAddr,
    tls: bool,
    backend: Backend,
    outbox: Option<Outbox>,
    public_keys: krisp_token::KeySet,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr` or `https://addr`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Which database it runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sent sign-in mails, when started with `dev_outbox`.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }

    /// The public keys license tokens verify with (also served at `GET /v1/keys`).
    pub fn public_keys(&self) -> &krisp_token::KeySet {
        &self.public_keys
    }

    /// Stops accepting, lets in-flight requests finish (plain HTTP), and waits.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// Runs until the server stops on its own (it does not; use with a signal).
    pub async fn wait(mut self) {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Connects the database (running migrations), loads keys, binds and starts serving.
pub async fn start(config: Config) -> Result<Server, Error> {
    let now = config.clock.now();
    let (db, backend) = db::Db::connect(&config.database_url, config.max_connections).await?;
    let keys = keys::Keyring::load(&config.signing_key, now)?;
    let mailer = mail::Mailer::new(
        config.smtp_url.as_deref(),
        &config.mail_from,
        config.dev_outbox,
    )?;
    if !mailer.has_relay() {
        tracing::warn!(
            "no SMTP relay configured: sign-in codes are written to this log (development only)"
        );
    }
    let tls_cfg = config.tls.as_ref().map(tls::server_config).transpose()?;
    let outbox = mailer.outbox.clone();
    let public_keys = keys.public().clone();
    let state = Arc::new(http::AppState {
        db: db.clone(),
        clock: config.clock.clone(),
        keys,
        mailer: Arc::new(mailer),
        ip_limiter: ratelimit::IpLimiter::new(config.limits.requests_per_sec_per_ip),
        limits: config.limits.clone(),
        policy: config.policy.clone(),
        metrics: Default::default(),
    });
    let app = http::router(state);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let tls = tls_cfg.is_some();
    match tls_cfg {
        Some(cfg) => tasks.push(tokio::spawn(tls::serve(listener, cfg, app, rx.clone()))),
        None => {
            let mut rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                let r = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "server stopped");
                }
            }));
        }
    }
    tasks.push(tokio::spawn(sweeper(
        db,
        config.clock.clone(),
        config.limits.clone(),
        rx,
    )));
    tracing::info!(%addr, tls, ?backend, "krisp-server listening");
    Ok(Server {
        addr,
        tls,
        backend,
        outbox,
        public_keys,
        shutdown: tx,
        tasks,
    })
}

/// [`start`], then run until Ctrl-C / SIGTERM.
pub async fn serve(config: Config) -> Result<(), Error> {
    let server = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Deletes expired codes, sessions and rate-limit counters once a minute.
async fn sweeper(db: db::Db, clock: Clock, limits: Limits, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
        let now = clock.now();
        let r = async {
            sqlx::query("DELETE FROM login_codes WHERE expires_at <= $1")
                .bind(now)
                .execute(&db.pool)
                .await?;
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&db.pool)
                .await?;
            ratelimit::sweep(&db, now, limits.window_secs).await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "sweeping expired rows failed");
        }
    }
}
