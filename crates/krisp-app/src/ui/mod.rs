//! The window and the tray: what a person sees of Krisp.
//!
//! `krisp` (or `krisp run`) starts the live microphone ([`crate::live::Session`]), a tray
//! icon and a small eframe window. Closing the window keeps Krisp running in the tray; Quit
//! (tray menu, window button, Ctrl-C, SIGTERM) removes "Krisp Microphone" and exits. A second
//! `krisp` asks the first, over the control socket, to show its window, and exits.

mod icons;
mod tray;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use eframe::egui::{self, Color32, RichText};
use krisp_engine::socket::{self, Request};
use krisp_engine::{Control, Health, InputInfo, Stats, StatusHandle, VirtualMic};
use krisp_license::Policy;

use crate::license::Summary;
use crate::live::{RunArgs, Session};
use crate::settings::Settings;
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

/// Runs the app with its window (`minimized`: tray only until opened).
///
/// The window exists only while it is open: closing it ends eframe's run (the GL context and
/// its memory go) and the main thread waits for the tray or a second launch to open it again.
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
    // One egui context for every time the window opens: the tray and other threads wake it.
    let ctx = egui::Context::default();
    let quit = Arc::new(AtomicBool::new(false));
    let (actions_tx, actions) = channel();
    {
        let (q, tx, c) = (quit.clone(), actions_tx.clone(), ctx.clone());
        ctrlc::set_handler(move || {
            q.store(true, Ordering::Relaxed);
            let _ = tx.send(TrayAction::Quit);
            c.request_repaint();
        })
        .map_err(|e| anyhow!("installing the Ctrl-C handler: {e}"))?;
    }
    {
        let (tx, c) = (Mutex::new(actions_tx.clone()), ctx.clone());
        let _ = session.show_hook.set(Box::new(move || {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(TrayAction::Open);
            }
            c.request_repaint();
        }));
    }
    let mut view = View::new(&session, quit.clone(), actions_tx, actions).attach(&ctx);
    let mut open = !minimized;
    let mut result = Ok(());
    while !quit.load(Ordering::Relaxed) {
        if open {
            view.shown.store(true, Ordering::Relaxed);
            let r = eframe::run_native_ext(
                "Krisp",
                native_options(),
                Some(ctx.clone()),
                Box::new(|_cc| Ok(Box::new(Window { view: &mut view }))),
            );
            view.shown.store(false, Ordering::Relaxed);
            open = false;
            // What the GL context and the window's buffers freed goes back to the system.
            // SAFETY: malloc_trim has no preconditions; it only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
            if let Err(e) = r {
                eprintln!("krisp: the window failed: {e}");
                if view.tray.is_none() {
                    result = Err(anyhow!("the window failed: {e}"));
                    break;
                }
            } else if view.tray.is_none() {
                break; // no tray to come back from: closing the window quits
            }
            continue;
        }
        // Tray only: no window, no GL; wake for the tray, a second launch or once a second.
        match view.actions.recv_timeout(Duration::from_secs(1)) {
            Ok(TrayAction::Open) => open = true,
            Ok(a) => view.act(&ctx, a),
            Err(_) => {}
        }
        view.tick(&ctx);
    }
    drop(view);
    session.stop();
    result
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
        run_and_return: true,
        ..Default::default()
    }
}

/// One opening of the window, drawing the long-lived [`View`].
struct Window<'a> {
    view: &'a mut View,
}

impl eframe::App for Window<'_> {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.view.tick(ctx);
        if self.view.quit.load(Ordering::Relaxed) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        let closing = ctx.input(|i| i.viewport().close_requested());
        if closing && self.view.tray.is_none() && !self.view.quit.load(Ordering::Relaxed) {
            // No tray to come back from: keep running, minimized.
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            ctx.send_viewport_cmd(egui::ViewportCommand::Minimized(true));
        }
        // Meters move at 20 frames per second.
        ctx.request_repaint_after(Duration::from_millis(50));
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.view.draw(ui);
    }
}

