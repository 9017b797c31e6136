//! `krisp run`, `krisp devices`, `krisp on|off|status`: the live microphone from the CLI.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use krisp_engine::socket::{self, Request, Response};
use krisp_engine::{Engine, EngineConfig, VirtualMic};

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
    pub buffer_ms: Option<f32>,
    pub device_buffer_ms: Option<f32>,
}

pub fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("KRISP_SOCKET").map(PathBuf::from))
        .unwrap_or_else(socket::default_path)
}

pub fn run_headless(args: RunArgs) -> Result<()> {
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
    if let Some(ms) = args.device_buffer_ms {
        cfg.device_buffer_frames = (ms.clamp(5.0, 500.0) * 48.0) as usize;
    }
    if let Some(ms) = args.buffer_ms {
        cfg.target_fill = (ms.clamp(0.0, 500.0) * 48.0) as usize;
    }
    let mic = cfg.mic.clone();
    let path = socket_path(args.socket);
    let engine = Engine::start(cfg)?;
    // The choice persists: the next start uses the same microphone.
    if args.input.is_some() || args.strength.is_some() || args.model.is_some() {
        settings.save().context("saving settings")?;
    }
    let control = engine.control();
    // Denoise only while the license allows it; otherwise Krisp Microphone passes through.
    let gate = control.clone();
    let checker = crate::license::Checker::start(move |ok| gate.set_licensed(ok))
        .context("checking the license")?;
    let license_lines = checker.summary.clone();
    let stats = engine.stats();
    let status = Arc::new(std::sync::Mutex::new(String::new()));
    let status_for_socket = status.clone();
    let server = socket::Server::start(&path, move |req| {
        let mut error = None;
        match req {
            Request::On => control.set_enabled(true),
            Request::Off => control.set_enabled(false),
            Request::Strength { db } => control.set_strength_db(db),
            Request::Input { name } => match control.set_input(name.clone()) {
                Ok(()) => {
                    let (mut s, _) = Settings::load();
                    s.input = name;
                    if let Err(e) = s.save() {
                        error = Some(format!("switched, but could not save the choice: {e}"));
                    }
                }
                Err(e) => error = Some(e.to_string()),
            },
            Request::Status => {}
        }
        Response {
            ok: error.is_none(),
            error,
            enabled: control.enabled(),
            denoising: control.denoising(),
            strength_db: control.strength_db(),
            status: status_for_socket
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
            input: control.input(),
            stats: stats.snapshot(),
            extra: license_lines.lock().map(|l| l.clone()).unwrap_or_default(),
        }
    })
    .with_context(|| format!("control socket {}", path.display()))?;

    let quit = Arc::new(AtomicBool::new(false));
    let q = quit.clone();
    ctrlc::set_handler(move || q.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    eprintln!(
        "krisp: \"{}\" is running; pick it in your call app. Ctrl-C to stop.",
        mic.description
    );
    let mut last = String::new();
    while !quit.load(Ordering::Relaxed) {
        let s = engine.status();
        if s != last {
            eprintln!("krisp: {s}");
            last = s.clone();
        }
        *status.lock().expect("invariant: not poisoned") = s;
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("krisp: stopping; removing \"{}\"", mic.description);
    drop(server);
    drop(checker);
    engine.stop();
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
    println!("audio path:    {}", r.status);
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
        "xruns:         {} underruns, {} overruns, {} samples dropped for drift; {} restarts",
        s.underruns, s.overruns, s.drift_dropped, s.restarts
    );
    println!(
        "listeners:     {}",
        if s.listeners { "yes" } else { "none" }
    );
    for line in &r.extra {
        println!("{line}");
    }
}
