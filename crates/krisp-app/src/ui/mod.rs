//! The window and the tray: what a person sees of Krisp.
//!
//! `krisp` (or `krisp run`) is the tray process: the live microphone ([`Session`]), the tray
//! icon and the control socket. The window is another process, `krisp window` ([`window`]),
//! started while it is open and drawing the app's state read over the control socket; closing
//! it ends that process, and the GL driver's memory goes with it. Quit (tray menu, window
//! button, Ctrl-C, SIGTERM) closes the window, removes "Krisp Microphone" and exits. A second
//! `krisp` asks the first, over the control socket, to show its window, and exits.

mod icons;
mod tray;
pub mod window;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use krisp_engine::socket::{self, Request};
use krisp_engine::{Control, Health, InputInfo, StatusHandle, VirtualMic};
use krisp_license::Policy;

use crate::license::Summary;
use crate::live::{RunArgs, Session, UiLink, UiRequest, UiState};
use icons::Look;
use tray::{Tray, TrayAction};

/// Colours the window uses for states (also what the screenshot test looks for).
pub mod colors {
    use eframe::egui::Color32;
    /// Noise removal on (the switch, the tray icon's disc).
    pub const ON: Color32 = Color32::from_rgb(0x2f, 0x9e, 0x44);
    /// Noise removal off.
    pub const OFF: Color32 = Color32::from_rgb(0x86, 0x8e, 0x96);
    /// A problem that stops Krisp working (banner).
    pub const PROBLEM: Color32 = Color32::from_rgb(0xe0, 0x31, 0x31);
    /// A warning: works, but not fully (banner).
    pub const WARNING: Color32 = Color32::from_rgb(0xf0, 0x8c, 0x00);
    /// Level meters.
    pub const METER: Color32 = Color32::from_rgb(0x1c, 0x7e, 0xd6);
    /// The voice-activity light when voice is heard.
    pub const VOICE: Color32 = Color32::from_rgb(0xfa, 0xb0, 0x05);
}

/// Runs the app: the tray, and the window unless `minimized` (tray only until opened).
///
/// This process never opens a window itself: the window is a child process
/// (`krisp window --socket PATH`) that lives while it is open.
pub fn run(args: RunArgs, minimized: bool) -> Result<()> {
    let path = crate::live::socket_path(args.socket.clone());
    match socket::send(&path, &Request::Show) {
        Ok(r) if r.ok => {
            eprintln!("krisp: already running; showing its window");
            return Ok(());
        }
        Ok(r) => bail!(
            "another krisp is already running ({}); stop it first or use `krisp on/off/status`",
            r.error.unwrap_or_default()
        ),
        Err(_) => {}
    }
    // The window speaks X11 (XWayland on Wayland desktops).
    if std::env::var_os("DISPLAY").is_none() {
        eprintln!("krisp: no X display (DISPLAY is not set); running headless");
        return crate::live::run_headless(args);
    }
    let session = Session::start(args)?;
    let (actions_tx, actions) = channel();
    {
        let tx = actions_tx.clone();
        ctrlc::set_handler(move || {
            let _ = tx.send(TrayAction::Quit);
        })
        .map_err(|e| anyhow!("installing the Ctrl-C handler: {e}"))?;
    }
    let state = Arc::new(Mutex::new(UiState::default()));
    {
        let tx = Mutex::new(actions_tx.clone());
        let _ = session.ui.set(UiLink {
            request: Box::new(move |r| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(match r {
                        UiRequest::Show => TrayAction::Open,
                        UiRequest::Quit => TrayAction::Quit,
                    });
                }
            }),
            state: state.clone(),
        });
    }
    let mut app = TrayApp::new(&session, actions_tx, state, path);
    if !minimized {
        app.act(TrayAction::Open);
    }
    let mut result = Ok(());
    while !app.quit {
        // Quicker while the window lives: its end is noticed (and reaped) within 200 ms.
        let wait = if app.window.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        match actions.recv_timeout(wait) {
            Ok(a) => app.act(a),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(status) = app.reap()
            && app.tray.is_none()
        {
            // No tray to come back from: the window's end is the app's.
            if !status.success() {
                result = Err(anyhow!("the window failed ({status})"));
            }
            break;
        }
        app.tick();
    }
    app.close_window();
    drop(app);
    session.stop();
    result
}

/// The tray process's state: the tray icon kept in step with the engine, and the window's
/// process.
struct TrayApp {
    control: Control,
    status: StatusHandle,
    license: Arc<Mutex<Summary>>,
    /// Shared with the control socket: what the window child reads.
    state: Arc<Mutex<UiState>>,
    socket: PathBuf,
    policy: Option<Policy>,
    inputs: Arc<Mutex<Vec<InputInfo>>>,
    lister_stop: Arc<AtomicBool>,
    tray: Option<Tray>,
    /// The window's process, while it runs.
    window: Option<Child>,
    quit: bool,
}

