//! Licensing in the app: which server and keys to trust, this device's id, where secrets live,
//! `krisp login` / `logout` / `license`, and the background checker that gates the engine.
//!
//! The engine denoises only while the license state allows it ([`LicenseState`]); otherwise
//! "Krisp Microphone" passes the microphone through untouched and `krisp status` says why.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use krisp_license::krisp_token::{KeySet, PublicKey};
use krisp_license::{
    ClientConfig, LicenseClient, LicenseState, POLICY_PATH_ENV, Policy, RefreshPolicy,
    default_store,
};

use crate::settings::{Settings, config_dir};

/// The license server when neither the IT policy, `KRISP_SERVER` nor the settings name one.
/// Release builds set it with the `KRISP_DEFAULT_SERVER` build-time variable.
pub const DEFAULT_SERVER: &str = match option_env!("KRISP_DEFAULT_SERVER") {
    Some(s) => s,
    None => "https://license.krisp.example",
};

/// Public keys compiled in at build time (`KRISP_RELEASE_KEYS="kid:base64,…"`), the keys the
/// production server signs with.
const RELEASE_KEYS: Option<&str> = option_env!("KRISP_RELEASE_KEYS");

/// Debug builds only: extra trusted keys from this variable (same format), for development
/// and tests against a local server. Release builds ignore it, so nobody can make the app
/// trust a key of their own.
pub const DEV_KEYS_ENV: &str = "KRISP_DEV_TRUSTED_KEYS";

/// How often the running app re-evaluates the stored license offline (grace can end while it
/// runs, without any network event).
const LOCAL_RECHECK: Duration = Duration::from_secs(30);

fn parse_keys(spec: &str, into: &mut KeySet) -> Result<()> {
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kid, b64) = item
            .split_once(':')
            .ok_or_else(|| anyhow!("trusted key {item:?} is not `kid:base64`"))?;
        let key =
            PublicKey::from_base64(b64.trim()).map_err(|e| anyhow!("trusted key {kid:?}: {e}"))?;
        into.insert(kid.trim(), key);
    }
    Ok(())
}

/// The keys license tokens must be signed with.
pub fn trusted_keys() -> Result<KeySet> {
    let mut keys = KeySet::new();
    if let Some(spec) = RELEASE_KEYS {
        parse_keys(spec, &mut keys).context("the built-in license keys")?;
    }
    if cfg!(debug_assertions)
        && let Ok(spec) = std::env::var(DEV_KEYS_ENV)
    {
        parse_keys(&spec, &mut keys).with_context(|| format!("${DEV_KEYS_ENV}"))?;
    }
    Ok(keys)
}

/// File next to the policy that holds the organisation's enrolment token, when the
/// installer keeps it out of the world-readable policy (root:krisp, 0640).
pub const ENROLMENT_TOKEN_FILE: &str = "enrolment-token";

