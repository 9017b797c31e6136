//! Operator actions that have no HTTP endpoint (billing would drive them).

use crate::audit::{self, Event};
use crate::db::Db;
use crate::error::Error;
use crate::util::{new_id, normalise_email};

/// A personal plan to set on an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Free trial ending at a Unix time.
    Trial {
        /// End of the trial.
        ends_at: i64,
        /// Devices allowed.
        seats: i64,
    },
    /// Paid plan, optionally ending at a Unix time (end of the paid period).
    Paid {
        /// Devices allowed.
        seats: i64,
        /// End of the paid period, if any.
        ends_at: Option<i64>,
    },
}

/// Sets the personal plan of the account with this e-mail address, creating the account if it
/// does not exist yet (so a customer can be provisioned before first sign-in).
/// Returns the account id.
pub async fn set_plan(
    database_url: &str,
    email: &str,
    plan: &Plan,
    now: i64,
) -> Result<String, Error> {
    let email = normalise_email(email).map_err(|e| Error::InvalidInput(e.message))?;
    let (kind, ends_at, seats) = match *plan {
        Plan::Trial { ends_at, seats } => ("trial", Some(ends_at), seats),
        Plan::Paid { seats, ends_at } => ("paid", ends_at, seats),
    };
    if !(1..=100_000).contains(&seats) {
        return Err(Error::InvalidInput(
            "seats must be between 1 and 100000".into(),
        ));
    }
    let (db, _) = Db::connect(database_url, 2).await?;
    let db_err = |source| Error::Database {
        url: crate::db::redact(database_url),
        source,
    };
    let mut tx = db.pool.begin().await.map_err(db_err)?;
    sqlx::query(
        "INSERT INTO accounts (id, email, plan, plan_ends_at, seats, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (email) DO UPDATE SET plan = $3, plan_ends_at = $4, seats = $5",
    )
    .bind(new_id("acc"))
    .bind(&email)
    .bind(kind)
    .bind(ends_at)
    .bind(seats)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let (id,): (String,) = sqlx::query_as("SELECT id FROM accounts WHERE email = $1")
        .bind(&email)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    audit::record(
        &mut *tx,
        now,
        Event {
            event: "account.plan_changed",
            account_id: Some(&id),
            org_id: None,
            ip: None,
            subject: None,
            detail: serde_json::json!({"plan": kind, "seats": seats, "ends_at": ends_at, "by": "operator"}),
        },
    )
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    db.pool.close().await;
    Ok(id)
}
