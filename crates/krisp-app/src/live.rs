//! `krisp run`, `krisp devices`, `krisp on|off|status`: the live microphone from the CLI.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use krisp_engine::socket::{self, Request, Response};
use krisp_engine::{Control, Engine, EngineConfig, Output, RingConfig, StatusHandle, VirtualMic};

use crate::license::Summary;
use crate::settings::Settings;

pub struct RunArgs {
    pub input: Option<String>,
    pub strength: Option<f32>,
    pub model: Option<String>,
    /// DeepFilterNet3 look-ahead in hops; `None` = the model's default.
    pub lookahead: Option<usize>,
    pub models_dir: Option<PathBuf>,
    pub off: bool,
    pub socket: Option<PathBuf>,
    pub capture_frames: Option<u32>,
    pub device_period_frames: Option<usize>,
    pub buffer_ms: Option<f32>,
    pub device_buffer_ms: Option<f32>,
    pub drift_steering: bool,
    pub direct_feed: bool,
    pub device: DeviceArg,
    pub output: OutputArg,
    pub ring_name: Option<String>,
}

/// `krisp run --device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// On PipeWire our own node; on PulseAudio the pipe source, or a null sink where the
    /// server cannot load one.
    Auto,
    /// A PipeWire node of our own (PipeWire servers only).
    Node,
    /// `module-pipe-source`: each denoised block is written as it comes (lowest latency).
    Pipe,
    /// A null sink fed through a jitter buffer, its monitor remapped into the source.
    NullSink,
}

impl From<DeviceArg> for krisp_engine::VirtualDevice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => krisp_engine::VirtualDevice::Auto,
            DeviceArg::Node => krisp_engine::VirtualDevice::Node,
            DeviceArg::Pipe => krisp_engine::VirtualDevice::Pipe,
            DeviceArg::NullSink => krisp_engine::VirtualDevice::NullSink,
        }
    }
}

/// `krisp run --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputArg {
    /// The PulseAudio/PipeWire source "Krisp Microphone".
    VirtualMic,
    /// The shared-memory ring the macOS/Windows drivers read.
    #[value(alias = "ring")]
    SharedRing,
}

pub fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("KRISP_SOCKET").map(PathBuf::from))
        .unwrap_or_else(socket::default_path)
}

/// What the window app asks of its main thread from the control socket's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiRequest {
    /// Open the window (a second launch), or bring it to the front.
    Show,
    /// Quit the app (the window's Quit button).
    Quit,
}

/// The window app's part of the control socket, set once the tray process is up; unset in
/// a headless run, which answers `Show` and `Quit` with an error.
pub struct UiLink {
    /// Called on the socket's thread; must not block.
    pub request: Box<dyn Fn(UiRequest) + Send + Sync>,
    /// What the window child reads back with every answer.
    pub state: Arc<Mutex<UiState>>,
}

/// The tray process's state that the window child draws or acts on.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UiState {
    /// Why there is no tray icon (then closing the window minimizes it instead).
    pub tray_error: Option<String>,
    /// Counts `Show` requests: the running window comes to the front when it changes.
    pub show_seq: u64,
    /// The app is quitting: the window closes.
    pub quitting: bool,
}

/// Names of the virtual microphone, as the window needs them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MicNames {
    pub source: String,
    pub sink: String,
    pub description: String,
}

impl MicNames {
    /// The virtual microphone these names describe (enough to list and recognise it).
    pub fn mic(&self) -> VirtualMic {
        VirtualMic {
            source: self.source.clone(),
            sink: self.sink.clone(),
            description: self.description.clone(),
            ..VirtualMic::default()
        }
    }
}

/// The app's part of every control-socket answer ([`Response::app`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppState {
    pub license: Summary,
    pub mic: MicNames,
    /// `None`: a headless run (no tray, no window).
    pub ui: Option<UiState>,
}

impl AppState {
    /// The app part of `r`, if it has one this version understands.
    pub fn of(r: &Response) -> Option<AppState> {
        serde_json::from_value(r.app.clone()?).ok()
    }
}

/// A running live microphone: the engine, the license checker gating it and the control
/// socket. The headless loop and the window both drive one of these.
pub struct Session {
    pub engine: Engine,
    pub control: Control,
    pub status: StatusHandle,
    pub mic: VirtualMic,
    /// The shared ring's name when that is the output (`--output shared-ring`).
    pub ring: Option<String>,
    pub checker: crate::license::Checker,
    /// Set by the window app (tray process); the socket's `Show` and `Quit` go to it.
    pub ui: Arc<OnceLock<UiLink>>,
    server: socket::Server,
}