/// The IT policy file, if there is one (a broken one is an error: IT must hear about it).
/// An enrolment token in `enrolment-token` beside it is used when the policy has none.
pub fn policy() -> Result<Option<Policy>> {
    let path = std::env::var_os(POLICY_PATH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(Policy::path);
    let mut policy =
        Policy::load(&path).with_context(|| format!("reading the IT policy {}", path.display()))?;
    if let Some(p) = policy.as_mut()
        && p.enrolment_token.is_none()
        && let Some(dir) = path.parent()
    {
        let file = dir.join(ENROLMENT_TOKEN_FILE);
        match std::fs::read_to_string(&file) {
            Ok(t) if !t.trim().is_empty() => p.enrolment_token = Some(t.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "krisp: cannot read the enrolment token {} ({e}); ask IT to add you to the \
                 `krisp` group",
                file.display()
            ),
        }
    }
    Ok(policy)
}

/// Enrols this computer with the IT policy's organisation token when it has no device or
/// sign-in yet (the first start after a silent install). Returns whether it enrolled.
pub async fn enrol_if_needed(lic: &Licensing) -> krisp_license::Result<bool> {
    let Some(p) = &lic.policy else {
        return Ok(false);
    };
    if p.enrolment_token.is_none()
        || lic
            .client
            .next_check_in(&RefreshPolicy::default(), 0)?
            .is_some()
    {
        return Ok(false);
    }
    lic.client
        .enrol_with_policy(p, &host_name(), std::env::consts::OS)
        .await?;
    eprintln!("krisp: this computer was enrolled by the IT policy");
    Ok(true)
}

/// Which server: the IT policy, then `$KRISP_SERVER`, then the settings, then the default.
pub fn server_url(policy: Option<&Policy>, settings: &Settings) -> String {
    policy
        .and_then(|p| p.server_url.clone())
        .or_else(|| std::env::var("KRISP_SERVER").ok())
        .or_else(|| settings.server_url.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

/// This installation's stable device id: 128 random bits, made once and kept in the config
/// folder (0600). Tokens are bound to it, so a token copied to another machine does not work.
pub fn device_id(dir: &Path) -> Result<String> {
    let path = dir.join("device-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_owned());
        }
    }
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow!("no randomness for a device id: {e}"))?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), format!("{id}\n"))?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Everything the license commands and the checker need.
pub struct Licensing {
    pub client: LicenseClient,
    pub policy: Option<Policy>,
    pub server: String,
}

impl Licensing {
    pub fn open() -> Result<Licensing> {
        let policy = policy()?;
        let (settings, _) = Settings::load();
        let server = server_url(policy.as_ref(), &settings);
        let dir = config_dir();
        let mut cfg = ClientConfig::new(server.clone(), device_id(&dir)?, trusted_keys()?);
        cfg.timeout = Duration::from_secs(15);
        let store = default_store(dir.join("secrets")).context("opening the secret store")?;
        let client = LicenseClient::new(cfg, store).context("setting up the license client")?;
        Ok(Licensing {
            client,
            policy,
            server,
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the network runtime")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this computer".into())
}

fn prompt(input: &mut impl BufRead, what: &str) -> Result<String> {
    eprint!("{what}: ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        bail!("no {what} given (input closed)");
    }
    Ok(line.trim().to_owned())
}

/// `krisp login`: e-mail → code → sign-in → activate this device → license.
pub fn login(email: Option<String>) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let email = match email {
        Some(e) => e,
        None => prompt(&mut input, "E-mail address")?,
    };
    request_code(&email)?;
    eprintln!("krisp: a 6-digit code was sent to {email}.");
    let code = prompt(&mut input, "Code")?;
    let done = sign_in(&email, &code)?;
    eprintln!(
        "krisp: signed in as {email}; this computer is \"{}\". Secrets are kept in {}.",
        done.device_name, done.secrets
    );
    println!("{}", done.message);
    Ok(())
}

/// Asks the license server to e-mail a one-time sign-in code (the window's first step).
pub fn request_code(email: &str) -> Result<()> {
    let lic = Licensing::open()?;
    runtime()?
        .block_on(lic.client.request_code(email))
        .with_context(|| format!("asking {} for a sign-in code", lic.server))
}

/// What a completed sign-in reports.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub device_name: String,
    pub secrets: String,
    pub message: String,
}

/// Signs in with the mailed code, activates this computer and fetches its license.
pub fn sign_in(email: &str, code: &str) -> Result<SignedIn> {
    let lic = Licensing::open()?;
    let rt = runtime()?;
    rt.block_on(lic.client.sign_in(email, code))
        .context("signing in")?;
    let device = rt
        .block_on(lic.client.activate(&host_name(), std::env::consts::OS))
        .context("activating this computer")?;
    let state = rt
        .block_on(lic.client.check())
        .context("fetching the license")?;
    let (mut settings, _) = Settings::load();
    settings.account = Some(email.to_owned());
    settings.save().context("saving settings")?;
    Ok(SignedIn {
        device_name: device.name,
        secrets: lic.client.backend().to_string(),
        message: state.message(),
    })
}

