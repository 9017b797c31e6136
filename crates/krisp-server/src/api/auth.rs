//! Password-less sign-in: e-mailed one-time codes, sessions with refresh rotation.

use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Event};
use crate::error::{ApiError, ApiResult};
use crate::http::{ClientIp, Shared, StrictJson, User};
use crate::ratelimit::{self, Decision, Rule};
use crate::util::{hash, new_code, new_id, new_secret, normalise_email};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmailReq {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyReq {
    email: String,
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshReq {
    refresh_token: String,
}

fn ip_key(ip: &ClientIp) -> String {
    format!("ip:{}", ip.0)
}

fn refuse(st: &Shared, d: Decision) -> ApiResult<()> {
    match d {
        Decision::Allowed => Ok(()),
        Decision::Limited(s) => {
            st.metrics.rate_limited.fetch_add(1, Relaxed);
            Err(ApiError::too_many(
                "rate_limited",
                s,
                "too many sign-in requests; wait and try again",
            ))
        }
        Decision::Banned(s) => {
            st.metrics.rate_limited.fetch_add(1, Relaxed);
            Err(ApiError::too_many(
                "banned",
                s,
                "too many sign-in requests from your address; temporarily banned",
            ))
        }
    }
}

/// Counts a sign-in hit for the caller's IP (code requests and failures).
async fn count_ip(st: &Shared, ip: &ClientIp, now: i64) -> ApiResult<()> {
    let l = &st.limits;
    let rule = Rule {
        window: l.window_secs,
        limit: l.auth_per_ip,
        ban_after: l.ban_after,
        ban_secs: l.ban_secs,
    };
    let d = ratelimit::hit(&st.db, &ip_key(ip), now, &rule).await?;
    refuse(st, d)
}

async fn check_ip_ban(st: &Shared, ip: &ClientIp, now: i64) -> ApiResult<()> {
    match ratelimit::banned(&st.db, &ip_key(ip), now).await? {
        Some(s) => refuse(st, Decision::Banned(s)),
        None => Ok(()),
    }
}

/// `POST /v1/auth/email`: always answers the same way whether or not an account exists.
pub(crate) async fn request_code(
    State(st): State<Shared>,
    ip: ClientIp,
    StrictJson(req): StrictJson<EmailReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let email = normalise_email(&req.email)?;
    let now = st.clock.now();
    count_ip(&st, &ip, now).await?;
    let per_email = Rule {
        window: st.limits.window_secs,
        limit: st.limits.codes_per_email,
        ban_after: 0,
        ban_secs: 0,
    };
    refuse(
        &st,
        ratelimit::hit(&st.db, &format!("email:{email}"), now, &per_email).await?,
    )?;
    let code = new_code();
    sqlx::query(
        "INSERT INTO login_codes (email, code_hash, expires_at, attempts, created_at) \
         VALUES ($1, $2, $3, 0, $4) \
         ON CONFLICT (email) DO UPDATE SET code_hash = $2, expires_at = $3, attempts = 0, created_at = $4",
    )
    .bind(&email)
    .bind(hash(&[&email, &code]))
    .bind(now + st.policy.code_ttl)
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    st.metrics.codes_sent.fetch_add(1, Relaxed);
    let mailer = st.mailer.clone();
    let ttl_min = st.policy.code_ttl / 60;
    if mailer.has_relay() {
        tokio::spawn(async move { mailer.send_code(&email, &code, ttl_min).await });
    } else {
        // Log/outbox only: do it before answering so tests can read it right away.
        mailer.send_code(&email, &code, ttl_min).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "code_sent", "expires_in": st.policy.code_ttl})),
    ))
}

fn bad_code() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_code",
        "the code is wrong, expired or already used; request a new code",
    )
}