impl Session {
    /// Starts everything; the settings are updated with the explicit choices in `args`.
    pub fn start(args: RunArgs) -> Result<Session> {
        let (mut settings, warning) = Settings::load();
        if let Some(w) = warning {
            eprintln!("krisp: warning: {w}");
        }
        if args.input.is_some() {
            settings.input = args.input.clone();
        }
        if let Some(s) = args.strength {
            settings.strength_db = s;
        }
        if let Some(m) = &args.model {
            settings.model = m.clone();
        }
        if args.off {
            settings.enabled = false;
        }
        let manifest = crate::denoise::find_manifest(args.models_dir.as_deref())?;
        let mut model = manifest.load_model(&settings.model)?;
        if let Some(hops) = args.lookahead {
            model = model.with_lookahead(hops);
        }
        let mut cfg = EngineConfig::new(model);
        cfg.input = settings.input.clone();
        cfg.enabled = settings.enabled;
        cfg.strength_db = settings.strength_db;
        if let Some(n) = args.capture_frames {
            cfg.capture_frames = n;
        }
        if let Some(n) = args.device_period_frames {
            cfg.device_period_frames = n;
        }
        if let Some(ms) = args.device_buffer_ms {
            cfg.device_buffer_frames = (ms.clamp(5.0, 500.0) * 48.0) as usize;
        }
        cfg.drift_steering = args.drift_steering;
        cfg.direct_feed = args.direct_feed;
        cfg.device = args.device.into();
        if let Some(ms) = args.buffer_ms {
            cfg.target_fill = (ms.clamp(0.0, 500.0) * 48.0) as usize;
        }
        let ring = match (args.output, args.ring_name) {
            (OutputArg::VirtualMic, Some(_)) => bail!("--ring-name needs --output shared-ring"),
            (OutputArg::VirtualMic, None) => None,
            (OutputArg::SharedRing, name) => {
                let name = name.unwrap_or_else(krisp_engine::default_ring_name);
                cfg.output = Output::SharedRing(RingConfig::new(name.clone()));
                Some(name)
            }
        };
        let mic = cfg.mic.clone();
        let path = socket_path(args.socket);
        let engine = Engine::start(cfg).context("starting the audio engine")?;
        // The choice persists: the next start uses the same microphone.
        if args.input.is_some() || args.strength.is_some() || args.model.is_some() {
            settings.save().context("saving settings")?;
        }
        let control = engine.control();
        // Denoise only while the license allows it; otherwise Krisp Microphone passes through.
        let gate = control.clone();
        let checker = crate::license::Checker::start(move |ok| gate.set_licensed(ok))
            .context("checking the license")?;
        let license = checker.summary.clone();
        let check_now = checker.check_now_flag();
        let stats = engine.stats();
        let status = engine.status_handle();
        let ui: Arc<OnceLock<UiLink>> = Arc::new(OnceLock::new());
        let (control2, stats2, status2, ui2) =
            (control.clone(), stats.clone(), status.clone(), ui.clone());
        let names = MicNames {
            source: mic.source.clone(),
            sink: mic.sink.clone(),
            description: mic.description.clone(),
        };
        let models_dir = args.models_dir.clone();
        let server = socket::Server::start(&path, move |req| {
            let mut error = None;
            match req {
                Request::On => control2.set_enabled(true),
                Request::Off => control2.set_enabled(false),
                Request::Strength { db } => control2.set_strength_db(db),
                Request::Input { name } => {
                    if let Err(e) = switch_input(&control2, name) {
                        error = Some(e.to_string());
                    }
                }
                Request::Model { name } => {
                    if let Err(e) = switch_model(&control2, models_dir.as_deref(), &name) {
                        error = Some(format!("{e:#}"));
                    }
                }
                Request::Show => error = ask_ui(&ui2, UiRequest::Show),
                Request::Quit => error = ask_ui(&ui2, UiRequest::Quit),
                Request::CheckLicense => check_now.store(true, Ordering::Relaxed),
                Request::Status => {}
            }
            let summary = license
                .lock()
                .map(|l| l.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            let (health, status) = status2.get();
            let app = AppState {
                license: summary,
                mic: names.clone(),
                ui: ui2
                    .get()
                    .map(|l| l.state.lock().map(|s| s.clone()).unwrap_or_default()),
            };
            Response {
                ok: error.is_none(),
                error,
                enabled: control2.enabled(),
                denoising: control2.denoising(),
                strength_db: control2.strength_db(),
                status,
                input: control2.input(),
                model: control2.model(),
                stats: stats2.snapshot(),
                extra: app.license.lines(),
                health,
                app: serde_json::to_value(&app).ok(),
            }
        })
        .with_context(|| format!("control socket {}", path.display()))?;
        Ok(Session {
            engine,
            control,
            status,
            mic,
            ring,
            checker,
            ui,
            server,
        })
    }

    /// Stops in order: no more requests, no more license checks, then the audio path and
    /// the virtual microphone.
    pub fn stop(self) {
        match &self.ring {
            None => eprintln!("krisp: stopping; removing \"{}\"", self.mic.description),
            // The segment stays: the driver's device stays present and plays silence.
            Some(_) => eprintln!("krisp: stopping; the shared ring stays for the driver"),
        }
        drop(self.server);
        drop(self.checker);
        self.engine.stop();
    }
}

/// Hands `r` to the window app; the error a headless run answers with.
fn ask_ui(ui: &OnceLock<UiLink>, r: UiRequest) -> Option<String> {
    match ui.get() {
        Some(link) => {
            (link.request)(r);
            None
        }
        None => Some("this krisp runs headless: it has no window (stop it with Ctrl-C)".into()),
    }
}

/// Switches the input and remembers the choice.
pub fn switch_input(control: &Control, name: Option<String>) -> Result<()> {
    control.set_input(name.clone())?;
    let (mut s, _) = Settings::load();
    s.input = name;
    s.save()
        .context("switched, but could not save the choice")?;
    Ok(())
}

/// Loads model `name` from the manifest, hands it to the running engine (which crossfades to
/// it) and remembers the choice.
pub fn switch_model(
    control: &Control,
    models_dir: Option<&std::path::Path>,
    name: &str,
) -> Result<()> {
    let manifest = crate::denoise::find_manifest(models_dir)?;
    let model = manifest.load_model(name)?;
    control.set_model(model);
    let (mut s, _) = Settings::load();
    s.model = name.to_string();
    s.save()
        .context("switched, but could not save the choice")?;
    Ok(())
}

pub fn run_headless(args: RunArgs) -> Result<()> {
    let session = Session::start(args)?;
    let quit = Arc::new(AtomicBool::new(false));
    let q = quit.clone();
    ctrlc::set_handler(move || q.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    match &session.ring {
        None => eprintln!(
            "krisp: \"{}\" is running; pick it in your call app. Ctrl-C to stop.",
            session.mic.description
        ),
        Some(ring) => {
            eprintln!("krisp: writing the shared ring {ring} for the driver. Ctrl-C to stop.")
        }
    }
    let mut last = String::new();
    while !quit.load(Ordering::Relaxed) {
        let (_, s) = session.status.get();
        if s != last {
            eprintln!("krisp: {s}");
            last = s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    session.stop();
    Ok(())
}

pub fn devices(json: bool) -> Result<()> {
    let mic = VirtualMic::default();
    let inputs = krisp_engine::list_inputs(&mic)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&inputs)?);
        return Ok(());
    }
    if inputs.is_empty() {
        println!("no input devices");
    }
    for i in inputs {
        let mut marks = vec![];
        if i.is_default {
            marks.push("default");
        }
        if i.is_own {
            marks.push("Krisp's own virtual mic, never captured");
        }
        if i.is_monitor {
            marks.push("monitor of an output");
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  [{}]", marks.join(", "))
        };
        println!("{:<40} {}{}", i.name, i.description, marks);
    }
    Ok(())
}

pub fn remote(req: Request, socket: Option<PathBuf>, json: bool) -> Result<()> {
    let path = socket_path(socket);
    let resp = socket::send(&path, &req).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        print_status(&resp);
    }
    if let Some(e) = resp.error {
        bail!(e);
    }
    Ok(())
}

