//! The caller's account: summary, export of everything stored about it, irreversible delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::devices::{DeviceRow, device_cols, device_json};
use crate::audit::{self, Event};
use crate::error::{ApiError, ApiResult};
use crate::http::{ClientIp, Shared, StrictJson, User};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteReq {
    /// Must repeat the account's e-mail address: deletion cannot be undone.
    confirm_email: String,
}

type AccountRow = (String, String, String, Option<i64>, i64, i64);
type AuditRow = (i64, String, Option<String>, Option<String>, String);

async fn account_json(st: &Shared, user: &User) -> ApiResult<Value> {
    let a: AccountRow = sqlx::query_as(
        "SELECT id, email, plan, plan_ends_at, seats, created_at FROM accounts WHERE id = $1",
    )
    .bind(&user.account_id)
    .fetch_one(&st.db.pool)
    .await?;
    let orgs: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT o.id, o.name, m.role FROM org_members m JOIN orgs o ON o.id = m.org_id \
         WHERE m.account_id = $1 ORDER BY m.invited_at",
    )
    .bind(&user.account_id)
    .fetch_all(&st.db.pool)
    .await?;
    Ok(json!({
        "id": a.0, "email": a.1,
        "plan": {"kind": a.2, "ends_at": a.3, "seats": a.4},
        "created_at": a.5,
        "organisations": orgs.iter().map(|o| json!({"id": o.0, "name": o.1, "role": o.2})).collect::<Vec<_>>(),
    }))
}

/// `GET /v1/account`.
pub(crate) async fn get_account(State(st): State<Shared>, user: User) -> ApiResult<Json<Value>> {
    Ok(Json(account_json(&st, &user).await?))
}

/// `GET /v1/account/export`: every row that refers to the account (secrets only as
/// "present", never their hashes).
pub(crate) async fn export(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
) -> ApiResult<Json<Value>> {
    let now = st.clock.now();
    let pool = &st.db.pool;
    let account = account_json(&st, &user).await?;
    let sessions: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, created_at, access_expires_at, expires_at FROM sessions WHERE account_id = $1 ORDER BY created_at",
    )
    .bind(&user.account_id)
    .fetch_all(pool)
    .await?;
    let devices: Vec<DeviceRow> = sqlx::query_as(concat!(
        "SELECT ",
        device_cols!(),
        " FROM devices WHERE account_id = $1 ORDER BY created_at"
    ))
    .bind(&user.account_id)
    .fetch_all(pool)
    .await?;
    let memberships: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT org_id, email, role, invited_at FROM org_members WHERE account_id = $1 OR email = $2",
    )
    .bind(&user.account_id)
    .bind(&user.email)
    .fetch_all(pool)
    .await?;
    let admin_orgs: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT id, name, seats, created_at FROM orgs WHERE admin_id = $1")
            .bind(&user.account_id)
            .fetch_all(pool)
            .await?;
    let codes: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT created_at, expires_at, attempts FROM login_codes WHERE email = $1")
            .bind(&user.email)
            .fetch_all(pool)
            .await?;
    let limits: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT key, window_start, hits, banned_until FROM rate_limits WHERE key = $1 OR key = $2",
    )
    .bind(format!("email:{}", user.email))
    .bind(format!("verify:{}", user.email))
    .fetch_all(pool)
    .await?;
    let events: Vec<AuditRow> = sqlx::query_as(
        "SELECT at, event, org_id, ip, detail FROM audit_log WHERE account_id = $1 OR subject = $2 ORDER BY at, id",
    )
    .bind(&user.account_id)
    .bind(&user.email)
    .fetch_all(pool)
    .await?;
    audit::record(
        pool,
        now,
        Event {
            event: "account.exported",
            account_id: Some(&user.account_id),
            org_id: None,
            ip: Some(ip.0.to_string()),
            subject: None,
            detail: json!({}),
        },
    )
    .await?;
    Ok(Json(json!({
        "exported_at": now,
        "account": account,
        "sessions": sessions.iter().map(|s| json!({
            "id": s.0, "created_at": s.1, "access_expires_at": s.2, "expires_at": s.3,
        })).collect::<Vec<_>>(),
        "devices": devices.iter().map(device_json).collect::<Vec<_>>(),
        "org_memberships": memberships.iter().map(|m| json!({
            "org_id": m.0, "email": m.1, "role": m.2, "invited_at": m.3,
        })).collect::<Vec<_>>(),
        "organisations_administered": admin_orgs.iter().map(|o| json!({
            "id": o.0, "name": o.1, "seats": o.2, "created_at": o.3,
        })).collect::<Vec<_>>(),
        "pending_sign_in_codes": codes.iter().map(|c| json!({
            "created_at": c.0, "expires_at": c.1, "attempts": c.2,
        })).collect::<Vec<_>>(),
        "rate_limit_counters": limits.iter().map(|l| json!({
            "key": l.0, "window_start": l.1, "hits": l.2, "banned_until": l.3,
        })).collect::<Vec<_>>(),
        "audit_events": events.iter().map(|e| json!({
            "at": e.0, "event": e.1, "org_id": e.2, "ip": e.3,
            "detail": serde_json::from_str::<Value>(&e.4).unwrap_or(Value::Null),
        })).collect::<Vec<_>>(),
    })))
}

