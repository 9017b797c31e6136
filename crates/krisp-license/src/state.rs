//! What the license allows right now, as a pure function of the stored token, the embedded
//! keys, this device's id and the trusted time.

use krisp_token::{KeySet, Status, VerifyError, verify};

/// Why noise removal is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiryReason {
    /// The grace period ended without a successful check with the server.
    GraceEnded {
        /// When the grace period ended (Unix seconds).
        at: i64,
    },
    /// The server refused to renew: device removed, plan ended, seat revoked. Its message.
    Refused(String),
    /// The stored token is for another machine.
    WrongDevice,
    /// The stored token's signature does not match (tampered with or damaged).
    Tampered,
    /// The stored token was signed by a key this version of the app does not know.
    UnknownKey,
    /// The stored token is unreadable.
    Malformed,
    /// The token claims to be issued in the future: the clock is badly off.
    ClockWrong,
}

/// The license as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseState {
    /// Never signed in or activated (or signed out).
    Unlicensed,
    /// Licensed; the server will be asked again before `until`.
    Active {
        /// When the token needs renewing (Unix seconds).
        until: i64,
        /// The plan name.
        plan: String,
    },
    /// The server could not be reached for a while; still working until `until`.
    Grace {
        /// End of the offline grace period (Unix seconds).
        until: i64,
    },
    /// Noise removal stops (audio passes through) until fixed.
    Expired {
        /// Why.
        reason: ExpiryReason,
    },
}

impl LicenseState {
    /// Whether noise removal may run.
    pub fn allows_noise_removal(&self) -> bool {
        matches!(
            self,
            LicenseState::Active { .. } | LicenseState::Grace { .. }
        )
    }

    /// A sentence for the UI: what the state is, why, and what to do.
    pub fn message(&self) -> String {
        match self {
            LicenseState::Unlicensed => {
                "Not activated: sign in with your e-mail address to turn on noise removal.".into()
            }
            LicenseState::Active { plan, .. } => {
                format!("Licensed ({plan} plan). Noise removal is on.")
            }
            LicenseState::Grace { until } => format!(
                "Cannot reach the Krisp license server; noise removal keeps working offline \
                 until {}. Connect to the internet to renew.",
                fmt_time(*until)
            ),
            LicenseState::Expired { reason } => {
                let why = match reason {
                    ExpiryReason::GraceEnded { at } => format!(
                        "the license could not be renewed and the offline grace period ended \
                         at {}. Connect to the internet (or check the proxy/firewall) so the \
                         app can reach the license server",
                        fmt_time(*at)
                    ),
                    ExpiryReason::Refused(msg) => format!(
                        "the license server refused to renew it ({msg}). Sign in again, or ask \
                         your administrator about your plan or seat"
                    ),
                    ExpiryReason::WrongDevice => {
                        "the stored license belongs to another computer. Sign in again on this \
                         computer"
                            .into()
                    }
                    ExpiryReason::Tampered | ExpiryReason::Malformed => {
                        "the stored license is damaged. Sign in again".into()
                    }
                    ExpiryReason::UnknownKey => {
                        "the license was signed with a key this version does not know. Update \
                         Krisp"
                            .into()
                    }
                    ExpiryReason::ClockWrong => {
                        "this computer's clock is wrong. Set the correct date and time".into()
                    }
                };
                format!("Noise removal is off: {why}. Audio passes through unchanged.")
            }
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM UTC` (no time-zone database needed).
pub fn fmt_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// The state of `token` (if any) for `device_id` at the trusted time `now`.
///
/// `refused` is the server's last refusal, if the latest successful check was one.
pub fn evaluate(
    token: Option<&str>,
    refused: Option<&str>,
    keys: &KeySet,
    device_id: &str,
    now: i64,
) -> LicenseState {
    if let Some(msg) = refused {
        return LicenseState::Expired {
            reason: ExpiryReason::Refused(msg.to_owned()),
        };
    }
    let Some(token) = token else {
        return LicenseState::Unlicensed;
    };
    match verify(token, keys, device_id, now) {
        Ok(l) => match l.status {
            Status::Active => LicenseState::Active {
                until: l.claims.exp,
                plan: l.claims.plan,
            },
            Status::Grace => LicenseState::Grace {
                until: l.claims.grace,
            },
        },
        Err(e) => LicenseState::Expired {
            reason: match e {
                VerifyError::Expired { grace_until } => {
                    ExpiryReason::GraceEnded { at: grace_until }
                }
                VerifyError::WrongDevice { .. } => ExpiryReason::WrongDevice,
                VerifyError::BadSignature => ExpiryReason::Tampered,
                VerifyError::UnknownKey(_) => ExpiryReason::UnknownKey,
                VerifyError::NotYetValid { .. } => ExpiryReason::ClockWrong,
                VerifyError::Malformed(_) | VerifyError::UnsupportedVersion(_) => {
                    ExpiryReason::Malformed
                }
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_is_unlicensed() {
        let s = evaluate(None, None, &KeySet::new(), "d", 0);
        assert_eq!(s, LicenseState::Unlicensed);
        assert!(!s.allows_noise_removal());
        assert!(s.message().contains("sign in"));
    }

    #[test]
    fn refusal_wins_over_a_stored_token() {
        let s = evaluate(Some("x"), Some("device revoked"), &KeySet::new(), "d", 0);
        assert_eq!(
            s,
            LicenseState::Expired {
                reason: ExpiryReason::Refused("device revoked".into())
            }
        );
        assert!(s.message().contains("device revoked"));
        assert!(s.message().contains("passes through"));
    }

    #[test]
    fn garbage_token_is_expired_as_malformed() {
        let s = evaluate(Some("garbage"), None, &KeySet::new(), "d", 0);
        assert_eq!(
            s,
            LicenseState::Expired {
                reason: ExpiryReason::Malformed
            }
        );
    }

    #[test]
    fn times_format_as_utc_dates() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(fmt_time(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(fmt_time(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn every_state_explains_itself() {
        let states = [
            LicenseState::Grace { until: 0 },
            LicenseState::Active {
                until: 0,
                plan: "trial".into(),
            },
            LicenseState::Expired {
                reason: ExpiryReason::GraceEnded { at: 0 },
            },
            LicenseState::Expired {
                reason: ExpiryReason::ClockWrong,
            },
            LicenseState::Expired {
                reason: ExpiryReason::UnknownKey,
            },
            LicenseState::Expired {
                reason: ExpiryReason::WrongDevice,
            },
        ];
        for s in states {
            assert!(s.message().len() > 20, "{s:?}");
        }
    }
}