fn print_status(r: &Response) {
    let s = &r.stats;
    println!(
        "noise removal: {}{}",
        if r.enabled { "on" } else { "off" },
        if r.enabled && !r.denoising {
            " (not licensed: passing audio through)"
        } else {
            ""
        }
    );
    println!("strength:      {} dB", r.strength_db);
    if !r.model.is_empty() {
        println!("model:         {}", r.model);
    }
    println!("audio path:    {}", r.status);
    match &s.ring {
        Some(ring) => println!(
            "output:        shared ring {} (fill {} frames, target {}; reader {}; drift {:+} ppm; \
             reader underrun {} / overrun {} frames, {} resyncs; {} frames dropped with no reader)",
            ring.name,
            ring.fill_frames,
            ring.target_fill_frames,
            if ring.reader_playing {
                "playing"
            } else {
                "absent"
            },
            ring.drift_ppm,
            ring.reader_underrun_frames,
            ring.reader_overrun_frames,
            ring.reader_resyncs,
            ring.writer_dropped_frames
        ),
        None => println!("output:        virtual microphone (PulseAudio/PipeWire source)"),
    }
    println!(
        "input:         {}",
        r.input.as_deref().unwrap_or("system default")
    );
    println!(
        "levels:        in {:.1} dBFS, out {:.1} dBFS, voice {:.0} %",
        20.0 * s.input_rms.max(1e-9).log10(),
        20.0 * s.output_rms.max(1e-9).log10(),
        s.vad * 100.0
    );
    println!(
        "latency:       {:.1} ms added; cpu {:.2} % of the realtime budget",
        s.added_latency_ms,
        s.cpu_load * 100.0
    );
    println!(
        "xruns:         {} underruns, {} overruns, {} samples dropped / {} inserted for drift; {} restarts",
        s.underruns, s.overruns, s.drift_dropped, s.drift_inserted, s.restarts
    );
    if s.output == krisp_engine::OUTPUT_VIRTUAL_MIC && s.node {
        println!(
            "buffers:       none (PipeWire node: each block goes out in the graph cycle it starts)"
        );
    } else if s.output == krisp_engine::OUTPUT_VIRTUAL_MIC && s.pipe {
        println!("buffers:       none (pipe source: each block is written as it is denoised)");
    } else if s.output == krisp_engine::OUTPUT_VIRTUAL_MIC && s.direct {
        println!(
            "buffers:       direct feed, device {:.1} ms ({} server underflows)",
            s.device_buffer_ms, s.device_underflows
        );
    } else if s.output == krisp_engine::OUTPUT_VIRTUAL_MIC {
        println!(
            "buffers:       jitter {:.1} ms, device {:.1} ms ({} server underflows)",
            s.jitter_buffer_ms, s.device_buffer_ms, s.device_underflows
        );
    }
    if s.late_model_frames > 0 {
        println!(
            "model:         {} frames late (output as silence): this machine is too slow for \
             the model; `--model rnnoise` is lighter",
            s.late_model_frames
        );
    }
    println!(
        "listeners:     {}",
        if s.listeners { "yes" } else { "none" }
    );
    for line in &r.extra {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            state: "active".into(),
            allows_noise_removal: true,
            message: "licensed".into(),
            account: Some("ada@example.com".into()),
            device_id: "0123".into(),
            server: "https://l.example".into(),
            secrets: "file".into(),
            last_check: None,
            expires: Some("renews by tomorrow".into()),
        }
    }

    #[test]
    fn the_window_reads_the_app_state_back_from_an_answer() {
        let state = AppState {
            license: summary(),
            mic: MicNames {
                source: "krisp_mic".into(),
                sink: "krisp_mic_sink".into(),
                description: "Krisp Microphone".into(),
            },
            ui: Some(UiState {
                tray_error: Some("no StatusNotifier host".into()),
                show_seq: 3,
                quitting: false,
            }),
        };
        let line = serde_json::json!({
            "ok": true, "enabled": true, "denoising": true, "strength_db": 100.0,
            "status": "running", "input": null, "health": "mic_gone",
            "stats": {
                "captured_frames": 0, "processed_frames": 0, "underruns": 0, "overruns": 0,
                "drift_dropped": 0, "drift_inserted": 0, "direct": false, "pipe": true,
                "late_model_frames": 0, "input_rms": 0.0, "output_rms": 0.0, "vad": 0.0,
                "added_latency_ms": 0.0, "jitter_buffer_ms": 0.0, "device_buffer_ms": 0.0,
                "device_underflows": 0, "cpu_load": 0.0, "input_running": false,
                "output_running": false, "listeners": false, "restarts": 0,
                "output": "virtual-mic", "ring": null
            },
            "app": state,
        });
        let r: Response = serde_json::from_value(line).unwrap();
        assert_eq!(r.health, krisp_engine::Health::MicGone);
        let back = AppState::of(&r).expect("the app part");
        assert_eq!(back.ui, state.ui);
        assert_eq!(back.mic, state.mic);
        assert_eq!(back.license.account, state.license.account);
        assert_eq!(back.mic.mic().source, "krisp_mic");
        // A headless run's answer has no UI part; an answer without an app part has none.
        let headless = AppState { ui: None, ..state };
        let r = Response {
            app: serde_json::to_value(&headless).ok(),
            ..r
        };
        assert_eq!(AppState::of(&r).unwrap().ui, None);
        assert!(AppState::of(&Response { app: None, ..r }).is_none());
    }
}
