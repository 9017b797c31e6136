//! A private, headless audio server for end-to-end tests: PulseAudio or PipeWire (with
//! pipewire-pulse and wireplumber), in a fresh XDG_RUNTIME_DIR, with a fake real microphone
//! `fake_mic` fed by whatever plays into `fake_mic_sink`. Killed on drop, even on failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PulseAudio,
    PipeWire,
}

pub struct AudioServer {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
    dbus_pid: Option<u32>,
    mic_rate: u32,
    mic_channels: u32,
}

/// Whether `bin` is on PATH.
pub fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether servers must exist (CI): then a missing binary fails instead of skipping.
pub fn required() -> bool {
    std::env::var("KRISP_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

impl AudioServer {
    /// Starts a server, or returns None (after a loud message) when its binaries are absent.
    pub fn start(kind: Kind, mic_rate: u32, mic_channels: u32) -> Option<AudioServer> {
        let bins: &[&str] = match kind {
            Kind::PulseAudio => &["pulseaudio", "pactl", "parecord"],
            Kind::PipeWire => &[
                "pipewire",
                "pipewire-pulse",
                "wireplumber",
                "dbus-daemon",
                "pactl",
            ],
        };
        if let Some(missing) = bins.iter().find(|b| !have(b)) {
            if required() {
                panic!("KRISP_REQUIRE_SERVERS=1 but {missing} is not installed");
            }
            eprintln!(
                "\n!!!!! SKIPPING {kind:?} end-to-end test: `{missing}` is not installed !!!!!\n"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("krisp-e2e-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let mut s = AudioServer {
            kind,
            dir,
            children: vec![],
            dbus_pid: None,
            mic_rate,
            mic_channels,
        };
        s.launch();
        Some(s)
    }

    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command with this server's environment.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.dir.path())
            .env_remove("PULSE_SERVER")
            .env("HOME", self.dir.path());
        if self.kind == Kind::PipeWire {
            c.env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}/bus", self.dir.path().display()),
            );
        } else {
            // Nothing of the developer's desktop session (their keyring) leaks into a test.
            c.env_remove("DBUS_SESSION_BUS_ADDRESS");
        }
        c
    }

    fn spawn(&mut self, program: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{program}.log"))).unwrap();
        let child = self
            .cmd(program)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        self.children.push(child);
    }

    fn launch(&mut self) {
        match self.kind {
            Kind::PulseAudio => {
                let log = format!("--log-target=file:{}/pulse.log", self.dir.path().display());
                self.spawn(
                    "pulseaudio",
                    &[
                        "-n",
                        "--daemonize=no",
                        "--exit-idle-time=-1",
                        "--system=false",
                        // As on a desktop (where rtkit grants it): the server's I/O threads
                        // run with realtime priority.
                        "--realtime=true",
                        "--high-priority=true",
                        &log,
                        "-L",
                        "module-native-protocol-unix auth-anonymous=1",
                        "-L",
                        "module-always-sink",
                    ],
                );
            }
            Kind::PipeWire => {
                let out = self
                    .cmd("dbus-daemon")
                    .args([
                        "--session",
                        "--fork",
                        "--print-pid",
                        &format!("--address=unix:path={}/bus", self.dir.path().display()),
                    ])
                    .output()
                    .expect("dbus-daemon");
                self.dbus_pid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
                self.spawn("pipewire", &[]);
                std::thread::sleep(Duration::from_millis(300));
                self.spawn("pipewire-pulse", &[]);
                self.spawn("wireplumber", &[]);
            }
        }
        self.wait_ready();
        self.load_fake_mic();
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if self.pactl(&["info"]).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{:?} did not come up; logs in {}",
            self.kind,
            self.dir.path().display()
        );
    }

    pub fn pactl(&self, args: &[&str]) -> Option<String> {
        let out = self.cmd("pactl").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn load_fake_mic(&self) {
        let ch = self.mic_channels.to_string();
        let map = if self.mic_channels == 1 {
            "mono"
        } else {
            "front-left,front-right"
        };
        self.pactl(&[
            "load-module",
            "module-null-sink",
            &format!(
                "sink_name=fake_mic_sink rate={} channels={ch} channel_map={map} sink_properties=device.description=FakeMicSink",
                self.mic_rate
            ),
        ])
        .expect("load fake mic sink");
        self.pactl(&[
            "load-module",
            "module-remap-source",
            &format!(
                "master=fake_mic_sink.monitor source_name=fake_mic channels={ch} channel_map={map} source_properties=device.description=FakeMic"
            ),
        ])
        .expect("load fake mic source");
        self.pactl(&["set-default-source", "fake_mic"]);
    }

    /// Kills the server (like a crash) and starts it again with the same fake microphone.
    pub fn restart(&mut self) {
        self.kill_children();
        std::thread::sleep(Duration::from_millis(500));
        self.launch();
    }

    /// Number of sources named `name`.
    pub fn source_count(&self, name: &str) -> usize {
        self.pactl(&["list", "short", "sources"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some(name))
            .count()
    }

    /// Waits until `pred` holds, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&AudioServer) -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if pred(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn kill_children(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        if let Some(pid) = self.dbus_pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for AudioServer {
    fn drop(&mut self) {
        self.kill_children();
    }
}
