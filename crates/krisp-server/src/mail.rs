//! Sign-in mails: SMTP through lettre when a relay is configured; otherwise (development) the
//! code is written to the log, clearly marked. Tests can also keep mails in an in-memory
//! [`Outbox`].

use std::sync::{Arc, Mutex};

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::error::Error;

/// A mail the server sent (kept only with `dev_outbox`).
#[derive(Debug, Clone)]
pub struct SentMail {
    /// Recipient.
    pub to: String,
    /// The sign-in code it carried.
    pub code: String,
}

/// In-memory copy of sent mails, for tests. Never reachable over HTTP.
#[derive(Debug, Clone, Default)]
pub struct Outbox(Arc<Mutex<Vec<SentMail>>>);

impl Outbox {
    /// The latest code sent to `email`.
    pub fn last_code_for(&self, email: &str) -> Option<String> {
        let mails = self.0.lock().unwrap_or_else(|p| p.into_inner());
        mails
            .iter()
            .rev()
            .find(|m| m.to.eq_ignore_ascii_case(email))
            .map(|m| m.code.clone())
    }

    /// Number of mails sent so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No mails yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, mail: SentMail) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(mail);
    }
}

pub(crate) struct Mailer {
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    pub outbox: Option<Outbox>,
}

impl Mailer {
    pub fn new(smtp_url: Option<&str>, from: &str, dev_outbox: bool) -> Result<Self, Error> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| Error::Smtp(format!("bad sender address {from:?}: {e}")))?;
        let smtp = match smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| Error::Smtp(e.to_string()))?
                    .build(),
            ),
            None => None,
        };
        Ok(Self {
            smtp,
            from,
            outbox: dev_outbox.then(Outbox::default),
        })
    }

    pub fn has_relay(&self) -> bool {
        self.smtp.is_some()
    }

    /// Sends the code. Called from a spawned task so the HTTP answer does not wait for SMTP
    /// (and its timing does not tell whether the address has an account).
    pub async fn send_code(&self, to: &str, code: &str, ttl_minutes: i64) {
        if let Some(outbox) = &self.outbox {
            outbox.push(SentMail {
                to: to.to_owned(),
                code: code.to_owned(),
            });
        }
        let Some(smtp) = &self.smtp else {
            tracing::warn!(
                target: "krisp_server::dev_mail",
                to,
                code,
                "DEV MAIL (no SMTP relay configured, code NOT e-mailed): sign-in code for {to} is {code}"
            );
            return;
        };
        let to_box: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "recipient rejected by mail builder");
                return;
            }
        };
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to_box)
            .subject(format!("Your Krisp sign-in code: {code}"))
            .header(ContentType::TEXT_PLAIN)
            .body(format!(
                "Your Krisp sign-in code is {code}\n\nIt expires in {ttl_minutes} minutes. \
                 If you did not ask for it, ignore this mail.\n"
            ));
        match msg {
            Ok(msg) => {
                if let Err(e) = smtp.send(msg).await {
                    tracing::error!(error = %e, "SMTP delivery of sign-in code failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "building sign-in mail failed"),
        }
    }
}