/// Whether the IT policy locks the setting `name` (listed in `locked`, or, for
/// `start_at_login`, set by the policy itself).
fn is_locked(policy: Option<&Policy>, name: &str) -> bool {
    policy.is_some_and(|p| {
        p.locked.iter().any(|l| l == name)
            || (name == "start_at_login" && p.start_at_login.is_some())
    })
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
    ModelSwitched(Result<String, String>),
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

/// The window's state. Built before the window exists, attached once it does.
struct View {
    control: Control,
    stats: Stats,
    status: StatusHandle,
    mic: VirtualMic,
    license: Arc<Mutex<Summary>>,
    check_now: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    /// Whether the window is open (the device list is refreshed more often then).
    shown: Arc<AtomicBool>,
    settings: Settings,
    settings_warning: Option<String>,
    policy: Option<Policy>,
    policy_error: Option<String>,
    inputs: Arc<Mutex<Vec<InputInfo>>>,
    lister_stop: Arc<AtomicBool>,
    tray: Option<Tray>,
    tray_error: Option<String>,
    actions_tx: Sender<TrayAction>,
    actions: Receiver<TrayAction>,
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
    fn new(
        session: &Session,
        quit: Arc<AtomicBool>,
        actions_tx: Sender<TrayAction>,
        actions: Receiver<TrayAction>,
    ) -> View {
        let (settings, settings_warning) = Settings::load();
        let (policy, policy_error) = match crate::license::policy() {
            Ok(p) => (p, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let mut autostart = crate::autostart::enabled();
        if let Some(want) = policy.as_ref().and_then(|p| p.start_at_login)
            && want != autostart
            && crate::autostart::set(want).is_ok()
        {
            autostart = want;
        }
        let (jobs_tx, jobs) = channel();
        let email = settings.account.clone().unwrap_or_default();
        View {
            control: session.control.clone(),
            stats: session.stats.clone(),
            status: session.status.clone(),
            mic: session.mic.clone(),
            license: session.checker.summary.clone(),
            check_now: session.checker.check_now_flag(),
            quit,
            shown: Arc::new(AtomicBool::new(false)),
            settings,
            settings_warning,
            policy,
            policy_error,
            inputs: Arc::new(Mutex::new(Vec::new())),
            lister_stop: Arc::new(AtomicBool::new(false)),
            tray: None,
            tray_error: None,
            actions_tx,
            actions,
            jobs_tx,
            jobs,
            sign_in: SignIn::Email,
            email,
            code: String::new(),
            notice: None,
            monitor: None,
            autostart,
            meters: [Meter { shown_db: -90.0 }, Meter { shown_db: -90.0 }],
            last_frame: Instant::now(),
            focus_field: session
                .checker
                .summary
                .lock()
                .is_ok_and(|s| s.state == "unlicensed"),
        }
    }

    /// Starts what needs the window's context: the tray and the device lister.
    fn attach(mut self, ctx: &egui::Context) -> View {
        let (wake_ctx, wake_tx) = (ctx.clone(), self.actions_tx.clone());
        match Tray::new(self.control.clone(), self.actions_tx.clone(), move || {
            // The window (if open) and the tray-only loop both look at once.
            let _ = wake_tx.send(TrayAction::Refresh);
            wake_ctx.request_repaint()
        }) {
            Ok(t) => self.tray = Some(t),
            Err(e) => {
                eprintln!("krisp: no tray icon: {e:#}");
                self.tray_error = Some(format!("{e:#}"));
            }
        }
        let (inputs, stop, mic, c, shown) = (
            self.inputs.clone(),
            self.lister_stop.clone(),
            self.mic.clone(),
            ctx.clone(),
            self.shown.clone(),
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
                    // Every 2 s for the open window's picker, every 10 s for the tray's menu.
                    for k in 0..100 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        if k >= 19 && shown.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            });
        self
    }

    fn locked(&self, name: &str) -> bool {
        is_locked(self.policy.as_ref(), name)
    }

    fn license(&self) -> Summary {
        self.license
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn look(&self, health: Health, lic: &Summary) -> Look {
        if matches!(health, Health::MicGone | Health::ServerDown) || lic.state == "stopped" {
            Look::Problem
        } else if self.control.denoising() {
            Look::On
        } else {
            Look::Off
        }
    }

    fn set_enabled(&mut self, on: bool) {
        self.control.set_enabled(on);
        self.settings.enabled = on;
        self.save_settings();
    }

    fn save_settings(&mut self) {
        // Keep what another writer (sign-in, the socket's device switch) stored meanwhile.
        let (mut s, _) = Settings::load();
        s.enabled = self.settings.enabled;
        s.strength_db = self.settings.strength_db;
        if let Err(e) = s.save() {
            self.notice = Some((format!("could not save the settings: {e:#}"), true));
        }
    }

    fn switch_input(&mut self, name: Option<String>) {
        if let Err(e) = crate::live::switch_input(&self.control, name) {
            self.notice = Some((format!("{e:#}"), true));
        }
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
        match crate::monitor::Monitor::start(&self.mic.source) {
            Ok(m) => self.monitor = Some(m),
            Err(e) => self.notice = Some((format!("hear yourself: {e:#}"), true)),
        }
    }

    /// Carries out a tray (or second-launch) request.
    fn act(&mut self, ctx: &egui::Context, a: TrayAction) {
        match a {
            // Only reached while the window is open: bring it forward.
            TrayAction::Open => {
                ctx.send_viewport_cmd(egui::ViewportCommand::Minimized(false));
                ctx.send_viewport_cmd(egui::ViewportCommand::Focus);
            }
            TrayAction::Quit => self.quit.store(true, Ordering::Relaxed),
            TrayAction::Refresh => {}
            TrayAction::StartAtLogin(on) => self.set_autostart(on),
            TrayAction::Input(name) => self.switch_input(name),
        }
    }

    /// Everything that happens with the window open or not: requests, finished jobs, the
    /// tray kept in step.
    fn tick(&mut self, ctx: &egui::Context) {
        while let Ok(a) = self.actions.try_recv() {
            self.act(ctx, a);
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
                    self.check_now.store(true, Ordering::Relaxed);
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
                Job::ModelSwitched(r) => {
                    self.notice = Some(match r {
                        Ok(name) => (format!("Model switched to {name}."), false),
                        Err(e) => (e, true),
                    });
                }
                Job::SignedOut(r) => {
                    self.notice = Some(match r {
                        Ok(()) => ("Signed out; this computer's seat is free.".into(), false),
                        Err(e) => (e, true),
                    });
                    self.sign_in = SignIn::Email;
                    self.check_now.store(true, Ordering::Relaxed);
                }
            }
        }
        let (health, _) = self.status.get();
        let lic = self.license();
        let look = self.look(health, &lic);
        let inputs = self.inputs.lock().map(|i| i.clone()).unwrap_or_default();
        let chosen = self.control.input();
        let enabled = self.control.enabled();
        let autostart = self.autostart;
        if let Some(t) = self.tray.as_mut() {
            let tip = match look {
                Look::On => "Krisp: noise removal on",
                Look::Off => "Krisp: noise removal off",
                Look::Problem => "Krisp: needs attention",
            };
            t.sync(look, tip, enabled, autostart, &inputs, chosen.as_deref());
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
                self.control
                    .input()
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
                            _ => self.check_now.store(true, Ordering::Relaxed),
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
        let (health, status) = self.status.get();
        let lic = self.license();
        let snap = self.stats.snapshot();
        let inputs = self.inputs.lock().map(|i| i.clone()).unwrap_or_default();

        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                self.banner(ui, health, &status, &lic);
                ui.heading(&self.mic.description);
                ui.label(format!(
                    "Pick \"{}\" as the microphone in Zoom, Teams, OBS or your browser.",
                    self.mic.description
                ));
                ui.add_space(8.0);

                // The switch.
                let on = self.control.enabled();
                let (fill, text) = match (on, self.control.denoising()) {
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
                if on && !self.control.denoising() {
                    ui.label("Not licensed: your voice passes through untouched.");
                }
                ui.add_space(6.0);

                ui.horizontal(|ui| {
                    ui.label("Strength");
                    let mut s = self.control.strength_db();
                    let r = ui.add_enabled(
                        !self.locked("strength_db"),
                        egui::Slider::new(&mut s, 0.0..=100.0).suffix(" dB"),
                    );
                    if r.changed() {
                        self.control.set_strength_db(s);
                        self.settings.strength_db = s;
                    }
                    if r.drag_stopped() || (r.changed() && !r.dragged()) {
                        self.save_settings();
                    }
                });

                ui.horizontal(|ui| {
                    ui.label("Quality");
                    let current = self.control.model();
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
                        // Loading DeepFilterNet3 takes a moment: off the UI thread. The engine
                        // crossfades to it when it is ready.
                        let control = self.control.clone();
                        self.spawn(&ctx, move || {
                            Job::ModelSwitched(
                                crate::live::switch_model(&control, None, name)
                                    .map(|()| name.to_string())
                                    .map_err(|e| format!("{e:#}")),
                            )
                        });
                    }
                });

                ui.horizontal(|ui| {
                    ui.label("Microphone");
                    let chosen = self.control.input();
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
                Self::meter(ui, &self.mic.description, out_db);
                if !snap.listeners {
                    ui.label(
                        RichText::new(format!(
                            "No app is recording from {} yet: Krisp idles until one does.",
                            self.mic.description
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
                if let Some(e) = &self.tray_error {
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
                    .button(format!("Quit Krisp (removes \"{}\")", self.mic.description))
                    .clicked()
                {
                    self.quit.store(true, Ordering::Relaxed);
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

impl Drop for View {
    fn drop(&mut self) {
        self.lister_stop.store(true, Ordering::Relaxed);
        self.monitor = None;
        self.tray = None;
    }
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