/// Issues a new session (access + refresh token) for `account_id`.
async fn new_session(st: &Shared, account_id: &str, now: i64) -> ApiResult<Value> {
    let access = new_secret("ka");
    let refresh = new_secret("kr");
    let access_exp = now + st.policy.access_ttl;
    let refresh_exp = now + st.policy.refresh_ttl;
    sqlx::query(
        "INSERT INTO sessions (id, account_id, refresh_hash, access_hash, access_expires_at, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id("ses"))
    .bind(account_id)
    .bind(hash(&[&refresh]))
    .bind(hash(&[&access]))
    .bind(access_exp)
    .bind(refresh_exp)
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    Ok(json!({
        "account_id": account_id,
        "access_token": access,
        "access_expires_at": access_exp,
        "refresh_token": refresh,
        "refresh_expires_at": refresh_exp,
    }))
}

/// `POST /v1/auth/verify`: one atomic statement counts the try, so the 5-try cap holds
/// across instances; a matching code is consumed by a delete that only one caller can win.
pub(crate) async fn verify(
    State(st): State<Shared>,
    ip: ClientIp,
    StrictJson(req): StrictJson<VerifyReq>,
) -> ApiResult<Json<Value>> {
    let email = normalise_email(&req.email)?;
    let now = st.clock.now();
    check_ip_ban(&st, &ip, now).await?;
    let code = req.code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_code_format",
            "the code is 6 digits",
        ));
    }
    // Wrong codes per address across all codes: new codes reset the per-code count, this
    // does not, so guessing stays at a handful of tries per hour whatever the attacker's IPs.
    let fail_key = format!("verify:{email}");
    let fail_rule = Rule {
        window: 3600,
        limit: st.limits.failures_per_email_hour,
        ban_after: 0,
        ban_secs: 0,
    };
    if let Some(retry) = ratelimit::over_limit(&st.db, &fail_key, now, &fail_rule).await? {
        st.metrics.rate_limited.fetch_add(1, Relaxed);
        return Err(ApiError::too_many(
            "rate_limited",
            retry,
            "too many wrong codes for this address; wait and request a new code",
        ));
    }
    let row: Option<(String, i64)> = sqlx::query_as(
        "UPDATE login_codes SET attempts = attempts + 1 \
         WHERE email = $1 AND expires_at > $2 AND attempts < $3 \
         RETURNING code_hash, attempts",
    )
    .bind(&email)
    .bind(now)
    .bind(st.limits.max_code_attempts)
    .fetch_optional(&st.db.pool)
    .await?;
    let expected = hash(&[&email, code]);
    let ok = match row {
        Some((h, _)) if h == expected => {
            sqlx::query("DELETE FROM login_codes WHERE email = $1 AND code_hash = $2")
                .bind(&email)
                .bind(&expected)
                .execute(&st.db.pool)
                .await?
                .rows_affected()
                == 1
        }
        _ => false,
    };
    if !ok {
        st.metrics.sign_in_failures.fetch_add(1, Relaxed);
        tracing::info!(ip = %ip.0, "sign-in code refused");
        audit::record(
            &st.db.pool,
            now,
            Event {
                event: "auth.sign_in_failed",
                account_id: None,
                org_id: None,
                ip: Some(ip.0.to_string()),
                subject: Some(&email),
                detail: json!({}),
            },
        )
        .await?;
        ratelimit::hit(&st.db, &fail_key, now, &fail_rule).await?;
        count_ip(&st, &ip, now).await?;
        return Err(bad_code());
    }
    // First sign-in creates a personal account on a trial.
    sqlx::query(
        "INSERT INTO accounts (id, email, plan, plan_ends_at, seats, created_at) \
         VALUES ($1, $2, 'trial', $3, $4, $5) ON CONFLICT (email) DO NOTHING",
    )
    .bind(new_id("acc"))
    .bind(&email)
    .bind(now + st.policy.trial_secs)
    .bind(st.policy.trial_seats)
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    let (account_id,): (String,) = sqlx::query_as("SELECT id FROM accounts WHERE email = $1")
        .bind(&email)
        .fetch_one(&st.db.pool)
        .await?;
    // Invitations become memberships once the invitee proves the address.
    sqlx::query("UPDATE org_members SET account_id = $1 WHERE email = $2 AND account_id IS NULL")
        .bind(&account_id)
        .bind(&email)
        .execute(&st.db.pool)
        .await?;
    let session = new_session(&st, &account_id, now).await?;
    st.metrics.sign_ins.fetch_add(1, Relaxed);
    audit::record(
        &st.db.pool,
        now,
        Event {
            event: "auth.sign_in",
            account_id: Some(&account_id),
            org_id: None,
            ip: Some(ip.0.to_string()),
            subject: None,
            detail: json!({"method": "email_code"}),
        },
    )
    .await?;
    Ok(Json(session))
}