/// `DELETE /v1/account`: removes the account and everything hanging off it, in one
/// transaction. An organisation the account administers goes too, unless it has other
/// members (then 409: hand it over or remove them first).
pub(crate) async fn delete_account(
    State(st): State<Shared>,
    user: User,
    StrictJson(req): StrictJson<DeleteReq>,
) -> ApiResult<StatusCode> {
    if !req.confirm_email.trim().eq_ignore_ascii_case(&user.email) {
        return Err(ApiError::bad_request(
            "confirmation_mismatch",
            "confirm_email must repeat the account's e-mail address",
        ));
    }
    let now = st.clock.now();
    let id = &user.account_id;
    let mut tx = st.db.pool.begin().await?;
    // Take the account's row lock first so concurrent activations wait for us.
    sqlx::query("UPDATE accounts SET seats = seats WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let orgs: Vec<(String,)> = sqlx::query_as("SELECT id FROM orgs WHERE admin_id = $1")
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
    for (org,) in &orgs {
        let (others,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM org_members WHERE org_id = $1 AND (account_id IS NULL OR account_id <> $2)",
        )
        .bind(org)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if others > 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "org_admin",
                format!(
                    "you administer organisation {org}, which has {others} other members; remove them first"
                ),
            ));
        }
        for sql in [
            "DELETE FROM devices WHERE org_id = $1",
            "DELETE FROM org_members WHERE org_id = $1",
            "DELETE FROM audit_log WHERE org_id = $1",
            "DELETE FROM orgs WHERE id = $1",
        ] {
            sqlx::query(sql).bind(org).execute(&mut *tx).await?;
        }
    }
    for sql in [
        "DELETE FROM devices WHERE account_id = $1",
        "DELETE FROM sessions WHERE account_id = $1",
        "DELETE FROM org_members WHERE account_id = $1",
        "DELETE FROM audit_log WHERE account_id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM org_members WHERE email = $1")
        .bind(&user.email)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM audit_log WHERE subject = $1")
        .bind(&user.email)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM login_codes WHERE email = $1")
        .bind(&user.email)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM rate_limits WHERE key = $1 OR key = $2")
        .bind(format!("email:{}", user.email))
        .bind(format!("verify:{}", user.email))
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM accounts WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // The event itself carries nothing that identifies the person.
    audit::record(
        &mut *tx,
        now,
        Event {
            event: "account.deleted",
            account_id: None,
            org_id: None,
            ip: None,
            subject: None,
            detail: json!({"organisations_deleted": orgs.len()}),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!("account deleted");
    Ok(StatusCode::NO_CONTENT)
}
