//! The HTTP client for the license server.

use std::sync::Mutex;
use std::time::Duration;

use krisp_token::KeySet;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::state::{LicenseState, evaluate};
use crate::store::{Backend, SecretStore, keys};
use crate::time::{Clock, RefreshPolicy, TrustedTime, random_jitter, trusted_time};

/// Only persist a newer wall-clock reading when it moved by at least this much (seconds), so
/// that checking the state does not write to the keyring every time.
const FLOOR_WRITE_STEP: i64 = 60;

/// How to reach the server and whom to trust.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://…` (plain `http://` only for loopback development and tests).
    pub server_url: String,
    /// This machine's stable id; tokens are bound to it.
    pub device_id: String,
    /// The public keys tokens verify with (compiled into the app).
    pub keys: KeySet,
    /// Wall clock (tests inject a manual one).
    pub clock: Clock,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Extra trusted root certificates, PEM (a company's private CA).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
}

impl ClientConfig {
    /// Defaults: system clock, 20 s timeout, the platform's root certificates.
    pub fn new(server_url: impl Into<String>, device_id: impl Into<String>, keys: KeySet) -> Self {
        Self {
            server_url: server_url.into(),
            device_id: device_id.into(),
            keys,
            clock: Clock::system(),
            timeout: Duration::from_secs(20),
            extra_root_certs_pem: Vec::new(),
        }
    }
}

/// A device as the server records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Device {
    /// Server id (`dev_…`).
    pub id: String,
    /// The client's device id.
    pub device_id: String,
    /// Display name.
    pub name: String,
    /// Operating system.
    pub os: String,
    /// Organisation whose seat it uses.
    pub org_id: Option<String>,
}

#[derive(Deserialize)]
struct SessionBody {
    access_token: String,
    access_expires_at: i64,
    refresh_token: String,
}

#[derive(Deserialize)]
struct LicenseBody {
    token: String,
}

#[derive(Deserialize)]
struct EnrolBody {
    device: Device,
    device_token: String,
}

/// The license client: signs in, activates, renews and verifies the license, and keeps its
/// secrets in a [`SecretStore`].
pub struct LicenseClient {
    http: reqwest::Client,
    base: Url,
    device_id: String,
    keys: KeySet,
    clock: Clock,
    store: Box<dyn SecretStore>,
    /// Short-lived access token and its expiry (server time); memory only.
    access: Mutex<Option<(String, i64)>>,
    /// Serialises refresh-token rotation.
    rotation: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for LicenseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseClient")
            .field("base", &self.base.as_str())
            .field("device_id", &self.device_id)
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl LicenseClient {
    /// A client for `config.server_url` keeping secrets in `store`.
    pub fn new(config: ClientConfig, store: Box<dyn SecretStore>) -> Result<Self> {
        let base = Url::parse(&config.server_url)
            .map_err(|e| Error::Config(format!("server URL {:?}: {e}", config.server_url)))?;
        match base.scheme() {
            "https" => {}
            "http" if is_loopback(&base) => {}
            "http" => {
                return Err(Error::Config(format!(
                    "server URL {:?} must use https:// (plain http is allowed on loopback only)",
                    config.server_url
                )));
            }
            s => return Err(Error::Config(format!("unsupported URL scheme {s:?}"))),
        }
        // reqwest is built without a bundled crypto provider; use ring, as the server does.
        // Installing fails harmlessly if the app already chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("krisp-license/", env!("CARGO_PKG_VERSION")))
            .https_only(base.scheme() == "https");
        for pem in &config.extra_root_certs_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::Config(format!("extra root certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        tracing::info!(server = %base, backend = %store.backend(), "license client ready");
        Ok(Self {
            http,
            base,
            device_id: config.device_id,
            keys: config.keys,
            clock: config.clock,
            store,
            access: Mutex::new(None),
            rotation: tokio::sync::Mutex::new(()),
        })
    }

    /// Where the secrets are kept (keyring or fallback file).
    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// This machine's device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    // ------------------------------------------------------------------ HTTP plumbing

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<Option<T>> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Error::Config(format!("request path {path:?}: {e}")))?;
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        tracing::debug!(%method, path, status = status.as_u16(), "license server answered");
        if status.is_success() {
            if status == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| self.bad_response(status, &bytes));
        }
        #[derive(Deserialize)]
        struct ErrBody {
            error: ErrInner,
        }
        #[derive(Deserialize)]
        struct ErrInner {
            code: String,
            message: String,
        }
        match serde_json::from_slice::<ErrBody>(&bytes) {
            Ok(e) => Err(Error::Server {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
            }),
            Err(_) => Err(self.bad_response(status, &bytes)),
        }
    }

