//! Rate limits.
//!
//! * Sign-in limits (codes per address, sign-in attempts per IP, bans) live in the
//!   `rate_limits` table and are updated with one atomic upsert, so they hold across any
//!   number of instances sharing the database.
//! * A general per-IP request budget is kept in memory: it is per instance, cheap, and only
//!   sheds floods; correctness never depends on it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::db::Db;

/// Outcome of counting one hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allowed,
    /// Over the limit; retry after this many seconds.
    Limited(i64),
    /// Banned; retry after this many seconds.
    Banned(i64),
}

pub(crate) struct Rule {
    pub window: i64,
    pub limit: i64,
    /// Ban once hits in one window pass this (0 = never ban).
    pub ban_after: i64,
    pub ban_secs: i64,
}

/// Counts one hit on `key` and decides.
pub(crate) async fn hit(
    db: &Db,
    key: &str,
    now: i64,
    rule: &Rule,
) -> Result<Decision, sqlx::Error> {
    let (hits, window_start, banned_until): (i64, i64, i64) = sqlx::query_as(
        "INSERT INTO rate_limits (key, window_start, hits, banned_until) VALUES ($1, $2, 1, 0) \
         ON CONFLICT (key) DO UPDATE SET \
           hits = CASE WHEN rate_limits.window_start <= $3 THEN 1 ELSE rate_limits.hits + 1 END, \
           window_start = CASE WHEN rate_limits.window_start <= $3 THEN $2 ELSE rate_limits.window_start END \
         RETURNING hits, window_start, banned_until",
    )
    .bind(key)
    .bind(now)
    .bind(now - rule.window)
    .fetch_one(&db.pool)
    .await?;
    if banned_until > now {
        return Ok(Decision::Banned(banned_until - now));
    }
    if rule.ban_after > 0 && hits > rule.ban_after {
        let until = now + rule.ban_secs;
        sqlx::query("UPDATE rate_limits SET banned_until = $1 WHERE key = $2")
            .bind(until)
            .bind(key)
            .execute(&db.pool)
            .await?;
        tracing::warn!(key, until, "temporary ban");
        crate::audit::record(
            &db.pool,
            now,
            crate::audit::Event {
                event: "abuse.banned",
                account_id: None,
                org_id: None,
                ip: key.strip_prefix("ip:").map(str::to_owned),
                subject: None,
                detail: serde_json::json!({"until": until}),
            },
        )
        .await?;
        return Ok(Decision::Banned(rule.ban_secs));
    }
    if hits > rule.limit {
        return Ok(Decision::Limited(window_start + rule.window - now));
    }
    Ok(Decision::Allowed)
}

/// Seconds until `key` is back under `rule.limit`, if it is over it now (does not count a hit).
pub(crate) async fn over_limit(
    db: &Db,
    key: &str,
    now: i64,
    rule: &Rule,
) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT hits, window_start FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.and_then(|(hits, start)| {
        (hits >= rule.limit && start > now - rule.window).then_some(start + rule.window - now)
    }))
}

/// Seconds left on a ban of `key`, if any (does not count a hit).
pub(crate) async fn banned(db: &Db, key: &str, now: i64) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT banned_until FROM rate_limits WHERE key = $1")
        .bind(key)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.and_then(|(until,)| (until > now).then_some(until - now)))
}

/// Deletes counters whose window and ban are both over.
pub(crate) async fn sweep(db: &Db, now: i64, max_window: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM rate_limits WHERE window_start < $1 AND banned_until < $2")
        .bind(now - max_window)
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected())
}

struct IpState {
    second: i64,
    count: u32,
    banned_until: i64,
}

/// Per-instance, per-IP requests-per-second budget with a short ban for floods.
pub(crate) struct IpLimiter {
    per_sec: u32,
    map: Mutex<HashMap<IpAddr, IpState>>,
}

impl IpLimiter {
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `now` in seconds. Floods past 4× the budget in one second are banned for a minute.
    pub fn check(&self, ip: IpAddr, now: i64) -> Decision {
        if self.per_sec == 0 {
            return Decision::Allowed;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, s| s.second >= now - 1 || s.banned_until > now);
        }
        let s = map.entry(ip).or_insert(IpState {
            second: now,
            count: 0,
            banned_until: 0,
        });
        if s.banned_until > now {
            return Decision::Banned(s.banned_until - now);
        }
        if s.second != now {
            s.second = now;
            s.count = 0;
        }
        s.count += 1;
        if s.count > self.per_sec.saturating_mul(4) {
            s.banned_until = now + 60;
            return Decision::Banned(60);
        }
        if s.count > self.per_sec {
            return Decision::Limited(1);
        }
        Decision::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_limiter_limits_then_bans() {
        let l = IpLimiter::new(2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(l.check(ip, 5), Decision::Allowed);
        assert_eq!(l.check(ip, 5), Decision::Allowed);
        assert_eq!(l.check(ip, 5), Decision::Limited(1));
        for _ in 0..5 {
            l.check(ip, 5);
        }
        assert_eq!(l.check(ip, 5), Decision::Banned(60));
        assert_eq!(l.check(ip, 6), Decision::Banned(59));
        assert_eq!(l.check(ip, 66), Decision::Allowed);
    }
}
