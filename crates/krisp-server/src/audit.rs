//! The audit log of security events. Callers pass ids and non-secret details only.

use crate::util::new_id;

pub(crate) struct Event<'a> {
    pub event: &'static str,
    pub account_id: Option<&'a str>,
    pub org_id: Option<&'a str>,
    pub ip: Option<String>,
    /// The e-mail address an admin action was about.
    pub subject: Option<&'a str>,
    pub detail: serde_json::Value,
}

pub(crate) async fn record<'c, E>(exec: E, now: i64, ev: Event<'_>) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    tracing::info!(
        target: "krisp_server::audit",
        event = ev.event,
        account = ev.account_id,
        org = ev.org_id,
        ip = ev.ip.as_deref(),
        detail = %ev.detail,
        "audit"
    );
    sqlx::query(
        "INSERT INTO audit_log (id, at, event, account_id, org_id, ip, subject, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id("evt"))
    .bind(now)
    .bind(ev.event)
    .bind(ev.account_id)
    .bind(ev.org_id)
    .bind(ev.ip)
    .bind(ev.subject)
    .bind(ev.detail.to_string())
    .execute(exec)
    .await?;
    Ok(())
}