    fn bad_response(&self, status: StatusCode, body: &[u8]) -> Error {
        let text = String::from_utf8_lossy(body);
        Error::BadResponse {
            url: self.base.to_string(),
            status: status.as_u16(),
            snippet: text.chars().take(120).collect(),
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        let url = self.base.to_string();
        let detail = error_chain(e);
        if is_tls_error(e) {
            return Error::Tls { url, detail };
        }
        if e.is_connect() || e.is_timeout() {
            return Error::Unreachable { url, detail };
        }
        // The peer spoke, but not HTTP (or hung up mid-answer).
        Error::BadResponse {
            url,
            status: 0,
            snippet: detail,
        }
    }

    // ------------------------------------------------------------------ sign-in

    /// Asks the server to e-mail a sign-in code to `email`.
    pub async fn request_code(&self, email: &str) -> Result<()> {
        self.call::<Value>(
            Method::POST,
            "/v1/auth/email",
            None,
            Some(json!({ "email": email })),
        )
        .await?;
        Ok(())
    }

    /// Exchanges the e-mailed code for a session; the refresh token goes to the secret store.
    pub async fn sign_in(&self, email: &str, code: &str) -> Result<()> {
        let s: SessionBody = self
            .call(
                Method::POST,
                "/v1/auth/verify",
                None,
                Some(json!({ "email": email, "code": code })),
            )
            .await?
            .ok_or_else(|| self.bad_response(StatusCode::NO_CONTENT, b""))?;
        self.store.set(keys::REFRESH_TOKEN, &s.refresh_token)?;
        self.store.delete(keys::REVOKED)?;
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((s.access_token, s.access_expires_at));
        tracing::info!("signed in");
        Ok(())
    }

    /// A bearer token: the enrolled machine's device token, else a (refreshed) access token.
    async fn bearer(&self) -> Result<String> {
        if let Some(t) = self.store.get(keys::DEVICE_TOKEN)? {
            return Ok(t);
        }
        // One session rotation at a time: a second caller waits and then uses the fresh
        // access token, instead of presenting the refresh token the first one just retired
        // (which the server would refuse, ending the session).
        let _rotating = self.rotation.lock().await;
        let now = self.trusted_now()?.now;
        if let Some((t, exp)) = self
            .access
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            && exp > now + 60
        {
            return Ok(t);
        }
        let refresh = self
            .store
            .get(keys::REFRESH_TOKEN)?
            .ok_or(Error::NotSignedIn)?;
        let s: SessionBody = self
            .call(
                Method::POST,
                "/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": refresh })),
            )
            .await?
            .ok_or_else(|| self.bad_response(StatusCode::NO_CONTENT, b""))?;
        // The old refresh token stops working now: keep the new one before anything else.
        self.store.set(keys::REFRESH_TOKEN, &s.refresh_token)?;
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((s.access_token.clone(), s.access_expires_at));
        Ok(s.access_token)
    }

    /// Activates this device on a seat of the signed-in user's plan or organisation.
    pub async fn activate(&self, name: &str, os: &str) -> Result<Device> {
        let bearer = self.bearer().await?;
        let d: Device = self
            .call(
                Method::POST,
                "/v1/devices",
                Some(&bearer),
                Some(json!({ "device_id": self.device_id, "name": name, "os": os })),
            )
            .await?
            .ok_or_else(|| self.bad_response(StatusCode::NO_CONTENT, b""))?;
        tracing::info!(device = %d.id, "device activated");
        Ok(d)
    }

    /// Enrols this machine with an organisation enrolment token (no user signs in); the
    /// device token goes to the secret store.
    pub async fn enrol(&self, enrolment_token: &str, name: &str, os: &str) -> Result<Device> {
        let e: EnrolBody = self
            .call(
                Method::POST,
                "/v1/devices/enrol",
                None,
                Some(json!({
                    "enrolment_token": enrolment_token,
                    "device_id": self.device_id,
                    "name": name,
                    "os": os,
                })),
            )
            .await?
            .ok_or_else(|| self.bad_response(StatusCode::NO_CONTENT, b""))?;
        self.store.set(keys::DEVICE_TOKEN, &e.device_token)?;
        self.store.delete(keys::REVOKED)?;
        tracing::info!(device = %e.device.id, "machine enrolled by policy");
        Ok(e.device)
    }

    /// Enrols with the policy file's enrolment token. The policy's server URL must be the one
    /// this client talks to (build the client from [`Policy::server_url`]).
    pub async fn enrol_with_policy(&self, policy: &Policy, name: &str, os: &str) -> Result<Device> {
        let token = policy.enrolment_token.as_deref().ok_or_else(|| {
            Error::Config("the policy file has no enrolment_token for silent enrolment".into())
        })?;
        self.enrol(token, name, os).await
    }

    // ------------------------------------------------------------------ license

    /// Fetches a fresh license token, verifies it offline for this device, stores it and
    /// returns it.
    pub async fn refresh_license(&self) -> Result<String> {
        let bearer = self.bearer().await?;
        let l: LicenseBody = self
            .call(
                Method::POST,
                "/v1/license",
                Some(&bearer),
                Some(json!({ "device_id": self.device_id })),
            )
            .await?
            .ok_or_else(|| self.bad_response(StatusCode::NO_CONTENT, b""))?;
        let now = self.trusted_now()?.now;
        let license = match krisp_token::verify(&l.token, &self.keys, &self.device_id, now) {
            // The signature and device were checked before the time, so this token really is
            // from the server: the local clock is behind, and the server's time wins.
            Err(krisp_token::VerifyError::NotYetValid { iat, .. }) => {
                tracing::warn!(
                    local = now,
                    server = iat,
                    "local clock is behind the license server; using the server's time"
                );
                self.raise_floor(iat)?;
                krisp_token::verify(&l.token, &self.keys, &self.device_id, iat)?
            }
            other => other?,
        };
        self.store.set(keys::LICENSE_TOKEN, &l.token)?;
        self.store.delete(keys::REVOKED)?;
        // A signed issue time is trusted time: it moves the floor forward.
        self.raise_floor(license.claims.iat)?;
        tracing::info!(
            exp = license.claims.exp,
            plan = %license.claims.plan,
            "license renewed"
        );
        Ok(l.token)
    }

    /// Tries to renew with the server, then says where the license stands. Network trouble
    /// is not an error: the stored token carries on until its grace period ends. A refusal
    /// (device removed, plan ended, signed out elsewhere) ends the license now.
    pub async fn check(&self) -> Result<LicenseState> {
        match self.refresh_license().await {
            Ok(_) | Err(Error::NotSignedIn) => {}
            Err(e) if e.is_offline() => {
                tracing::warn!(error = %e, "license server not reachable; using the stored license");
            }
            Err(Error::Server {
                status,
                code,
                message,
            }) if (401..=404).contains(&status) => {
                tracing::warn!(status, %code, %message, "license server refused renewal");
                self.store.set(keys::REVOKED, &message)?;
                self.store.delete(keys::LICENSE_TOKEN)?;
            }
            Err(Error::Token(e)) => {
                tracing::error!(error = %e, "server sent a token that does not verify; keeping the stored one");
            }
            Err(e) => return Err(e),
        }
        self.state()
    }

    /// Where the license stands now, offline (no network).
    pub fn state(&self) -> Result<LicenseState> {
        let t = self.trusted_now()?;
        if t.rolled_back {
            tracing::warn!(
                now = t.now,
                "system clock is behind the latest trusted time"
            );
        }
        let token = self.store.get(keys::LICENSE_TOKEN)?;
        let refused = self.store.get(keys::REVOKED)?;
        Ok(evaluate(
            token.as_deref(),
            refused.as_deref(),
            &self.keys,
            &self.device_id,
            t.now,
        ))
    }

    /// The rollback-checked time the license is judged at; also records the wall clock as
    /// trusted when it moved forward.
    pub fn trusted_now(&self) -> Result<TrustedTime> {
        let wall = self.clock.now();
        let floor = self.floor()?;
        let t = trusted_time(wall, floor);
        if floor.is_none_or(|f| wall >= f + FLOOR_WRITE_STEP) {
            self.store.set(keys::TRUSTED_TIME, &wall.to_string())?;
        }
        Ok(t)
    }

    /// How long the background task should wait before the next [`LicenseClient::check`]:
    /// half-way to the stored token's expiry after a success, exponential backoff with
    /// jitter after `failures` consecutive failed checks (network trouble), `None` when
    /// nobody is signed in or enrolled (nothing to renew).
    pub fn next_check_in(&self, policy: &RefreshPolicy, failures: u32) -> Result<Option<Duration>> {
        if self.store.get(keys::REFRESH_TOKEN)?.is_none()
            && self.store.get(keys::DEVICE_TOKEN)?.is_none()
        {
            return Ok(None);
        }
        let now = self.trusted_now()?.now;
        let at = if failures > 0 {
            policy.next_after_failure(now, failures, random_jitter())
        } else {
            match self
                .store
                .get(keys::LICENSE_TOKEN)?
                .map(|t| krisp_token::verify(&t, &self.keys, &self.device_id, now))
            {
                Some(Ok(l)) => policy.next_after_success(now, l.claims.iat, l.claims.exp),
                _ => now.saturating_add(policy.min_interval),
            }
        };
        Ok(Some(Duration::from_secs(
            u64::try_from(at.saturating_sub(now)).unwrap_or(0),
        )))
    }

    fn floor(&self) -> Result<Option<i64>> {
        Ok(self
            .store
            .get(keys::TRUSTED_TIME)?
            .and_then(|s| s.parse().ok()))
    }

    fn raise_floor(&self, t: i64) -> Result<()> {
        if self.floor()?.is_none_or(|f| t > f) {
            self.store.set(keys::TRUSTED_TIME, &t.to_string())?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ logout

    /// Deactivates this device on the server (freeing its seat), then forgets every local
    /// secret. If the server cannot be reached the secrets are kept and the error returned,
    /// so the seat is not silently left in use.
    pub async fn logout(&self) -> Result<()> {
        match self.bearer().await {
            Ok(bearer) => {
                let path = format!("/v1/devices/{}", encode_segment(&self.device_id));
                match self
                    .call::<Value>(Method::DELETE, &path, Some(&bearer), None)
                    .await
                {
                    Ok(_) => {}
                    // Already gone on the server: nothing left to free.
                    Err(Error::Server { status: 404, .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            // Signed out or refused by the server: nothing to free there.
            Err(Error::NotSignedIn | Error::Server { status: 401, .. }) => {}
            Err(e) => return Err(e),
        }
        self.forget_secrets()
    }

    /// Deletes every locally stored secret (no network).
    pub fn forget_secrets(&self) -> Result<()> {
        for k in keys::ALL {
            // Keep the trusted time: forgetting it would reopen clock rollback.
            if k != keys::TRUSTED_TIME {
                self.store.delete(k)?;
            }
        }
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!("local license secrets removed");
        Ok(())
    }
}

/// Percent-encodes everything but unreserved characters (device ids are opaque strings).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut depth = 0;
    while let Some(c) = cur {
        depth += 1;
        if depth > 16 {
            return false;
        }
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error hides the rustls error from `source()`.
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && is_tls_error(inner)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_encoded_as_one_path_segment() {
        assert_eq!(encode_segment("abc-1_2.x~"), "abc-1_2.x~");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    fn cfg(url: &str) -> ClientConfig {
        ClientConfig::new(url, "dev", KeySet::new())
    }

    fn store() -> Box<dyn SecretStore> {
        Box::new(crate::store::KeyringStore::new(
            keyring_core::mock::Store::new().expect("mock"),
        ))
    }

    #[test]
    fn plain_http_is_refused_except_on_loopback() {
        assert!(matches!(
            LicenseClient::new(cfg("http://licensing.example.com"), store()),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            LicenseClient::new(cfg("ftp://127.0.0.1"), store()),
            Err(Error::Config(_))
        ));
        assert!(LicenseClient::new(cfg("http://127.0.0.1:9"), store()).is_ok());
        assert!(LicenseClient::new(cfg("http://localhost:9"), store()).is_ok());
        assert!(LicenseClient::new(cfg("https://licensing.example.com"), store()).is_ok());
    }
}
