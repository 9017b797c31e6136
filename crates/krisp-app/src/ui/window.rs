//! The window, in a process of its own: `krisp window --socket PATH`, started by the tray
//! process (`krisp run`) while the window is open.
//!
//! It draws the running app's state read over the control socket (a background thread asks
//! for the status at the window's 20 frames a second, so the UI never waits on the socket) and
//! sends the user's choices back the same way. What does not need the engine runs here, as
//! it always did: the settings file (reloaded before each write, so the two processes keep
//! each other's changes), start at login, "hear yourself", sign-in and the device list.
//! Closing the window ends this process, and the GL driver's memory goes with it. When the
//! app stops answering, the window closes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use eframe::egui::{self, Color32, RichText};
use krisp_engine::socket::{self, Request, Response};
use krisp_engine::{Health, InputInfo};
use krisp_license::Policy;

use super::{colors, icons, is_locked};
use crate::license::Summary;
use crate::live::AppState;
use crate::settings::Settings;

/// This many status requests in a row finding no app mean it has gone.
const GONE_AFTER: u32 = 3;

/// `krisp window`: opens the window of the krisp answering at `socket` and returns when it
/// is closed (or the app quits or goes away).
pub fn run(socket: &Path) -> Result<()> {
    let first = socket::send(socket, &Request::Status).map_err(|e| {
        anyhow!(
            "`krisp window` is started by a running `krisp` to show its window, and no krisp \
             answers: {e}"
        )
    })?;
    let app = AppState::of(&first).with_context(|| {
        format!(
            "the krisp at {} did not send the window's state (another version?)",
            socket.display()
        )
    })?;
    match &app.ui {
        None => bail!("the running krisp is headless: it has no window"),
        Some(ui) if ui.quitting => return Ok(()),
        Some(_) => {}
    }
    let closing = Arc::new(AtomicBool::new(false));
    {
        let c = closing.clone();
        ctrlc::set_handler(move || c.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let (remote, poller) = Remote::start(socket.to_path_buf(), first, app)?;
    let r = eframe::run_native(
        "Krisp",
        native_options(),
        Box::new(move |cc| Ok(Box::new(View::new(&cc.egui_ctx, remote, closing)))),
    );
    // Choices made just before closing still reach the app.
    poller.finish();
    r.map_err(|e| anyhow!("the window failed: {e}"))
}

fn native_options() -> eframe::NativeOptions {
    let icon = icons::app();
    eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Krisp")
            .with_app_id("krisp")
            .with_inner_size([440.0, 640.0])
            .with_min_inner_size([380.0, 480.0])
            .with_icon(egui::IconData {
                rgba: icon.pixels,
                width: icon.width,
                height: icon.height,
            }),
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    }
}

/// The last answer from the app, and the requests on their way to it.
struct Shared {
    latest: Mutex<(Response, AppState)>,
    /// Requests sent by the window and not yet answered: a status read meanwhile may predate
    /// them, so it is not shown (the window shows its own change until then).
    pending: AtomicUsize,
    /// The app stopped answering.
    gone: AtomicBool,
    /// Send what is queued, then stop.
    stop: AtomicBool,
}

/// The window's side of the control socket; cheap to use from the UI thread.
struct Remote {
    shared: Arc<Shared>,
    requests: Sender<Request>,
    /// What the app answered to each request the window sent.
    replies: Receiver<(Request, Result<Response, String>)>,
}

/// The thread that talks to the app.
struct Poller {
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

impl Poller {
    fn finish(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

impl Remote {
    fn start(path: PathBuf, first: Response, app: AppState) -> Result<(Remote, Poller)> {
        let shared = Arc::new(Shared {
            latest: Mutex::new((first, app)),
            pending: AtomicUsize::new(0),
            gone: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let (requests, queue) = channel::<Request>();
        let (replies_tx, replies) = channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("krisp-remote".into())
            .spawn(move || {
                let mut failures = 0;
                loop {
                    match queue.recv_timeout(Duration::from_millis(50)) {
                        Ok(req) => {
                            let r = socket::send(&path, &req);
                            sh.pending.fetch_sub(1, Ordering::Relaxed);
                            let _ = replies_tx.send((req, r));
                        }
                        Err(RecvTimeoutError::Timeout) if sh.stop.load(Ordering::Relaxed) => {
                            return;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    match socket::exchange(&path, &Request::Status) {
                        Ok(r) => {
                            failures = 0;
                            if let Some(app) = AppState::of(&r) {
                                let mut l = sh.latest.lock().unwrap_or_else(|p| p.into_inner());
                                if sh.pending.load(Ordering::Relaxed) == 0 {
                                    *l = (r, app);
                                }
                            }
                        }
                        // Busy (a model loading on the socket's thread) is not gone.
                        Err(socket::SendError::Failed(_)) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            if failures >= GONE_AFTER {
                                eprintln!("krisp: the app stopped answering ({e}); closing");
                                sh.gone.store(true, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            })
            .context("starting the window's socket thread")?;
        let poller = Poller {
            shared: shared.clone(),
            thread,
        };
        Ok((
            Remote {
                shared,
                requests,
                replies,
            },
            poller,
        ))
    }

    /// The app's state as last read, with the window's own unanswered changes.
    fn latest(&self) -> (Response, AppState) {
        self.shared
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends `req` in the background and shows `change` (what it will do) until answered.
    fn send(&self, req: Request, change: impl FnOnce(&mut Response)) {
        let mut l = self.shared.latest.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut l.0);
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        if self.requests.send(req).is_err() {
            self.shared.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn gone(&self) -> bool {
        self.shared.gone.load(Ordering::Relaxed)
    }
}

/// Where a sign-in in the window stands.
#[derive(Debug, Clone, PartialEq)]
enum SignIn {
    Email,
    Sending,
    Code { email: String },
    Verifying { email: String },
    SigningOut,
}

enum Job {
    CodeSent(Result<String, String>),
    SignedIn(Result<String, String>),
    SignedOut(Result<(), String>),
}

struct Meter {
    shown_db: f32,
}

impl Meter {
    /// Fast attack, slow release, like a hardware peak meter.
    fn update(&mut self, rms: f32, dt: f32) -> f32 {
        let db = 20.0 * rms.max(1e-6).log10();
        self.shown_db = if db > self.shown_db {
            db
        } else {
            (self.shown_db - 30.0 * dt).max(db)
        };
        self.shown_db
    }
}

/// The window's state.
struct View {
    remote: Remote,
    /// The app's state for this frame.
    resp: Response,
    app: AppState,
    /// Ctrl-C or SIGTERM: close.
    closing: Arc<AtomicBool>,
    /// `show_seq` last acted on: a change brings the window to the front.
    shown_seq: u64,
    settings: Settings,
    settings_warning: Option<String>,
    policy: Option<Policy>,
    policy_error: Option<String>,
    inputs: Arc<Mutex<Vec<InputInfo>>>,
    lister_stop: Arc<AtomicBool>,
    jobs_tx: Sender<Job>,
    jobs: Receiver<Job>,
    sign_in: SignIn,
    email: String,
    code: String,
    notice: Option<(String, bool)>,
    monitor: Option<crate::monitor::Monitor>,
    autostart: bool,
    meters: [Meter; 2],
    last_frame: Instant,
    /// Put the cursor in the sign-in field shown next (e-mail, then code).
    focus_field: bool,
}

impl View {
    fn new(ctx: &egui::Context, remote: Remote, closing: Arc<AtomicBool>) -> View {
        let (settings, settings_warning) = Settings::load();
        let (policy, policy_error) = match crate::license::policy() {
            Ok(p) => (p, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let (jobs_tx, jobs) = channel();
        let email = settings.account.clone().unwrap_or_default();
        let (resp, app) = remote.latest();
        let view = View {
            shown_seq: app.ui.as_ref().map_or(0, |u| u.show_seq),
            focus_field: app.license.state == "unlicensed",
            remote,
            resp,
            app,
            closing,
            settings,
            settings_warning,
            policy,
            policy_error,
            inputs: Arc::new(Mutex::new(Vec::new())),
            lister_stop: Arc::new(AtomicBool::new(false)),
            jobs_tx,
            jobs,
            sign_in: SignIn::Email,
            email,
            code: String::new(),
            notice: None,
            monitor: None,
            autostart: crate::autostart::enabled(),
            meters: [Meter { shown_db: -90.0 }, Meter { shown_db: -90.0 }],
            last_frame: Instant::now(),
        };
        let (inputs, stop, mic, c) = (
            view.inputs.clone(),
            view.lister_stop.clone(),
            view.app.mic.mic(),
            ctx.clone(),
        );
        let _ = std::thread::Builder::new()
            .name("krisp-devices".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(list) = krisp_engine::list_inputs(&mic) {
                        let mut cur = inputs.lock().unwrap_or_else(|p| p.into_inner());
                        if *cur != list {
                            *cur = list;
                            c.request_repaint();
                        }
                    }
                    // Every 2 s for the picker.
                    for _ in 0..20 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        view
    }

    fn locked(&self, name: &str) -> bool {
        is_locked(self.policy.as_ref(), name)
    }

    fn send(&mut self, req: Request, change: impl FnOnce(&mut Response)) {
        self.remote.send(req, change);
        // Shown at once, not after the next status read.
        self.resp = self.remote.latest().0;
    }

    fn set_enabled(&mut self, on: bool) {
        let licensed = self.app.license.allows_noise_removal;
        self.send(if on { Request::On } else { Request::Off }, |r| {
            r.enabled = on;
            r.denoising = on && licensed;
        });
        self.settings.enabled = on;
        self.save_settings();
    }

    fn save_settings(&mut self) {
        // Keep what another writer (the app's device or model switch, sign-in) stored
        // meanwhile: only this window's own two choices are written.
        let (mut s, _) = Settings::load();
        s.enabled = self.settings.enabled;
        s.strength_db = self.settings.strength_db;
        if let Err(e) = s.save() {
            self.notice = Some((format!("could not save the settings: {e:#}"), true));
        }
    }

    fn switch_input(&mut self, name: Option<String>) {
        // The app switches and remembers the choice.
        let n = name.clone();
        self.send(Request::Input { name }, |r| r.input = n);
    }

    fn set_autostart(&mut self, on: bool) {
        if self.locked("start_at_login") {
            return;
        }
        match crate::autostart::set(on) {
            Ok(()) => self.autostart = on,
            Err(e) => self.notice = Some((format!("start at login: {e:#}"), true)),
        }
    }

    fn set_monitor(&mut self, on: bool) {
        if !on {
            self.monitor = None;
            return;
        }
        match crate::monitor::Monitor::start(&self.app.mic.source) {
            Ok(m) => self.monitor = Some(m),
            Err(e) => self.notice = Some((format!("hear yourself: {e:#}"), true)),
        }
    }

    /// Takes in this frame's state: the app's, the app's replies, finished sign-in jobs.
    fn tick(&mut self) {
        (self.resp, self.app) = self.remote.latest();
        while let Ok((req, reply)) = self.remote.replies.try_recv() {
            let err = match reply {
                Ok(r) => r.error,
                Err(e) => Some(e),
            };
            match (req, err) {
                (Request::Model { name }, None) => {
                    self.notice = Some((format!("Model switched to {name}."), false));
                }
                (_, Some(e)) => self.notice = Some((e, true)),
                _ => {}
            }
        }
        while let Ok(job) = self.jobs.try_recv() {
            match job {
                Job::CodeSent(Ok(email)) => {
                    self.notice = Some((format!("A 6-digit code was sent to {email}."), false));
                    self.focus_field = true;
                    self.sign_in = SignIn::Code { email };
                }
                Job::CodeSent(Err(e)) => {
                    self.notice = Some((e, true));
                    self.sign_in = SignIn::Email;
                }
                Job::SignedIn(Ok(msg)) => {
                    self.notice = Some((msg, false));
                    self.code.clear();
                    self.sign_in = SignIn::Email;
                    self.send(Request::CheckLicense, |_| {});
                }
                Job::SignedIn(Err(e)) => {
                    self.notice = Some((e, true));
                    self.focus_field = true;
                    if let SignIn::Verifying { email } = &self.sign_in {
                        self.sign_in = SignIn::Code {
                            email: email.clone(),
                        };
                    }
                }
                Job::SignedOut(r) => {
                    self.notice = Some(match r {
                        Ok(()) => ("Signed out; this computer's seat is free.".into(), false),
                        Err(e) => (e, true),
                    });
                    self.sign_in = SignIn::Email;
                    self.send(Request::CheckLicense, |_| {});
                }
            }
        }
    }

    fn spawn(&self, ctx: &egui::Context, work: impl FnOnce() -> Job + Send + 'static) {
        let (tx, c) = (self.jobs_tx.clone(), ctx.clone());
        let _ = std::thread::Builder::new()
            .name("krisp-account".into())
            .spawn(move || {
                let _ = tx.send(work());
                c.request_repaint();
            });
    }

    fn banner(&mut self, ui: &mut egui::Ui, health: Health, status: &str, lic: &Summary) {
        let mut shown: Vec<(Color32, String, Option<&'static str>)> = Vec::new();
        if let Some(e) = &self.policy_error {
            shown.push((
                colors::PROBLEM,
                format!("The IT policy cannot be read: {e}"),
                None,
            ));
        }
        match health {
            Health::MicGone => shown.push((
                colors::PROBLEM,
                format!(
                    "Microphone unavailable — {status}. Plug it back in or pick another one below."
                ),
                self.resp
                    .input
                    .is_some()
                    .then_some("Use the system default"),
            )),
            Health::ServerDown => shown.push((
                colors::PROBLEM,
                format!(
                    "The audio server is not answering ({status}). Krisp reconnects by \
                     itself when it is back."
                ),
                None,
            )),
            Health::Starting | Health::Running => {}
        }
        match lic.state.as_str() {
            "stopped" => shown.push((
                colors::PROBLEM,
                format!("Noise removal stopped: {}", lic.message),
                Some("Check the license again"),
            )),
            "offline grace" => shown.push((
                colors::WARNING,
                format!(
                    "Offline: {} ({})",
                    lic.message,
                    lic.expires.as_deref().unwrap_or("")
                ),
                Some("Check the license again"),
            )),
            "unlicensed" => shown.push((
                colors::WARNING,
                "Not signed in: your voice passes through untouched. Sign in below to turn on \
                 noise removal."
                    .into(),
                None,
            )),
            _ => {}
        }
        if let Some(w) = &self.settings_warning {
            shown.push((colors::WARNING, w.clone(), Some("Dismiss")));
        }
        for (color, text, action) in shown {
            egui::Frame::new()
                .fill(color)
                .corner_radius(6)
                .inner_margin(8)
                .show(ui, |ui| {
                    ui.set_width(ui.available_width());
                    ui.label(RichText::new(text).color(Color32::WHITE).strong());
                    if let Some(a) = action
                        && ui.button(a).clicked()
                    {
                        match a {
                            "Use the system default" => self.switch_input(None),
                            "Dismiss" => self.settings_warning = None,
                            _ => self.send(Request::CheckLicense, |_| {}),
                        }
                    }
                });
            ui.add_space(6.0);
        }
    }

    fn meter(ui: &mut egui::Ui, label: &str, db: f32) {
        ui.horizontal(|ui| {
            ui.add_sized([120.0, 18.0], egui::Label::new(label));
            let width = ui.available_width() - 60.0;
            let (rect, _) = ui.allocate_exact_size(egui::vec2(width, 14.0), egui::Sense::hover());
            let p = ui.painter();
            p.rect_filled(rect, 3.0, ui.visuals().extreme_bg_color);
            let frac = ((db + 60.0) / 60.0).clamp(0.0, 1.0);
            let mut fill = rect;
            fill.set_width(rect.width() * frac);
            p.rect_filled(fill, 3.0, colors::METER);
            ui.label(if db > -89.0 {
                format!("{db:.0} dB")
            } else {
                "–".into()
            });
        });
    }

    fn draw(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        let now = Instant::now();
        let dt = (now - self.last_frame).as_secs_f32().min(0.5);
        self.last_frame = now;
        let (health, status) = (self.resp.health, self.resp.status.clone());
        let lic = self.app.license.clone();
        let snap = self.resp.stats.clone();
        let inputs = self.inputs.lock().map(|i| i.clone()).unwrap_or_default();

        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                self.banner(ui, health, &status, &lic);
                ui.heading(&self.app.mic.description);
                ui.label(format!(
                    "Pick \"{}\" as the microphone in Zoom, Teams, OBS or your browser.",
                    self.app.mic.description
                ));
                ui.add_space(8.0);

                // The switch.
                let on = self.resp.enabled;
                let (fill, text) = match (on, self.resp.denoising) {
                    (true, true) => (colors::ON, "Noise removal: ON"),
                    // Switched on, but the license does not allow it: not green.
                    (true, false) => (colors::OFF, "Noise removal: ON (needs a license)"),
                    (false, _) => (colors::OFF, "Noise removal: OFF"),
                };
                let locked = self.locked("enabled");
                let button = egui::Button::new(
                    RichText::new(text)
                        .size(20.0)
                        .color(Color32::WHITE)
                        .strong(),
                )
                .fill(fill)
                .min_size(egui::vec2(ui.available_width(), 44.0));
                if ui.add_enabled(!locked, button).clicked() {
                    self.set_enabled(!on);
                }
                if locked {
                    ui.label("🔒 Set by your IT department.");
                }
                if on && !self.resp.denoising {
                    ui.label("Not licensed: your voice passes through untouched.");
                }
                ui.add_space(6.0);

                ui.horizontal(|ui| {
                    ui.label("Strength");
                    let mut s = self.resp.strength_db;
                    let r = ui.add_enabled(
                        !self.locked("strength_db"),
                        egui::Slider::new(&mut s, 0.0..=100.0).suffix(" dB"),
                    );
                    if r.changed() {
                        self.send(Request::Strength { db: s }, |r| r.strength_db = s);
                        self.settings.strength_db = s;
                    }
                    if r.drag_stopped() || (r.changed() && !r.dragged()) {
                        self.save_settings();
                    }
                });

                ui.horizontal(|ui| {
                    ui.label("Quality");
                    let current = self.resp.model.clone();
                    let mut pick = None;
                    ui.add_enabled_ui(!self.locked("model"), |ui| {
                        for (name, label) in [
                            ("rnnoise", "Standard (light)"),
                            ("dfn3", "High (DeepFilterNet3)"),
                        ] {
                            if ui.selectable_label(current == name, label).clicked()
                                && current != name
                            {
                                pick = Some(name);
                            }
                        }
                    });
                    if let Some(name) = pick {
                        // Loading DeepFilterNet3 takes a moment: the app answers when the
                        // engine has it (it crossfades then); the reply becomes a notice.
                        self.send(
                            Request::Model {
                                name: name.to_string(),
                            },
                            |r| r.model = name.to_string(),
                        );
                    }
                });

                ui.horizontal(|ui| {
                    ui.label("Microphone");
                    let chosen = self.resp.input.clone();
                    let shown = chosen
                        .as_ref()
                        .map(|n| {
                            inputs
                                .iter()
                                .find(|i| &i.name == n)
                                .map(|i| i.description.clone())
                                .unwrap_or_else(|| format!("{n} (not connected)"))
                        })
                        .unwrap_or_else(|| "System default".into());
                    let mut pick: Option<Option<String>> = None;
                    ui.add_enabled_ui(!self.locked("input"), |ui| {
                        egui::ComboBox::from_id_salt("input")
                            .selected_text(shown)
                            .width(ui.available_width() - 8.0)
                            .show_ui(ui, |ui| {
                                if ui
                                    .selectable_label(chosen.is_none(), "System default")
                                    .clicked()
                                {
                                    pick = Some(None);
                                }
                                for i in inputs.iter().filter(|i| !i.is_own) {
                                    let label = if i.is_monitor {
                                        format!("{} (monitor of an output)", i.description)
                                    } else {
                                        i.description.clone()
                                    };
                                    if ui
                                        .selectable_label(chosen.as_ref() == Some(&i.name), label)
                                        .clicked()
                                    {
                                        pick = Some(Some(i.name.clone()));
                                    }
                                }
                            });
                    });
                    if let Some(p) = pick {
                        self.switch_input(p);
                    }
                });
                ui.add_space(6.0);

                // A stopped stream leaves its last level behind: show silence instead.
                let live = |on: bool, rms: f32| if on { rms } else { 0.0 };
                let in_db = self.meters[0].update(live(snap.input_running, snap.input_rms), dt);
                let out_db = self.meters[1].update(
                    live(snap.input_running && snap.output_running, snap.output_rms),
                    dt,
                );
                Self::meter(ui, "Microphone", in_db);
                Self::meter(ui, &self.app.mic.description, out_db);
                if !snap.listeners {
                    ui.label(
                        RichText::new(format!(
                            "No app is recording from {} yet: Krisp idles until one does.",
                            self.app.mic.description
                        ))
                        .small(),
                    );
                }
                ui.horizontal(|ui| {
                    let (rect, _) =
                        ui.allocate_exact_size(egui::vec2(14.0, 14.0), egui::Sense::hover());
                    let voice = snap.vad > 0.5 && snap.input_running;
                    ui.painter().circle_filled(
                        rect.center(),
                        6.0,
                        if voice {
                            colors::VOICE
                        } else {
                            ui.visuals().extreme_bg_color
                        },
                    );
                    ui.label(if voice { "Voice" } else { "No voice" });
                });
                let mut hear = self.monitor.is_some();
                if ui
                    .checkbox(&mut hear, "Hear yourself (use headphones)")
                    .changed()
                {
                    self.set_monitor(hear);
                }
                ui.label(
                    RichText::new(format!(
                        "Latency {:.0} ms · CPU {:.1} % of the audio budget · {} underruns",
                        snap.added_latency_ms,
                        snap.cpu_load * 100.0,
                        snap.underruns,
                    ))
                    .small(),
                );
                ui.label(RichText::new(&status).small());
                ui.separator();

                self.account(ui, &ctx, &lic);
                ui.separator();

                let mut auto = self.autostart;
                let locked = self.locked("start_at_login");
                if ui
                    .add_enabled(!locked, egui::Checkbox::new(&mut auto, "Start at login"))
                    .changed()
                {
                    self.set_autostart(auto);
                }
                if locked {
                    ui.label("🔒 Set by your IT department.");
                }
                if let Some(e) = self.app.ui.as_ref().and_then(|u| u.tray_error.as_ref()) {
                    ui.label(format!(
                        "No tray icon ({e}); closing the window minimizes it."
                    ));
                }
                if let Some((text, bad)) = &self.notice {
                    ui.colored_label(
                        if *bad {
                            colors::PROBLEM
                        } else {
                            ui.visuals().text_color()
                        },
                        text,
                    );
                }
                ui.add_space(8.0);
                if ui
                    .button(format!(
                        "Quit Krisp (removes \"{}\")",
                        self.app.mic.description
                    ))
                    .clicked()
                {
                    self.send(Request::Quit, |_| {});
                }
            });
        });
    }

    fn account(&mut self, ui: &mut egui::Ui, ctx: &egui::Context, lic: &Summary) {
        ui.label(RichText::new("Account").strong());
        ui.label(format!("License: {} — {}", lic.state, lic.message));
        if lic.state != "unlicensed" {
            ui.label(format!(
                "Signed in as {}",
                lic.account
                    .as_deref()
                    .unwrap_or("(this computer's license)")
            ));
            let busy = self.sign_in == SignIn::SigningOut;
            if ui
                .add_enabled(!busy, egui::Button::new("Sign out"))
                .clicked()
            {
                self.sign_in = SignIn::SigningOut;
                self.spawn(ctx, || {
                    Job::SignedOut(crate::license::sign_out().map_err(|e| format!("{e:#}")))
                });
            }
            return;
        }
        match self.sign_in.clone() {
            SignIn::Email | SignIn::Sending | SignIn::SigningOut => {
                let busy = self.sign_in != SignIn::Email;
                ui.horizontal(|ui| {
                    let field = ui.add(
                        egui::TextEdit::singleline(&mut self.email)
                            .hint_text("you@example.com")
                            .desired_width(220.0),
                    );
                    // Not signed in: the cursor waits in the e-mail field; Enter sends.
                    if self.focus_field {
                        field.request_focus();
                        self.focus_field = false;
                    }
                    let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                    let ok = self.email.contains('@') && !busy;
                    if ui
                        .add_enabled(ok, egui::Button::new("Send sign-in code"))
                        .clicked()
                        || (ok && enter)
                    {
                        self.sign_in = SignIn::Sending;
                        let email = self.email.trim().to_owned();
                        self.spawn(ctx, move || {
                            Job::CodeSent(
                                crate::license::request_code(&email)
                                    .map(|()| email)
                                    .map_err(|e| format!("{e:#}")),
                            )
                        });
                    }
                });
            }
            SignIn::Code { email } | SignIn::Verifying { email } => {
                let busy = matches!(self.sign_in, SignIn::Verifying { .. });
                ui.label(format!("Enter the code sent to {email}"));
                ui.horizontal(|ui| {
                    let field = ui.add(
                        egui::TextEdit::singleline(&mut self.code)
                            .hint_text("123456")
                            .desired_width(100.0),
                    );
                    if self.focus_field {
                        field.request_focus();
                        self.focus_field = false;
                    }
                    let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                    let ok = !self.code.trim().is_empty() && !busy;
                    if ui.add_enabled(ok, egui::Button::new("Sign in")).clicked() || (ok && enter) {
                        self.sign_in = SignIn::Verifying {
                            email: email.clone(),
                        };
                        let code = self.code.trim().to_owned();
                        self.spawn(ctx, move || {
                            Job::SignedIn(
                                crate::license::sign_in(&email, &code)
                                    .map(|d| format!("Signed in: {}", d.message))
                                    .map_err(|e| format!("{e:#}")),
                            )
                        });
                    }
                    if ui.button("Use another e-mail").clicked() {
                        self.sign_in = SignIn::Email;
                    }
                });
            }
        }
    }
}

impl eframe::App for View {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.tick();
        let ui = self.app.ui.clone().unwrap_or_default();
        let quitting = ui.quitting || self.remote.gone() || self.closing.load(Ordering::Relaxed);
        if quitting {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        if ui.show_seq != self.shown_seq {
            // Launched again, or "Open Krisp" in the tray: come to the front.
            self.shown_seq = ui.show_seq;
            ctx.send_viewport_cmd(egui::ViewportCommand::Minimized(false));
            ctx.send_viewport_cmd(egui::ViewportCommand::Focus);
        }
        let closing = ctx.input(|i| i.viewport().close_requested());
        if closing && ui.tray_error.is_some() && !quitting {
            // No tray to come back from: keep running, minimized.
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            ctx.send_viewport_cmd(egui::ViewportCommand::Minimized(true));
        }
        // Meters move at 20 frames per second.
        ctx.request_repaint_after(Duration::from_millis(50));
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        // The loopback goes with the window, whatever eframe does with the app afterwards.
        self.monitor = None;
        self.lister_stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.lister_stop.store(true, Ordering::Relaxed);
        self.monitor = None;
    }
}