/// `POST /v1/auth/refresh`: rotates both tokens; the old refresh token stops working.
pub(crate) async fn refresh(
    State(st): State<Shared>,
    ip: ClientIp,
    StrictJson(req): StrictJson<RefreshReq>,
) -> ApiResult<Json<Value>> {
    let now = st.clock.now();
    check_ip_ban(&st, &ip, now).await?;
    let access = new_secret("ka");
    let refresh = new_secret("kr");
    let access_exp = now + st.policy.access_ttl;
    let refresh_exp = now + st.policy.refresh_ttl;
    let row: Option<(String,)> = if req.refresh_token.starts_with("kr_")
        && req.refresh_token.len() <= 200
    {
        sqlx::query_as(
            "UPDATE sessions SET prev_refresh_hash = refresh_hash, refresh_hash = $1, access_hash = $2, \
             access_expires_at = $3, expires_at = $4 \
             WHERE refresh_hash = $5 AND expires_at > $6 RETURNING account_id",
        )
        .bind(hash(&[&refresh]))
        .bind(hash(&[&access]))
        .bind(access_exp)
        .bind(refresh_exp)
        .bind(hash(&[&req.refresh_token]))
        .bind(now)
        .fetch_optional(&st.db.pool)
        .await?
    } else {
        None
    };
    let Some((account_id,)) = row else {
        // A refresh token that was already rotated out is being replayed: one of the two
        // holders is a thief, so end the session for both.
        let reused: Option<(String,)> = sqlx::query_as(
            "DELETE FROM sessions WHERE prev_refresh_hash = $1 RETURNING account_id",
        )
        .bind(hash(&[&req.refresh_token]))
        .fetch_optional(&st.db.pool)
        .await?;
        if let Some((account_id,)) = reused {
            tracing::warn!(account = %account_id, ip = %ip.0, "refresh token reuse: session revoked");
            audit::record(
                &st.db.pool,
                now,
                Event {
                    event: "auth.refresh_reuse_revoked",
                    account_id: Some(&account_id),
                    org_id: None,
                    ip: Some(ip.0.to_string()),
                    subject: None,
                    detail: json!({}),
                },
            )
            .await?;
        }
        count_ip(&st, &ip, now).await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "the session is expired or was signed out; sign in again",
        ));
    };
    Ok(Json(json!({
        "account_id": account_id,
        "access_token": access,
        "access_expires_at": access_exp,
        "refresh_token": refresh,
        "refresh_expires_at": refresh_exp,
    })))
}

/// `POST /v1/auth/logout`: ends this session (both tokens).
pub(crate) async fn logout(
    State(st): State<Shared>,
    ip: ClientIp,
    user: User,
) -> ApiResult<StatusCode> {
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(&user.session_id)
        .execute(&st.db.pool)
        .await?;
    audit::record(
        &st.db.pool,
        st.clock.now(),
        Event {
            event: "auth.sign_out",
            account_id: Some(&user.account_id),
            org_id: None,
            ip: Some(ip.0.to_string()),
            subject: None,
            detail: json!({}),
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
