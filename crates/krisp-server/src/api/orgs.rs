//! Organisations: the admin invites and removes members, sets seats, sees and revokes
//! devices, and manages the enrolment token for silent installs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::devices::{DeviceRow, device_json};
use crate::audit::{self, Event};
use crate::error::{ApiError, ApiResult};
use crate::http::{ClientIp, Shared, StrictJson, User};
use crate::util::{check_text, hash, new_id, new_secret, normalise_email};

const MAX_SEATS: i64 = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateReq {
    name: String,
    seats: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteReq {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeatsReq {
    seats: i64,
}

fn check_seats(seats: i64) -> ApiResult<()> {
    if !(1..=MAX_SEATS).contains(&seats) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("seats must be between 1 and {MAX_SEATS}"),
        ));
    }
    Ok(())
}

/// The org's (name, seats) if `user` is its admin; otherwise "not found" (no existence leak).
async fn admin_of(st: &Shared, user: &User, org_id: &str) -> ApiResult<(String, i64)> {
    sqlx::query_as("SELECT name, seats FROM orgs WHERE id = $1 AND admin_id = $2")
        .bind(org_id)
        .bind(&user.account_id)
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))
}

async fn audit_admin(
    st: &Shared,
    ip: &ClientIp,
    user: &User,
    org: &str,
    event: &'static str,
    subject: Option<&str>,
    detail: Value,
) -> ApiResult<()> {
    audit::record(
        &st.db.pool,
        st.clock.now(),
        Event {
            event,
            account_id: Some(&user.account_id),
            org_id: Some(org),
            ip: Some(ip.0.to_string()),
            subject,
            detail,
        },
    )
    .await?;
    Ok(())
}