/// `krisp logout`: frees this device's seat on the server and forgets every local secret.
pub fn logout() -> Result<()> {
    sign_out()?;
    println!("Signed out: this computer's seat is free and its license secrets are removed.");
    Ok(())
}

/// Frees the seat and removes the secrets; with the server unreachable nothing is removed.
pub fn sign_out() -> Result<()> {
    let lic = Licensing::open()?;
    runtime()?
        .block_on(lic.client.logout())
        .context("signing out (nothing was removed; try again when the server is reachable)")?;
    let (mut settings, _) = Settings::load();
    settings.account = None;
    settings.save().context("saving settings")?;
    Ok(())
}

/// `krisp license [--check]`: the license state offline, or after asking the server.
pub fn show(check: bool, json: bool) -> Result<()> {
    let lic = Licensing::open()?;
    let state = if check {
        runtime()?.block_on(async {
            enrol_if_needed(&lic).await?;
            lic.client.check().await
        })?
    } else {
        lic.client.state()?
    };
    let (settings, _) = Settings::load();
    let summary = Summary::new(&lic, &state, &settings, None);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for line in summary.lines() {
            println!("{line}");
        }
    }
    Ok(())
}

/// What `krisp status` and `krisp license` print about the license.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub state: String,
    pub allows_noise_removal: bool,
    pub message: String,
    pub account: Option<String>,
    pub device_id: String,
    pub server: String,
    pub secrets: String,
    pub last_check: Option<String>,
    /// When the license needs renewing (active) or stops working offline (grace).
    pub expires: Option<String>,
}

impl Summary {
    fn new(
        lic: &Licensing,
        state: &LicenseState,
        settings: &Settings,
        last_check: Option<String>,
    ) -> Summary {
        Summary {
            state: state_name(state).into(),
            allows_noise_removal: state.allows_noise_removal(),
            message: state.message(),
            account: settings.account.clone(),
            device_id: lic.client.device_id().to_owned(),
            server: lic.server.clone(),
            secrets: lic.client.backend().to_string(),
            last_check,
            expires: match state {
                LicenseState::Active { until, .. } => {
                    Some(format!("renews by {}", krisp_license::fmt_time(*until)))
                }
                LicenseState::Grace { until } => Some(format!(
                    "works offline until {}",
                    krisp_license::fmt_time(*until)
                )),
                _ => None,
            },
        }
    }

    pub fn lines(&self) -> Vec<String> {
        vec![
            format!("license: {} — {}", self.state, self.message),
            format!(
                "account: {}; device {}; server {}",
                self.account.as_deref().unwrap_or("(not signed in)"),
                self.device_id,
                self.server
            ),
            format!(
                "expiry: {}; last check: {}; secrets in {}",
                self.expires.as_deref().unwrap_or("-"),
                self.last_check.as_deref().unwrap_or("not yet"),
                self.secrets
            ),
        ]
    }
}

fn state_name(s: &LicenseState) -> &'static str {
    match s {
        LicenseState::Unlicensed => "unlicensed",
        LicenseState::Active { .. } => "active",
        LicenseState::Grace { .. } => "offline grace",
        LicenseState::Expired { .. } => "stopped",
    }
}

