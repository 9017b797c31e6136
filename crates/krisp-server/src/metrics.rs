//! Hand-written Prometheus counters (text exposition format 0.0.4). Per instance.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the request-duration histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub(crate) struct Metrics {
    pub http_2xx: AtomicU64,
    pub http_4xx: AtomicU64,
    pub http_5xx: AtomicU64,
    pub http_other: AtomicU64,
    pub codes_sent: AtomicU64,
    pub sign_ins: AtomicU64,
    pub sign_in_failures: AtomicU64,
    pub devices_activated: AtomicU64,
    pub licenses_issued: AtomicU64,
    pub rate_limited: AtomicU64,
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_us: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, status: u16, secs: f64) {
        match status {
            200..=299 => &self.http_2xx,
            400..=499 => &self.http_4xx,
            500..=599 => &self.http_5xx,
            _ => &self.http_other,
        }
        .fetch_add(1, Relaxed);
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.duration_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Relaxed);
        self.duration_sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let _ = writeln!(
            s,
            "# HELP krisp_http_requests_total HTTP requests by status class."
        );
        let _ = writeln!(s, "# TYPE krisp_http_requests_total counter");
        for (class, c) in [
            ("2xx", &self.http_2xx),
            ("4xx", &self.http_4xx),
            ("5xx", &self.http_5xx),
            ("other", &self.http_other),
        ] {
            let _ = writeln!(
                s,
                "krisp_http_requests_total{{class=\"{class}\"}} {}",
                c.load(Relaxed)
            );
        }
        for (name, help, c) in [
            (
                "krisp_sign_in_codes_sent_total",
                "Sign-in codes sent.",
                &self.codes_sent,
            ),
            (
                "krisp_sign_ins_total",
                "Successful sign-ins.",
                &self.sign_ins,
            ),
            (
                "krisp_sign_in_failures_total",
                "Wrong, expired or replayed codes.",
                &self.sign_in_failures,
            ),
            (
                "krisp_devices_activated_total",
                "Device activations.",
                &self.devices_activated,
            ),
            (
                "krisp_licenses_issued_total",
                "License tokens signed.",
                &self.licenses_issued,
            ),
            (
                "krisp_rate_limited_total",
                "Requests refused by a rate limit or ban.",
                &self.rate_limited,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", c.load(Relaxed));
        }
        let name = "krisp_http_request_duration_seconds";
        let _ = writeln!(s, "# HELP {name} Request handling time.");
        let _ = writeln!(s, "# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.duration_buckets[i].load(Relaxed)
            );
        }
        let count = self.duration_count.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{name}_sum {}",
            self.duration_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count {count}");
        s
    }
}
