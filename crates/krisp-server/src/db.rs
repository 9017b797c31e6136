//! Database access through sqlx's `Any` driver, so one set of queries (`$1` placeholders,
//! integer times, text ids) serves SQLite and PostgreSQL. Schemas live in
//! `migrations/sqlite` and `migrations/postgres`.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::error::Error;

/// Which database we talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

#[derive(Clone)]
pub(crate) struct Db {
    pub pool: AnyPool,
}

/// `sqlite://path`, `sqlite:path` or `postgres(ql)://…`; SQLite files are created if missing.
pub(crate) fn normalise_url(url: &str) -> Result<(Backend, String), Error> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let mut u = format!("sqlite:{rest}");
        if !rest.contains("mode=") && !rest.contains(":memory:") {
            u.push(if rest.contains('?') { '&' } else { '?' });
            u.push_str("mode=rwc");
        }
        return Ok((Backend::Sqlite, u));
    }
    Err(Error::DatabaseScheme(redact(url)))
}

/// The URL without a password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}://{}:***{}", &url[..s], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<(Self, Backend), Error> {
        install_default_drivers();
        let (backend, url) = normalise_url(url)?;
        let db_err = |source| Error::Database {
            url: redact(&url),
            source,
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL: readers never block the writer; NORMAL sync is durable across
                    // process crashes (not power loss of the last transactions), the usual trade.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await.map_err(db_err)?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok((Self { pool }, backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        assert_eq!(
            normalise_url("sqlite://krisp.db").map(|x| x.1).ok(),
            Some("sqlite://krisp.db?mode=rwc".into())
        );
        assert!(normalise_url("mysql://x").is_err());
    }
}