/// The running app's license checker: evaluates the stored license at once (so the engine
/// starts gated correctly), then on a thread renews it when due (with backoff and jitter
/// after failures), enrols silently from the IT policy when the machine has no device yet,
/// and re-evaluates offline every 30 s so the grace period ends on time.
pub struct Checker {
    pub summary: Arc<Mutex<Summary>>,
    check_now: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checker {
    /// `gate(allowed)` is called with every evaluation (the engine's `set_licensed`).
    pub fn start(gate: impl Fn(bool) + Send + 'static) -> Result<Checker> {
        let lic = Licensing::open()?;
        let state = lic.client.state()?;
        gate(state.allows_noise_removal());
        let (settings, _) = Settings::load();
        let summary = Arc::new(Mutex::new(Summary::new(&lic, &state, &settings, None)));
        if !state.allows_noise_removal() {
            eprintln!("krisp: {}", state.message());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let check_now = Arc::new(AtomicBool::new(false));
        let (sum, st, now) = (summary.clone(), stop.clone(), check_now.clone());
        let thread = std::thread::Builder::new()
            .name("krisp-license".into())
            .spawn(move || check_loop(lic, gate, sum, st, now, state))
            .context("starting the license checker")?;
        Ok(Checker {
            summary,
            check_now,
            stop,
            thread: Some(thread),
        })
    }
}

impl Checker {
    /// Set it to ask the server now (after a sign-in or sign-out in the window), not when due.
    pub fn check_now_flag(&self) -> Arc<AtomicBool> {
        self.check_now.clone()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn check_loop(
    lic: Licensing,
    gate: impl Fn(bool),
    summary: Arc<Mutex<Summary>>,
    stop: Arc<AtomicBool>,
    check_now: Arc<AtomicBool>,
    mut last_state: LicenseState,
) {
    let Ok(rt) = runtime() else {
        eprintln!("krisp: cannot start the license checker's network runtime");
        return;
    };
    let refresh = RefreshPolicy::default();
    let mut failures = 0u32;
    let mut last_check: Option<String> = None;
    // Check with the server right away, then when due.
    let mut next_online = Some(Instant::now());
    let mut next_local = Instant::now() + LOCAL_RECHECK;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        if check_now.swap(false, Ordering::Relaxed) {
            next_online = Some(now);
        }
        let online_due = next_online.is_some_and(|t| now >= t);
        if !online_due && now < next_local {
            continue;
        }
        let state = if online_due {
            let r = rt.block_on(async {
                if let Some(p) = &lic.policy
                    && p.enrolment_token.is_some()
                    && lic
                        .client
                        .next_check_in(&refresh, 0)
                        .ok()
                        .flatten()
                        .is_none()
                {
                    lic.client
                        .enrol_with_policy(p, &host_name(), std::env::consts::OS)
                        .await?;
                    eprintln!("krisp: this computer was enrolled by the IT policy");
                }
                lic.client.check().await
            });
            let stamp = krisp_license::Clock::system().now();
            match r {
                Ok(s) => {
                    failures = 0;
                    last_check = Some(format!("ok at {}", krisp_license::fmt_time(stamp)));
                    s
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    last_check = Some(format!("failed at {}: {e}", krisp_license::fmt_time(stamp)));
                    lic.client.state().unwrap_or(last_state.clone())
                }
            }
        } else {
            lic.client.state().unwrap_or(last_state.clone())
        };
        if online_due {
            next_online = match lic.client.next_check_in(&refresh, failures) {
                Ok(Some(d)) => Some(now + d),
                // Nobody signed in: ask again only after `krisp login` (a restart) or a
                // policy enrolment retry in an hour.
                Ok(None)
                    if lic
                        .policy
                        .as_ref()
                        .is_some_and(|p| p.enrolment_token.is_some()) =>
                {
                    Some(now + Duration::from_secs(3600))
                }
                Ok(None) => None,
                Err(_) => Some(now + Duration::from_secs(600)),
            };
        }
        next_local = now + LOCAL_RECHECK;
        if state != last_state {
            eprintln!("krisp: {}", state.message());
        }
        gate(state.allows_noise_removal());
        let (settings, _) = Settings::load();
        if let Ok(mut s) = summary.lock() {
            *s = Summary::new(&lic, &state, &settings, last_check.clone());
        }
        last_state = state;
    }
}
