//! Shared helpers of the krisp-app end-to-end tests.
#![allow(dead_code)]

pub mod audio_server;
pub mod backend;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libpulse_binding::def::BufferAttr;
use libpulse_binding::sample::{Format, Spec};
use libpulse_binding::stream::Direction;
use libpulse_simple_binding::Simple;

use audio_server::AudioServer;
pub use krisp_testkit::*;

/// `secs` of real speech (fixtures with pauses, looped) and the same mixed with the real
/// noise fixture at `snr_db`.
pub fn speech_and_noisy(secs: f32, snr_db: f64) -> (Vec<f32>, Vec<f32>) {
    let clean = speech_varied(secs);
    let noisy = mix(&clean, &noise(clean.len(), 4321), snr_db);
    (clean, noisy)
}

/// Records two sources at once from one client (48 kHz mono float). Besides the audio it
/// returns how much later (in samples) sample k arrives from `b` than sample k from `a`, as
/// a recording program experiences it: each blocking read returns when its last sample has
/// arrived, so the earliest `read time - index/48000` over all reads is the stream's origin.
///
/// A recording that has not finished by twice its length plus 20 s fails the test with a
/// message instead of hanging (a read blocks for as long as a source delivers nothing).
pub fn record_pair(server: &AudioServer, a: &str, b: &str, secs: f32) -> (Vec<f32>, Vec<f32>, i64) {
    let addr = format!("unix:{}/pulse/native", server.runtime_dir().display());
    let (a2, b2) = (a.to_string(), b.to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(record_pair_at(&addr, &a2, &b2, secs));
    });
    let limit = Duration::from_secs_f32(secs * 2.0 + 20.0);
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        panic!(
            "recording {a} and {b} for {secs} s did not finish in {limit:?}: a source delivered \
             nothing (logs in {})",
            server.runtime_dir().display()
        )
    })
}

/// What one record stream delivered, and after each read how much had arrived by when
/// (seconds since the `t0` given to [`record_one`]).
pub struct Recording {
    pub samples: Vec<f32>,
    pub reads: Vec<(usize, f64)>,
}

/// Records `secs` from `dev` on the server at `addr` (48 kHz mono float, 5 ms fragments, as a
/// call app would ask), noting when each read returned.
pub fn record_one(addr: &str, dev: &str, secs: f32, t0: Instant) -> Recording {
    let spec = Spec {
        format: Format::F32le,
        channels: 1,
        rate: 48_000,
    };
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: u32::MAX,
        prebuf: u32::MAX,
        minreq: u32::MAX,
        fragsize: 240 * 4,
    };
    let s = Simple::new(
        Some(addr),
        "krisp-e2e",
        Direction::Record,
        Some(dev),
        "e2e",
        &spec,
        None,
        Some(&attr),
    )
    .unwrap_or_else(|e| panic!("cannot record from {dev}: {e}"));
    let n = (secs * 48_000.0) as usize;
    let mut samples = Vec::with_capacity(n);
    let mut reads = Vec::with_capacity(n / 240 + 1);
    let mut buf = vec![0u8; 240 * 4];
    while samples.len() < n {
        s.read(&mut buf).unwrap();
        samples.extend(
            buf.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        reads.push((samples.len(), t0.elapsed().as_secs_f64()));
    }
    Recording { samples, reads }
}

fn record_pair_at(addr: &str, a: &str, b: &str, secs: f32) -> (Vec<f32>, Vec<f32>, i64) {
    let t0 = Instant::now();
    // Each stream is read on its own thread: read in turn, one stream's blocking read would
    // delay the other's and bias its arrival times (a pipe-source Krisp Microphone delivers in
    // 10 ms chunks, the fake mic in 5 ms fragments: measured, a 5 ms swing in the offset).
    // The origin (when sample 0 arrived, on a time line at 48 kHz) is the median over reads of
    // "read time minus audio received": a stream delivered in blocks is then placed where its
    // average sample arrives, what a call app buffering it experiences. (The earliest value,
    // used before, placed a block-wise stream by the last sample of each block, the one that
    // waited least: measured, 10 ms "added" for 43 ms capture blocks.)
    let read_all = |dev: &str| {
        let r = record_one(addr, dev, secs, t0);
        let mut origins: Vec<f64> = r
            .reads
            .iter()
            .map(|&(len, t)| t - len as f64 / 48_000.0)
            .collect();
        origins.sort_by(f64::total_cmp);
        (r.samples, origins[origins.len() / 2])
    };
    let ((ra, oa), (rb, ob)) = std::thread::scope(|sc| {
        let hb = sc.spawn(|| read_all(b));
        let a = read_all(a);
        (a, hb.join().unwrap())
    });
    let offset = ((ob - oa) * 48_000.0).round() as i64;
    (ra, rb, offset)
}

/// A running `krisp run --headless` against `server`; SIGKILLed on drop if still alive.
pub struct Krisp {
    pub child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
}

/// Device id the audio tests' Krisp runs with.
pub const TEST_DEVICE_ID: &str = "0123456789abcdef0123456789abcdef";