impl TrayApp {
    fn new(
        session: &Session,
        actions: Sender<TrayAction>,
        state: Arc<Mutex<UiState>>,
        socket: PathBuf,
    ) -> TrayApp {
        let policy = crate::license::policy().unwrap_or_else(|e| {
            eprintln!("krisp: {e:#}");
            None
        });
        if let Some(want) = policy.as_ref().and_then(|p| p.start_at_login)
            && want != crate::autostart::enabled()
            && let Err(e) = crate::autostart::set(want)
        {
            eprintln!("krisp: start at login (set by the IT policy): {e:#}");
        }
        let wake = actions.clone();
        let tray = match Tray::new(session.control.clone(), actions, move || {
            let _ = wake.send(TrayAction::Refresh);
        }) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("krisp: no tray icon: {e:#}");
                if let Ok(mut s) = state.lock() {
                    s.tray_error = Some(format!("{e:#}"));
                }
                None
            }
        };
        let app = TrayApp {
            control: session.control.clone(),
            status: session.status.clone(),
            license: session.checker.summary.clone(),
            state,
            socket,
            policy,
            inputs: Arc::new(Mutex::new(Vec::new())),
            lister_stop: Arc::new(AtomicBool::new(false)),
            tray,
            window: None,
            quit: false,
        };
        app.start_lister(session.mic.clone());
        app
    }

    /// The tray's Microphone menu: the device list every 10 s. (The open window lists the
    /// devices for its picker itself, every 2 s.)
    fn start_lister(&self, mic: VirtualMic) {
        let (inputs, stop) = (self.inputs.clone(), self.lister_stop.clone());
        let _ = std::thread::Builder::new()
            .name("krisp-devices".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(list) = krisp_engine::list_inputs(&mic) {
                        *inputs.lock().unwrap_or_else(|p| p.into_inner()) = list;
                    }
                    for _ in 0..100 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
    }

    /// Carries out a tray, second-launch or window request.
    fn act(&mut self, a: TrayAction) {
        match a {
            TrayAction::Open => self.open_window(),
            TrayAction::Quit => self.quit = true,
            TrayAction::Refresh => {}
            TrayAction::StartAtLogin(on) => {
                if !is_locked(self.policy.as_ref(), "start_at_login")
                    && let Err(e) = crate::autostart::set(on)
                {
                    eprintln!("krisp: start at login: {e:#}");
                }
            }
            TrayAction::Input(name) => {
                if let Err(e) = crate::live::switch_input(&self.control, name) {
                    eprintln!("krisp: {e:#}");
                }
            }
        }
    }

    /// Starts the window's process, or brings the running one to the front.
    fn open_window(&mut self) {
        // One that is closing by itself right now would not come forward: start a new one.
        let _ = self.reap();
        if self.window.is_some() {
            if let Ok(mut s) = self.state.lock() {
                s.show_seq += 1;
            }
            return;
        }
        let spawned = std::env::current_exe()
            .context("finding the krisp binary")
            .and_then(|exe| {
                // DISPLAY, the session bus and the config are inherited with the environment.
                Command::new(exe)
                    .arg("window")
                    .arg("--socket")
                    .arg(&self.socket)
                    .stdin(Stdio::null())
                    .spawn()
                    .context("starting the window's process")
            });
        match spawned {
            Ok(child) => {
                self.window = Some(child);
            }
            Err(e) => {
                eprintln!("krisp: {e:#}");
                if self.tray.is_none() {
                    self.quit = true;
                }
            }
        }
    }

    /// Collects the window's process once it has ended (no zombie); its exit status.
    fn reap(&mut self) -> Option<ExitStatus> {
        let status = match self.window.as_mut()?.try_wait() {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                eprintln!("krisp: the window's process: {e}");
                return None;
            }
        };
        self.window = None;
        if !status.success() {
            eprintln!("krisp: the window ended with {status}");
        }
        Some(status)
    }

    /// Asks the window to close (it reads `quitting` within 50 ms), and kills it if it has
    /// not after 3 s.
    fn close_window(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.quitting = true;
        }
        let Some(child) = self.window.as_mut() else {
            return;
        };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = child.try_wait() {
                self.window = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("krisp: the window did not close; ending its process");
        let _ = child.kill();
        let _ = child.wait();
        self.window = None;
    }

    /// Keeps the tray's icon and menu in step with the engine, the license and the settings.
    fn tick(&mut self) {
        let Some(tray) = self.tray.as_mut() else {
            return;
        };
        let (health, _) = self.status.get();
        let lic = self
            .license
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let look = look(health, &lic, self.control.denoising());
        let tip = match look {
            Look::On => "Krisp: noise removal on",
            Look::Off => "Krisp: noise removal off",
            Look::Problem => "Krisp: needs attention",
        };
        let inputs = self.inputs.lock().map(|i| i.clone()).unwrap_or_default();
        // The window (another process) may have changed it.
        let autostart = crate::autostart::enabled();
        tray.sync(
            look,
            tip,
            self.control.enabled(),
            autostart,
            &inputs,
            self.control.input().as_deref(),
        );
    }
}

impl Drop for TrayApp {
    fn drop(&mut self) {
        self.lister_stop.store(true, Ordering::Relaxed);
        self.tray = None;
    }
}

/// The tray icon's picture.
fn look(health: Health, lic: &Summary, denoising: bool) -> Look {
    if matches!(health, Health::MicGone | Health::ServerDown) || lic.state == "stopped" {
        Look::Problem
    } else if denoising {
        Look::On
    } else {
        Look::Off
    }
}

/// Whether the IT policy locks the setting `name` (listed in `locked`, or, for
/// `start_at_login`, set by the policy itself).
pub(crate) fn is_locked(policy: Option<&Policy>, name: &str) -> bool {
    policy.is_some_and(|p| {
        p.locked.iter().any(|l| l == name)
            || (name == "start_at_login" && p.start_at_login.is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_it_policy_locks_what_it_names_and_start_at_login_when_it_sets_it() {
        let p: Policy = toml::from_str(
            "server_url = \"https://l.example\"\nlocked = [\"enabled\", \"input\"]\n",
        )
        .unwrap();
        assert!(is_locked(Some(&p), "enabled"));
        assert!(is_locked(Some(&p), "input"));
        assert!(!is_locked(Some(&p), "strength_db"));
        assert!(!is_locked(Some(&p), "start_at_login"));
        let p: Policy = toml::from_str("start_at_login = false\n").unwrap();
        assert!(is_locked(Some(&p), "start_at_login"));
        assert!(!is_locked(None, "enabled"), "no policy, no locks");
    }
}