/// `POST /v1/orgs`: the caller creates an organisation and becomes its admin.
pub(crate) async fn create(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    StrictJson(req): StrictJson<CreateReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_text("name", &req.name, 128)?;
    check_seats(req.seats)?;
    let now = st.clock.now();
    let id = new_id("org");
    let mut tx = st.db.pool.begin().await?;
    sqlx::query("INSERT INTO orgs (id, name, admin_id, seats, enrol_token_hash, created_at) VALUES ($1, $2, $3, $4, NULL, $5)")
        .bind(&id)
        .bind(&req.name)
        .bind(&user.account_id)
        .bind(req.seats)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO org_members (org_id, email, account_id, role, invited_at) VALUES ($1, $2, $3, 'admin', $4)")
        .bind(&id)
        .bind(&user.email)
        .bind(&user.account_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    audit_admin(
        &st,
        &ip,
        &user,
        &id,
        "org.created",
        None,
        json!({"seats": req.seats}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": req.name, "seats": req.seats, "created_at": now})),
    ))
}

/// `GET /v1/orgs/{org_id}`: details, members and seat use (admin only).
pub(crate) async fn get_org(
    State(st): State<Shared>,
    user: User,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (name, seats) = admin_of(&st, &user, &org_id).await?;
    let members: Vec<(String, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT email, account_id, role, invited_at FROM org_members WHERE org_id = $1 ORDER BY invited_at, email",
    )
    .bind(&org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let (used,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE org_id = $1")
        .bind(&org_id)
        .fetch_one(&st.db.pool)
        .await?;
    let (has_token,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM orgs WHERE id = $1 AND enrol_token_hash IS NOT NULL")
            .bind(&org_id)
            .fetch_one(&st.db.pool)
            .await?;
    Ok(Json(json!({
        "id": org_id, "name": name, "seats": seats, "seats_used": used,
        "enrolment_token_active": has_token > 0,
        "members": members.iter().map(|m| json!({
            "email": m.0, "joined": m.1.is_some(), "role": m.2, "invited_at": m.3,
        })).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/orgs/{org_id}/members`: invites an address; it joins when it signs in.
pub(crate) async fn invite(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    Path(org_id): Path<String>,
    StrictJson(req): StrictJson<InviteReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    admin_of(&st, &user, &org_id).await?;
    let email = normalise_email(&req.email)?;
    let now = st.clock.now();
    let existing: Option<(String,)> = sqlx::query_as("SELECT id FROM accounts WHERE email = $1")
        .bind(&email)
        .fetch_optional(&st.db.pool)
        .await?;
    let r = sqlx::query(
        "INSERT INTO org_members (org_id, email, account_id, role, invited_at) VALUES ($1, $2, $3, 'member', $4) \
         ON CONFLICT (org_id, email) DO NOTHING",
    )
    .bind(&org_id)
    .bind(&email)
    .bind(existing.map(|e| e.0))
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_member",
            "this address is already invited",
        ));
    }
    audit_admin(
        &st,
        &ip,
        &user,
        &org_id,
        "org.member_invited",
        Some(&email),
        json!({}),
    )
    .await?;
    tracing::info!(org = %org_id, "member invited (they join by signing in with the invited address)");
    Ok((
        StatusCode::CREATED,
        Json(json!({"email": email, "role": "member", "invited_at": now})),
    ))
}

/// `DELETE /v1/orgs/{org_id}/members/{email}`: removes the member and frees their seats.
pub(crate) async fn remove_member(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    Path((org_id, email)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    admin_of(&st, &user, &org_id).await?;
    let email = normalise_email(&email)?;
    if email == user.email {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_remove_admin",
            "the admin cannot remove themselves",
        ));
    }
    let mut tx = st.db.pool.begin().await?;
    let member: Option<(Option<String>,)> =
        sqlx::query_as("SELECT account_id FROM org_members WHERE org_id = $1 AND email = $2")
            .bind(&org_id)
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((account,)) = member else {
        return Err(ApiError::not_found("member"));
    };
    let mut freed = 0;
    if let Some(account) = &account {
        freed = sqlx::query("DELETE FROM devices WHERE org_id = $1 AND account_id = $2")
            .bind(&org_id)
            .bind(account)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    sqlx::query("DELETE FROM org_members WHERE org_id = $1 AND email = $2")
        .bind(&org_id)
        .bind(&email)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    audit_admin(
        &st,
        &ip,
        &user,
        &org_id,
        "org.member_removed",
        Some(&email),
        json!({"devices_revoked": freed}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/orgs/{org_id}/seats`: never below the devices in use.
pub(crate) async fn set_seats(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    Path(org_id): Path<String>,
    StrictJson(req): StrictJson<SeatsReq>,
) -> ApiResult<Json<Value>> {
    admin_of(&st, &user, &org_id).await?;
    check_seats(req.seats)?;
    let mut tx = st.db.pool.begin().await?;
    let (old,): (i64,) =
        sqlx::query_as("UPDATE orgs SET seats = seats WHERE id = $1 RETURNING seats")
            .bind(&org_id)
            .fetch_one(&mut *tx)
            .await?;
    let (used,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE org_id = $1")
        .bind(&org_id)
        .fetch_one(&mut *tx)
        .await?;
    if req.seats < used {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "seats_in_use",
            format!(
                "{used} devices are active; revoke some before going down to {} seats",
                req.seats
            ),
        ));
    }
    sqlx::query("UPDATE orgs SET seats = $1 WHERE id = $2")
        .bind(req.seats)
        .bind(&org_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    audit_admin(
        &st,
        &ip,
        &user,
        &org_id,
        "org.seats_changed",
        None,
        json!({"from": old, "to": req.seats}),
    )
    .await?;
    Ok(Json(json!({"seats": req.seats, "seats_used": used})))
}

/// `GET /v1/orgs/{org_id}/devices`.
pub(crate) async fn list_devices(
    State(st): State<Shared>,
    user: User,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Value>> {
    admin_of(&st, &user, &org_id).await?;
    let rows: Vec<(DeviceRow, Option<String>)> = sqlx::query_as::<_, (String, String, String, String, Option<String>, i64, i64, Option<String>)>("SELECT d.id, d.device_id, d.name, d.os, d.org_id, d.created_at, d.last_seen_at, a.email FROM devices d LEFT JOIN accounts a ON a.id = d.account_id WHERE d.org_id = $1 ORDER BY d.created_at")
    .bind(&org_id)
    .fetch_all(&st.db.pool)
    .await?
    .into_iter()
    .map(|r| ((r.0, r.1, r.2, r.3, r.4, r.5, r.6), r.7))
    .collect();
    let devices: Vec<Value> = rows
        .iter()
        .map(|(d, email)| {
            let mut j = device_json(d);
            j["user_email"] = json!(email);
            j["enrolled"] = json!(email.is_none());
            j
        })
        .collect();
    Ok(Json(json!({"devices": devices})))
}

/// `DELETE /v1/orgs/{org_id}/devices/{id}`: revokes a device (by its server id) and frees the
/// seat. Its license stops at the current token's expiry plus grace.
pub(crate) async fn revoke_device(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    Path((org_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    admin_of(&st, &user, &org_id).await?;
    let n = sqlx::query("DELETE FROM devices WHERE id = $1 AND org_id = $2")
        .bind(&id)
        .bind(&org_id)
        .execute(&st.db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found("device"));
    }
    audit_admin(
        &st,
        &ip,
        &user,
        &org_id,
        "org.device_revoked",
        None,
        json!({"device": id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/orgs/{org_id}/enrolment-token`: a new token (shown once, stored hashed); the old
/// one stops working. Machines already enrolled keep their own credentials.
pub(crate) async fn new_enrolment_token(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    Path(org_id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    admin_of(&st, &user, &org_id).await?;
    let token = new_secret("ke");
    sqlx::query("UPDATE orgs SET enrol_token_hash = $1 WHERE id = $2")
        .bind(hash(&[&token]))
        .bind(&org_id)
        .execute(&st.db.pool)
        .await?;
    audit_admin(
        &st,
        &ip,
        &user,
        &org_id,
        "org.enrolment_token_created",
        None,
        json!({}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"enrolment_token": token}))))
}

/// `DELETE /v1/orgs/{org_id}/enrolment-token`: no more silent enrolments.
pub(crate) async fn disable_enrolment_token(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
    Path(org_id): Path<String>,
) -> ApiResult<StatusCode> {
    admin_of(&st, &user, &org_id).await?;
    sqlx::query("UPDATE orgs SET enrol_token_hash = NULL WHERE id = $1")
        .bind(&org_id)
        .execute(&st.db.pool)
        .await?;
    audit_admin(
        &st,
        &ip,
        &user,
        &org_id,
        "org.enrolment_token_disabled",
        None,
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
