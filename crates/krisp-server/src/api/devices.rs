//! Device activation against seats, organisation enrolment, deactivation, license tokens.

use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use krisp_token::Claims;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Event};
use crate::error::{ApiError, ApiResult};
use crate::http::{Caller, ClientIp, Shared, StrictJson, User};
use crate::ratelimit::{self, Rule};
use crate::util::{check_text, hash, new_id, new_secret};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActivateReq {
    device_id: String,
    name: String,
    os: String,
    #[serde(default)]
    org_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrolReq {
    enrolment_token: String,
    device_id: String,
    name: String,
    os: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LicenseReq {
    device_id: String,
}

pub(crate) fn check_device_fields(device_id: &str, name: &str, os: &str) -> ApiResult<()> {
    check_text("device_id", device_id, 128)?;
    check_text("name", name, 128)?;
    check_text("os", os, 64)
}

pub(crate) type DeviceRow = (String, String, String, String, Option<String>, i64, i64);
/// Column list matching [`DeviceRow`] (a macro so queries stay `&'static str` literals).
macro_rules! device_cols {
    () => {
        "id, device_id, name, os, org_id, created_at, last_seen_at"
    };
}
pub(crate) use device_cols;

pub(crate) fn device_json(r: &DeviceRow) -> Value {
    json!({
        "id": r.0, "device_id": r.1, "name": r.2, "os": r.3, "org_id": r.4,
        "created_at": r.5, "last_seen_at": r.6,
    })
}

/// Where a new device's seat comes from.
enum Pool {
    Personal,
    Org(String),
}

fn seats_exhausted(used: i64, seats: i64, devices: Vec<Value>, org: bool) -> ApiError {
    let how = if org {
        "ask your organisation's admin to add seats or revoke an unused device"
    } else {
        "deactivate one of your devices (`krisp logout` on it, or DELETE /v1/devices/{device_id}) or upgrade your plan"
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "seats_exhausted",
        format!("all {seats} seats are in use ({used} devices active): {how}"),
    )
    .with_details(json!({"seats": seats, "used": used, "devices": devices}))
}

fn plan_over(plan: &str) -> ApiError {
    let msg = if plan == "trial" {
        "your free trial has ended; choose a paid plan or join an organisation"
    } else {
        "your plan has ended; renew it or join an organisation"
    };
    ApiError::new(StatusCode::PAYMENT_REQUIRED, "plan_expired", msg)
}

/// `POST /v1/devices`: activates the caller's device on a free seat (idempotent per device id).
pub(crate) async fn activate(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    StrictJson(req): StrictJson<ActivateReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_device_fields(&req.device_id, &req.name, &req.os)?;
    let now = st.clock.now();
    let pool = match &req.org_id {
        Some(org) => {
            let member: Option<(String,)> = sqlx::query_as(
                "SELECT org_id FROM org_members WHERE org_id = $1 AND account_id = $2",
            )
            .bind(org)
            .bind(&user.account_id)
            .fetch_optional(&st.db.pool)
            .await?;
            if member.is_none() {
                return Err(ApiError::not_found("organisation"));
            }
            Pool::Org(org.clone())
        }
        None => {
            let first: Option<(String,)> = sqlx::query_as(
                "SELECT org_id FROM org_members WHERE account_id = $1 ORDER BY invited_at, org_id LIMIT 1",
            )
            .bind(&user.account_id)
            .fetch_optional(&st.db.pool)
            .await?;
            match first {
                Some((org,)) => Pool::Org(org),
                None => Pool::Personal,
            }
        }
    };
    if matches!(pool, Pool::Personal) && user.plan_ends_at.is_some_and(|end| end <= now) {
        return Err(plan_over(&user.plan));
    }

    let mut tx = st.db.pool.begin().await?;
    // Lock the seat owner's row first (row lock on PostgreSQL, write lock on SQLite) so
    // concurrent activations on any instance cannot both take the last seat.
    let (seats,): (i64,) = match &pool {
        Pool::Personal => {
            sqlx::query_as("UPDATE accounts SET seats = seats WHERE id = $1 RETURNING seats")
                .bind(&user.account_id)
                .fetch_one(&mut *tx)
                .await?
        }
        Pool::Org(org) => {
            sqlx::query_as("UPDATE orgs SET seats = seats WHERE id = $1 RETURNING seats")
                .bind(org)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    let existing: Option<DeviceRow> = sqlx::query_as(concat!(
        "SELECT ",
        device_cols!(),
        " FROM devices WHERE account_id = $1 AND device_id = $2"
    ))
    .bind(&user.account_id)
    .bind(&req.device_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(d) = existing {
        sqlx::query("UPDATE devices SET name = $1, os = $2, last_seen_at = $3 WHERE id = $4")
            .bind(&req.name)
            .bind(&req.os)
            .bind(now)
            .bind(&d.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut j = device_json(&d);
        j["name"] = json!(req.name);
        j["os"] = json!(req.os);
        return Ok((StatusCode::OK, Json(j)));
    }
    let (org_id, used_rows): (Option<String>, Vec<DeviceRow>) = match &pool {
        Pool::Personal => (
            None,
            sqlx::query_as(concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE account_id = $1 AND org_id IS NULL ORDER BY created_at"
            ))
            .bind(&user.account_id)
            .fetch_all(&mut *tx)
            .await?,
        ),
        Pool::Org(org) => (
            Some(org.clone()),
            sqlx::query_as(concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE org_id = $1 ORDER BY created_at"
            ))
            .bind(org)
            .fetch_all(&mut *tx)
            .await?,
        ),
    };
    let used = used_rows.len() as i64;
    if used >= seats {
        tx.rollback().await?;
        // Only list devices the caller owns; other members' machines are not theirs to see.
        let mine: Vec<Value> = used_rows
            .iter()
            .filter(|_| org_id.is_none())
            .map(device_json)
            .collect();
        return Err(seats_exhausted(used, seats, mine, org_id.is_some()));
    }
    let id = new_id("dev");
    sqlx::query(
        "INSERT INTO devices (id, device_id, account_id, org_id, name, os, token_hash, created_at, last_seen_at) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $7)",
    )
    .bind(&id)
    .bind(&req.device_id)
    .bind(&user.account_id)
    .bind(&org_id)
    .bind(&req.name)
    .bind(&req.os)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        now,
        Event {
            event: "device.activated",
            account_id: Some(&user.account_id),
            org_id: org_id.as_deref(),
            ip: Some(ip.0.to_string()),
            subject: None,
            detail: json!({"device": id, "os": req.os}),
        },
    )
    .await?;
    tx.commit().await?;
    st.metrics.devices_activated.fetch_add(1, Relaxed);
    Ok((
        StatusCode::CREATED,
        Json(device_json(&(
            id,
            req.device_id,
            req.name,
            req.os,
            org_id,
            now,
            now,
        ))),
    ))
}

/// `POST /v1/devices/enrol`: a machine with only the organisation's enrolment token activates
/// itself (silent installs). Answers a device token for `POST /v1/license`.
pub(crate) async fn enrol(
    State(st): State<Shared>,
    ip: ClientIp,
    StrictJson(req): StrictJson<EnrolReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_device_fields(&req.device_id, &req.name, &req.os)?;
    let now = st.clock.now();
    let ip_key = format!("ip:{}", ip.0);
    if let Some(s) = ratelimit::banned(&st.db, &ip_key, now).await? {
        return Err(ApiError::too_many("banned", s, "temporarily banned"));
    }
    let org: Option<(String,)> =
        if req.enrolment_token.starts_with("ke_") && req.enrolment_token.len() <= 200 {
            sqlx::query_as("SELECT id FROM orgs WHERE enrol_token_hash = $1")
                .bind(hash(&[&req.enrolment_token]))
                .fetch_optional(&st.db.pool)
                .await?
        } else {
            None
        };
    let Some((org_id,)) = org else {
        let l = &st.limits;
        let rule = Rule {
            window: l.window_secs,
            limit: l.auth_per_ip,
            ban_after: l.ban_after,
            ban_secs: l.ban_secs,
        };
        ratelimit::hit(&st.db, &ip_key, now, &rule).await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_enrolment_token",
            "the enrolment token is unknown or was replaced; ask your IT admin for the current one",
        ));
    };
    let token = new_secret("kd");
    let mut tx = st.db.pool.begin().await?;
    let (seats,): (i64,) =
        sqlx::query_as("UPDATE orgs SET seats = seats WHERE id = $1 RETURNING seats")
            .bind(&org_id)
            .fetch_one(&mut *tx)
            .await?;
    let existing: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM devices WHERE org_id = $1 AND device_id = $2 AND account_id IS NULL",
    )
    .bind(&org_id)
    .bind(&req.device_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (id, status) = match existing {
        Some((id,)) => {
            // Re-enrolment (reinstall): new credential, same seat.
            sqlx::query("UPDATE devices SET token_hash = $1, name = $2, os = $3, last_seen_at = $4 WHERE id = $5")
                .bind(hash(&[&token]))
                .bind(&req.name)
                .bind(&req.os)
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            (id, StatusCode::OK)
        }
        None => {
            let (used,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE org_id = $1")
                .bind(&org_id)
                .fetch_one(&mut *tx)
                .await?;
            if used >= seats {
                tx.rollback().await?;
                return Err(seats_exhausted(used, seats, vec![], true));
            }
            let id = new_id("dev");
            sqlx::query(
                "INSERT INTO devices (id, device_id, account_id, org_id, name, os, token_hash, created_at, last_seen_at) \
                 VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&id)
            .bind(&req.device_id)
            .bind(&org_id)
            .bind(&req.name)
            .bind(&req.os)
            .bind(hash(&[&token]))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            (id, StatusCode::CREATED)
        }
    };
    audit::record(
        &mut *tx,
        now,
        Event {
            event: "device.enrolled",
            account_id: None,
            org_id: Some(&org_id),
            ip: Some(ip.0.to_string()),
            subject: None,
            detail: json!({"device": id, "os": req.os}),
        },
    )
    .await?;
    tx.commit().await?;
    st.metrics.devices_activated.fetch_add(1, Relaxed);
    Ok((
        status,
        Json(json!({
            "device": device_json(&(id, req.device_id, req.name, req.os, Some(org_id), now, now)),
            "device_token": token,
        })),
    ))
}

/// `GET /v1/devices`: the caller's own devices.
pub(crate) async fn list(State(st): State<Shared>, user: User) -> ApiResult<Json<Value>> {
    let rows: Vec<DeviceRow> = sqlx::query_as(concat!(
        "SELECT ",
        device_cols!(),
        " FROM devices WHERE account_id = $1 ORDER BY created_at"
    ))
    .bind(&user.account_id)
    .fetch_all(&st.db.pool)
    .await?;
    Ok(Json(
        json!({"devices": rows.iter().map(device_json).collect::<Vec<_>>()}),
    ))
}

/// `DELETE /v1/devices/{device_id}`: frees the seat (`krisp logout`). Only the owner, or the
/// enrolled machine itself, can do it; anything else is "not found".
pub(crate) async fn deactivate(
    State(st): State<Shared>,
    ip: ClientIp,
    caller: Caller,
    Path(device_id): Path<String>,
) -> ApiResult<StatusCode> {
    let now = st.clock.now();
    let (affected, account, org) = match &caller {
        Caller::User(u) => (
            sqlx::query("DELETE FROM devices WHERE account_id = $1 AND device_id = $2")
                .bind(&u.account_id)
                .bind(&device_id)
                .execute(&st.db.pool)
                .await?
                .rows_affected(),
            Some(u.account_id.as_str()),
            None,
        ),
        Caller::Device {
            row_id,
            device_id: own,
            org_id,
        } => {
            if own != &device_id {
                return Err(ApiError::not_found("device"));
            }
            (
                sqlx::query("DELETE FROM devices WHERE id = $1")
                    .bind(row_id)
                    .execute(&st.db.pool)
                    .await?
                    .rows_affected(),
                None,
                Some(org_id.as_str()),
            )
        }
    };
    if affected == 0 {
        return Err(ApiError::not_found("device"));
    }
    audit::record(
        &st.db.pool,
        now,
        Event {
            event: "device.deactivated",
            account_id: account,
            org_id: org,
            ip: Some(ip.0.to_string()),
            subject: None,
            detail: json!({}),
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

const FEATURES_TRIAL: &[&str] = &["denoise"];
const FEATURES_FULL: &[&str] = &["denoise", "echo_cancel", "priority_support"];

/// `POST /v1/license`: a fresh signed license token for an activated device.
pub(crate) async fn license(
    State(st): State<Shared>,
    caller: Caller,
    StrictJson(req): StrictJson<LicenseReq>,
) -> ApiResult<Json<Value>> {
    check_text("device_id", &req.device_id, 128)?;
    let now = st.clock.now();
    let p = &st.policy;
    let (row_id, sub, org, plan, last_seen, hard_end) = match &caller {
        Caller::User(u) => {
            let row: Option<(String, Option<String>, i64)> = sqlx::query_as(
                "SELECT id, org_id, last_seen_at FROM devices WHERE account_id = $1 AND device_id = $2",
            )
            .bind(&u.account_id)
            .bind(&req.device_id)
            .fetch_optional(&st.db.pool)
            .await?;
            let Some((row_id, org, last_seen)) = row else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "device_not_activated",
                    "this device is not activated on your account; POST /v1/devices first",
                ));
            };
            let (plan, end) = match &org {
                Some(_) => ("org".to_owned(), None),
                None => {
                    // A trial always has an end; a paid plan may (end of the paid period).
                    let end = match u.plan_ends_at {
                        Some(end) => Some(end),
                        None if u.plan == "trial" => Some(now),
                        None => None,
                    };
                    if end.is_some_and(|end| end <= now) {
                        return Err(plan_over(&u.plan));
                    }
                    (u.plan.clone(), end)
                }
            };
            (row_id, u.account_id.clone(), org, plan, last_seen, end)
        }
        Caller::Device {
            row_id,
            device_id,
            org_id,
        } => {
            if device_id != &req.device_id {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "device_not_activated",
                    "this device token belongs to another device",
                ));
            }
            (
                row_id.clone(),
                org_id.clone(),
                Some(org_id.clone()),
                "org".to_owned(),
                0,
                None,
            )
        }
    };
    let mut exp = now + p.license_ttl;
    let mut grace = exp + p.license_grace;
    if let Some(end) = hard_end {
        exp = exp.min(end);
        grace = grace.min(end);
    }
    let features = if plan == "trial" {
        FEATURES_TRIAL
    } else {
        FEATURES_FULL
    };
    let claims = Claims {
        sub,
        org,
        dev: req.device_id,
        plan,
        features: features.iter().map(|s| (*s).to_owned()).collect(),
        iat: now,
        exp,
        grace,
    };
    let signer = st.keys.current();
    let token = signer.sign(&claims);
    // Keep refreshes read-mostly: note "last seen" at most every 5 minutes.
    if now - last_seen > 300 {
        sqlx::query("UPDATE devices SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&row_id)
            .execute(&st.db.pool)
            .await?;
    }
    st.metrics.licenses_issued.fetch_add(1, Relaxed);
    Ok(Json(json!({
        "token": token,
        "kid": signer.kid(),
        "expires_at": exp,
        "grace_until": grace,
    })))
}
