//! Health, metrics, the OpenAPI document and the public signing keys.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::http::Shared;

pub(crate) async fn healthz(State(st): State<Shared>) -> ApiResult<Json<Value>> {
    sqlx::query("SELECT 1").execute(&st.db.pool).await?;
    Ok(Json(json!({"status": "ok"})))
}

pub(crate) async fn metrics(State(st): State<Shared>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

pub(crate) async fn openapi() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
}

/// The public keys clients may trust, and which one signs now. Clients embed these by id.
pub(crate) async fn keys(State(st): State<Shared>) -> Json<Value> {
    let keys: Vec<Value> = st
        .keys
        .public()
        .iter()
        .map(|(kid, k)| json!({"kid": kid, "alg": "Ed25519", "public_key": k.to_base64()}))
        .collect();
    Json(json!({"current": st.keys.current().kid(), "keys": keys}))
}