/// Gives the Krisp in `config_dir` a valid 30-day license, as if it had signed in: the device
/// id, and a token signed by a test key in the private secrets file (the store the app uses
/// without a system keyring). Returns the `KRISP_DEV_TRUSTED_KEYS` value that trusts the key.
/// (The licensing flow itself is tested against the real server in license_cli.rs.)
pub fn provision_license(config_dir: &Path) -> String {
    use krisp_token::{Claims, Signer};
    let signer = Signer::from_secret("e2e-test", [7u8; 32]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = signer.sign(&Claims {
        sub: "acct_e2e".into(),
        org: None,
        dev: TEST_DEVICE_ID.into(),
        plan: "paid".into(),
        features: vec![],
        iat: now - 60,
        exp: now + 30 * 86_400,
        grace: now + 44 * 86_400,
    });
    let secrets = config_dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(config_dir.join("device-id"), TEST_DEVICE_ID).unwrap();
    std::fs::write(
        secrets.join("secrets.json"),
        serde_json::json!({ "license_token": token }).to_string(),
    )
    .unwrap();
    format!("e2e-test:{}", signer.public_key().to_base64())
}

pub fn krisp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_krisp")
}

impl Krisp {
    /// Starts a licensed Krisp.
    pub fn start(server: &AudioServer, extra: &[&str]) -> Krisp {
        Krisp::start_with(server, extra, true)
    }

    /// Starts Krisp, with a valid license or with none at all.
    pub fn start_with(server: &AudioServer, extra: &[&str], licensed: bool) -> Krisp {
        let mut args = vec!["run", "--headless"];
        args.extend_from_slice(extra);
        // For measurements: options added to every engine a test starts (e.g.
        // `--no-direct-feed` to compare with the feeder-thread path).
        let more = std::env::var("KRISP_E2E_EXTRA_ARGS").unwrap_or_default();
        args.extend(more.split_whitespace());
        Krisp::spawn(server, &args, licensed, &[])
    }

    /// Starts `krisp ARGS` (e.g. the window app) with the test's configuration; `env` comes
    /// last, so it can replace the defaults (a display, a session bus).
    pub fn spawn(
        server: &AudioServer,
        args: &[&str],
        licensed: bool,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Krisp {
        let socket = server.runtime_dir().join("krisp-test.sock");
        let config = server.runtime_dir().join("krisp-config");
        let keys = provision_license(&config);
        if !licensed {
            std::fs::remove_file(config.join("secrets").join("secrets.json")).unwrap();
        }
        let log = std::fs::File::create(server.runtime_dir().join("krisp.log")).unwrap();
        let child = server
            .cmd(krisp_bin())
            .args(args)
            .env("KRISP_SOCKET", &socket)
            .env("KRISP_CONFIG_DIR", &config)
            .env("KRISP_DEV_TRUSTED_KEYS", keys)
            // No license server in these audio tests: the provisioned token is checked offline.
            .env("KRISP_SERVER", "http://127.0.0.1:9")
            .env("KRISP_POLICY_FILE", config.join("no-policy.toml"))
            // The provisioned license is in the private file: no Secret Service. (Unset, the
            // bus address defaults to $XDG_RUNTIME_DIR/bus, which is the PipeWire tests'
            // private bus, where D-Bus activation would start one.)
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/krisp-test-no-bus",
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Krisp {
            child,
            socket,
            config,
        }
    }

    pub fn ctl(&self, server: &AudioServer, what: &str) -> String {
        let out = server
            .cmd(krisp_bin())
            .args(what.split_whitespace())
            .env("KRISP_SOCKET", &self.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "krisp {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status_json(&self, server: &AudioServer) -> serde_json::Value {
        let out = server
            .cmd(krisp_bin())
            .args(["status", "--json"])
            .env("KRISP_SOCKET", &self.socket)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGINT (Ctrl-C) and wait for a clean exit.
    pub fn interrupt(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Krisp {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Why one attempt of a measured recording failed (the e2e tests retry an attempt that a
/// momentarily starved machine spoiled, and report both kinds).
#[derive(Debug)]
pub enum Failure {
    /// Krisp (the app or the protocol) did not do its job.
    Krisp(String),
    /// The test's own audio (fake microphone, reader thread) was spoiled by the machine: the
    /// attempt says nothing about Krisp.
    Environment(String),
}

/// Returns early with a [`Failure::Krisp`] instead of panicking, so an attempt can be retried
/// and reported.
#[allow(unused_macros)]
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        let ok: bool = $cond;
        if !ok {
            return Err($crate::common::Failure::Krisp(format!($($fmt)+)));
        }
    };
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Plays `wav` into the fake microphone, starting paplay again whenever it exits (a run once
/// hung for 20 minutes: paplay had died at start on PipeWire, the fake mic fell silent and
/// idle, and a recording waited for samples forever). Its stderr goes to `paplay.log` in the
/// server's runtime directory. Stopped on drop.
pub struct Player {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl Player {
    pub fn start(server: &AudioServer, wav: &Path) -> Player {
        Player::start_on(server, wav, "fake_mic_sink")
    }

    /// Plays `wav` into `sink` (another fake microphone's null sink).
    pub fn start_on(server: &AudioServer, wav: &Path, sink: &str) -> Player {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The keeper thread cannot borrow the server: the commands for paplay's first start
        // and for up to 64 restarts are made here.
        let log_path = server.runtime_dir().join("paplay.log");
        let mut cmds = (0..65).map(|_| {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let mut c = server.cmd("paplay");
            c.args(["-d", sink])
                .arg(wav)
                .stdout(Stdio::null())
                .stderr(log);
            c
        });
        let first = cmds.next().unwrap().spawn().unwrap();
        let cmds: Vec<Command> = cmds.collect();
        let stop2 = stop.clone();
        let keeper = std::thread::spawn(move || {
            let mut child = first;
            let mut cmds = cmds.into_iter();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("test player: paplay exited ({status}); starting it again");
                    match cmds.next().map(|mut c| c.spawn()) {
                        Some(Ok(c)) => child = c,
                        _ => return,
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        Player {
            stop,
            keeper: Some(keeper),
        }
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}
