//! `krisp`: the noise-cancelling microphone. One binary: the window and tray app, and the CLI
//! for scripts and support.

mod autostart;
mod denoise;
mod license;
mod live;
mod monitor;
mod settings;
mod ui;
mod wav;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use krisp_engine::socket::Request;

#[derive(Parser)]
#[command(
    name = "krisp",
    version,
    about = "Removes background noise from your voice, on this machine"
)]
struct Cli {
    /// Without a command: the app with its window and tray icon (`krisp run`).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Denoise a WAV file (any PCM or float format, rate 8–192 kHz, 1–8 channels).
    Denoise {
        /// Noisy input WAV.
        input: PathBuf,
        /// Where to write the result (same format as the input; written atomically).
        output: PathBuf,
        /// Attenuation limit in dB: 0 leaves the input untouched, 100 (default) is full removal.
        #[arg(long, default_value_t = krisp_dsp::FULL_STRENGTH_DB)]
        strength: f32,
        /// Model name from models/manifest.toml: rnnoise (default, light) or dfn3 (DeepFilterNet3).
        #[arg(long, default_value = krisp_dsp::DEFAULT_MODEL)]
        model: String,
        /// DeepFilterNet3 look-ahead in 10 ms hops (0–2, default 2 = 30 ms delay); less look-ahead,
        /// less delay, a little less quality. Ignored by RNNoise.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
        lookahead: Option<u8>,
        /// Folder holding manifest.toml and weight files (default: installed or built-in).
        #[arg(long, env = "KRISP_MODELS_DIR")]
        models_dir: Option<PathBuf>,
        /// No progress bar or summary line.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run the live microphone: capture, denoise, and offer "Krisp Microphone" (with a window
    /// and a tray icon unless --headless).
    Run {
        /// No window and no tray icon: run until Ctrl-C (servers, scripts, SSH sessions).
        #[arg(long)]
        headless: bool,
        /// Start in the tray with the window closed (what "Start at login" uses).
        #[arg(long, conflicts_with = "headless")]
        minimized: bool,
        /// Input device (name from `krisp devices`); remembered for the next start.
        #[arg(long)]
        input: Option<String>,
        /// Attenuation limit in dB (remembered).
        #[arg(long)]
        strength: Option<f32>,
        /// Model name (remembered): rnnoise or dfn3.
        #[arg(long)]
        model: Option<String>,
        /// DeepFilterNet3 look-ahead in 10 ms hops (0–2, default 2 = 30 ms delay); less look-ahead,
        /// less delay, a little less quality. Ignored by RNNoise.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
        lookahead: Option<u8>,
        /// Folder holding manifest.toml and weight files.
        #[arg(long, env = "KRISP_MODELS_DIR")]
        models_dir: Option<PathBuf>,
        /// Start with noise removal off.
        #[arg(long)]
        off: bool,
        /// Capture read size in frames (default 480: one 10 ms model frame).
        #[arg(long)]
        capture_frames: Option<u32>,
        /// Write size into Krisp Microphone in frames (default 480: one 10 ms model frame).
        #[arg(long)]
        device_period_frames: Option<usize>,
        /// Smallest jitter buffer in milliseconds between the microphone and Krisp Microphone
        /// (default 12.5; it grows by itself after underruns, up to 40): lower is less
        /// latency, higher survives a busier machine.
        #[arg(long)]
        buffer_ms: Option<f32>,
        /// Audio the audio server holds for Krisp Microphone at start, in milliseconds
        /// (default 32; it grows by 10 after each gap the server reports, up to 52): lower is
        /// less latency, higher survives longer stalls of this machine.
        #[arg(long)]
        device_buffer_ms: Option<f32>,
        /// Steer the microphone-to-Krisp-Microphone queue against clock drift by resampling
        /// within ±1000 ppm (experimental; off by default: see docs/performance.md).
        #[arg(long)]
        drift_steering: bool,
        /// Write each denoised block into Krisp Microphone from the capture thread instead of
        /// through the feeder thread's jitter buffer (experimental; off by default: see
        /// docs/performance.md).
        #[arg(long)]
        direct_feed: bool,
        /// How "Krisp Microphone" is made: `pipe` (a pipe source written as the audio comes:
        /// the least latency, no drift), `null-sink` (a null sink fed through a jitter
        /// buffer), or `auto`: the pipe source, or the null sink where the server cannot load one
        /// (default).
        #[arg(long, value_enum, default_value_t = live::DeviceArg::Auto)]
        device: live::DeviceArg,
        /// Control socket path (default: $XDG_RUNTIME_DIR/krisp/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Where the denoised voice goes: `virtual-mic`, the "Krisp Microphone" source of
        /// PulseAudio/PipeWire (default), or `shared-ring`, the shared-memory ring that the
        /// macOS/Windows drivers read (drivers/PROTOCOL.md; on Linux for tests and tools).
        #[arg(long, value_enum, default_value_t = live::OutputArg::VirtualMic)]
        output: live::OutputArg,
        /// Shared-memory name of the ring with `--output shared-ring`
        /// (default: /krisp-mic-<uid>).
        #[arg(long)]
        ring_name: Option<String>,
    },
    /// List input devices (marks the default and Krisp's own virtual microphone).
    Devices {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Turn noise removal on in the running engine.
    On {
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Turn noise removal off (pass-through) in the running engine.
    Off {
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Switch the running engine's model (crossfaded; remembered): rnnoise or dfn3.
    Model {
        /// Model name from models/manifest.toml.
        name: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Switch the running engine's microphone (remembered); without a name, follow the
    /// system's default input.
    Input {
        /// Device name, id or description from `krisp devices`.
        name: Option<String>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Show the running engine's state.
    Status {
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Sign in with a one-time code sent by e-mail, and activate this computer.
    Login {
        /// E-mail address (asked for when not given).
        #[arg(long)]
        email: Option<String>,
    },
    /// Free this computer's seat and forget every local license secret.
    Logout,
    /// Internal: the window of a running `krisp`, started by it (not for people to run).
    #[command(hide = true)]
    Window {
        /// The running app's control socket.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Show the license state (offline; `--check` asks the server first).
    License {
        /// Renew with the server before showing.
        #[arg(long)]
        check: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run {
        headless: false,
        minimized: false,
        input: None,
        strength: None,
        model: None,
        lookahead: None,
        models_dir: std::env::var_os("KRISP_MODELS_DIR").map(PathBuf::from),
        off: false,
        capture_frames: None,
        device_period_frames: None,
        buffer_ms: None,
        device_buffer_ms: None,
        drift_steering: false,
        direct_feed: false,
        device: live::DeviceArg::Auto,
        socket: None,
        output: live::OutputArg::VirtualMic,
        ring_name: None,
    });
    // The printing commands end quietly when their reader goes (`krisp status | head`), as
    // command-line tools do, instead of panicking on a broken pipe. Not for `run` and the
    // window, whose socket writes must see EPIPE as an error.
    #[cfg(unix)]
    if matches!(
        command,
        Command::Devices { .. } | Command::Status { .. } | Command::License { .. }
    ) {
        // SAFETY: called before any other thread exists; restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match command {
        Command::Denoise {
            input,
            output,
            strength,
            model,
            lookahead,
            models_dir,
            quiet,
        } => denoise::run(&denoise::Args {
            input,
            output,
            strength_db: strength,
            model,
            lookahead: lookahead.map(usize::from),
            models_dir,
            quiet,
        }),
        Command::Run {
            headless,
            minimized,
            input,
            strength,
            model,
            lookahead,
            models_dir,
            off,
            capture_frames,
            device_period_frames,
            buffer_ms,
            device_buffer_ms,
            drift_steering,
            direct_feed,
            device,
            socket,
            output,
            ring_name,
        } => {
            let args = live::RunArgs {
                input,
                strength,
                model,
                lookahead: lookahead.map(usize::from),
                models_dir,
                off,
                socket,
                capture_frames,
                device_period_frames,
                buffer_ms,
                device_buffer_ms,
                drift_steering,
                direct_feed,
                device,
                output,
                ring_name,
            };
            if headless {
                live::run_headless(args)
            } else {
                ui::run(args, minimized)
            }
        }
        Command::Devices { json } => live::devices(json),
        Command::On { socket } => live::remote(Request::On, socket, false),
        Command::Off { socket } => live::remote(Request::Off, socket, false),
        Command::Status { socket, json } => live::remote(Request::Status, socket, json),
        Command::Model { name, socket } => live::remote(Request::Model { name }, socket, false),
        Command::Input { name, socket } => live::remote(Request::Input { name }, socket, false),
        Command::Login { email } => license::login(email),
        Command::Logout => license::logout(),
        Command::Window { socket } => ui::window::run(&socket),
        Command::License { check, json } => license::show(check, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krisp: {e:#}");
            ExitCode::FAILURE
        }
    }
}
