//! The crate's one error type.

use std::path::PathBuf;

/// Everything the license client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the server (refused, DNS, timeout). The app keeps working offline
    /// while the stored license is within its grace period.
    #[error("cannot reach the license server at {url}: {detail}")]
    Unreachable {
        /// The server URL tried.
        url: String,
        /// What the network stack said.
        detail: String,
    },
    /// The TLS handshake failed (bad or untrusted certificate, not a TLS server, ...).
    #[error("secure connection to the license server at {url} failed: {detail}")]
    Tls {
        /// The server URL tried.
        url: String,
        /// What the TLS layer said.
        detail: String,
    },
    /// Something answered, but not with the license API's JSON (a captive portal, a proxy's
    /// HTML error page, a wrong URL).
    #[error("the license server at {url} gave an unexpected answer (HTTP {status}): {snippet:?}")]
    BadResponse {
        /// The server URL tried.
        url: String,
        /// HTTP status of the answer.
        status: u16,
        /// The first bytes of the body, for the log.
        snippet: String,
    },
    /// The server refused the request and said why.
    #[error("the license server refused the request (HTTP {status}, {code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's machine-readable error code.
        code: String,
        /// The server's message for the user.
        message: String,
    },
    /// The call needs a sign-in (or an enrolment) first.
    #[error("not signed in: sign in with your e-mail address first")]
    NotSignedIn,
    /// The server sent a license token that does not verify on this machine.
    #[error("the license server sent a token that does not verify: {0}")]
    Token(#[from] krisp_token::VerifyError),
    /// The OS keyring failed.
    #[error("the system keyring failed: {0}")]
    Keyring(String),
    /// Reading or writing the fallback secret file (or the policy file) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The stored secrets or the policy file could not be parsed.
    #[error("{path}: invalid contents: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The client was configured wrongly (bad URL, bad certificate).
    #[error("license client configuration: {0}")]
    Config(String),
}

impl Error {
    /// True when the server could not give a real answer (network, TLS, garbage, a server
    /// error, rate limiting): the stored license stays usable until its grace period ends,
    /// and the request is worth retrying later.
    pub fn is_offline(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::Tls { .. } | Error::BadResponse { .. }
        ) || matches!(self, Error::Server { status, .. } if *status >= 500 || *status == 408 || *status == 429)
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16) -> Error {
        Error::Server {
            status,
            code: "x".into(),
            message: "y".into(),
        }
    }

    #[test]
    fn transient_failures_count_as_offline_and_refusals_do_not() {
        for s in [429, 408, 500, 503] {
            assert!(server(s).is_offline(), "{s}");
        }
        for s in [400, 401, 402, 404, 409] {
            assert!(!server(s).is_offline(), "{s}");
        }
        assert!(!Error::NotSignedIn.is_offline());
        assert!(
            Error::Unreachable {
                url: "u".into(),
                detail: "d".into()
            }
            .is_offline()
        );
    }
}
