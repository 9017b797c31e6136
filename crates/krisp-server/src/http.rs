//! HTTP plumbing: shared state, the router, the security middleware and extractors.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tower_http::timeout::TimeoutLayer;

use crate::api;
use crate::clock::Clock;
use crate::config::{Limits, Policy};
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::keys::Keyring;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::ratelimit::{Decision, IpLimiter};
use crate::util::hash;

pub(crate) struct AppState {
    pub db: Db,
    pub clock: Clock,
    pub keys: Keyring,
    pub mailer: Arc<Mailer>,
    pub limits: Limits,
    pub policy: Policy,
    pub metrics: Metrics,
    pub ip_limiter: IpLimiter,
}

pub(crate) type Shared = Arc<AppState>;

/// Every route: (method, path in OpenAPI syntax). The OpenAPI test checks each is documented
/// and routed.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/keys"),
    ("post", "/v1/auth/email"),
    ("post", "/v1/auth/verify"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/logout"),
    ("get", "/v1/account"),
    ("delete", "/v1/account"),
    ("get", "/v1/account/export"),
    ("get", "/v1/devices"),
    ("post", "/v1/devices"),
    ("post", "/v1/devices/enrol"),
    ("delete", "/v1/devices/{device_id}"),
    ("post", "/v1/license"),
    ("post", "/v1/orgs"),
    ("get", "/v1/orgs/{org_id}"),
    ("post", "/v1/orgs/{org_id}/members"),
    ("delete", "/v1/orgs/{org_id}/members/{email}"),
    ("put", "/v1/orgs/{org_id}/seats"),
    ("get", "/v1/orgs/{org_id}/devices"),
    ("delete", "/v1/orgs/{org_id}/devices/{id}"),
    ("post", "/v1/orgs/{org_id}/enrolment-token"),
    ("delete", "/v1/orgs/{org_id}/enrolment-token"),
];

pub(crate) fn router(state: Shared) -> Router {
    let max_body = state.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(api::meta::healthz))
        .route("/metrics", get(api::meta::metrics))
        .route("/openapi.json", get(api::meta::openapi))
        .route("/v1/keys", get(api::meta::keys))
        .route("/v1/auth/email", post(api::auth::request_code))
        .route("/v1/auth/verify", post(api::auth::verify))
        .route("/v1/auth/refresh", post(api::auth::refresh))
        .route("/v1/auth/logout", post(api::auth::logout))
        .route(
            "/v1/account",
            get(api::account::get_account).delete(api::account::delete_account),
        )
        .route("/v1/account/export", get(api::account::export))
        .route(
            "/v1/devices",
            get(api::devices::list).post(api::devices::activate),
        )
        .route("/v1/devices/enrol", post(api::devices::enrol))
        .route("/v1/devices/{device_id}", delete(api::devices::deactivate))
        .route("/v1/license", post(api::devices::license))
        .route("/v1/orgs", post(api::orgs::create))
        .route("/v1/orgs/{org_id}", get(api::orgs::get_org))
        .route("/v1/orgs/{org_id}/members", post(api::orgs::invite))
        .route(
            "/v1/orgs/{org_id}/members/{email}",
            delete(api::orgs::remove_member),
        )
        .route("/v1/orgs/{org_id}/seats", put(api::orgs::set_seats))
        .route("/v1/orgs/{org_id}/devices", get(api::orgs::list_devices))
        .route(
            "/v1/orgs/{org_id}/devices/{id}",
            delete(api::orgs::revoke_device),
        )
        .route(
            "/v1/orgs/{org_id}/enrolment-token",
            post(api::orgs::new_enrolment_token).delete(api::orgs::disable_enrolment_token),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        // A request that takes this long is stuck (database gone?): answer rather than hang.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Outermost middleware: per-IP flood limit, security headers on every answer, metrics, logs.
async fn guard(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let exempt = path == "/healthz" || path == "/metrics";
    let verdict = match (ip, exempt) {
        (Some(ip), false) => st.ip_limiter.check(ip, st.clock.now()),
        _ => Decision::Allowed,
    };
    let mut resp = match verdict {
        Decision::Allowed => next.run(req).await,
        Decision::Limited(s) => {
            st.metrics
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ApiError::too_many("rate_limited", s, "too many requests; slow down").into_response()
        }
        Decision::Banned(s) => {
            st.metrics
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ApiError::too_many(
                "banned",
                s,
                "too many requests from your address; temporarily banned",
            )
            .into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(HSTS),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    st.metrics.observe(status, secs);
    if status >= 500 {
        tracing::error!(%method, path, status, ms = secs * 1e3, "request failed");
    } else {
        tracing::debug!(%method, path, status, ms = secs * 1e3, "request");
    }
    resp
}

/// JSON body with our error format for every rejection (syntax, unknown or missing fields,
/// wrong content type, too large).
pub(crate) struct StrictJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rej) => {
                let code = match &rej {
                    JsonRejection::JsonDataError(_) => "invalid_body",
                    JsonRejection::JsonSyntaxError(_) => "malformed_json",
                    JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
                    JsonRejection::BytesRejection(_) => "body_too_large",
                    _ => "invalid_body",
                };
                let status = rej.status();
                let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
                    StatusCode::BAD_REQUEST
                } else {
                    status
                };
                Err(ApiError::new(status, code, rej.body_text()))
            }
        }
    }
}

/// The peer's IP address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| ClientIp(c.0.ip()))
            .ok_or_else(ApiError::internal)
    }
}

/// A signed-in user (access token).
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub account_id: String,
    pub session_id: String,
    pub email: String,
    pub plan: String,
    pub plan_ends_at: Option<i64>,
}

/// Who is calling: a user, or a machine enrolled by its organisation's token.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    User(User),
    Device {
        row_id: String,
        device_id: String,
        org_id: String,
    },
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn user_from_token(st: &AppState, token: &str) -> ApiResult<Option<User>> {
    if !token.starts_with("ka_") || token.len() > 200 {
        return Ok(None);
    }
    let row: Option<(String, String, String, String, Option<i64>)> = sqlx::query_as(
        "SELECT s.id, a.id, a.email, a.plan, a.plan_ends_at FROM sessions s \
         JOIN accounts a ON a.id = s.account_id \
         WHERE s.access_hash = $1 AND s.access_expires_at > $2",
    )
    .bind(hash(&[token]))
    .bind(st.clock.now())
    .fetch_optional(&st.db.pool)
    .await?;
    Ok(
        row.map(|(session_id, account_id, email, plan, plan_ends_at)| User {
            account_id,
            session_id,
            email,
            plan,
            plan_ends_at,
        }),
    )
}

impl FromRequestParts<Shared> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Shared) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        user_from_token(st, token)
            .await?
            .ok_or_else(ApiError::unauthorized)
    }
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Shared) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if token.starts_with("kd_") && token.len() <= 200 {
            let row: Option<(String, String, Option<String>)> =
                sqlx::query_as("SELECT id, device_id, org_id FROM devices WHERE token_hash = $1")
                    .bind(hash(&[token]))
                    .fetch_optional(&st.db.pool)
                    .await?;
            return match row {
                Some((row_id, device_id, Some(org_id))) => Ok(Caller::Device {
                    row_id,
                    device_id,
                    org_id,
                }),
                _ => Err(ApiError::unauthorized()),
            };
        }
        user_from_token(st, token)
            .await?
            .map(Caller::User)
            .ok_or_else(ApiError::unauthorized)
    }
}
