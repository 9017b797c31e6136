//! The control thread: builds the audio path, watches it, and rebuilds it after faults.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use krisp_dsp::{Config as DspConfig, Denoiser, Framing, Handle, Model, SwapSender, swap_channel};
use krisp_vdev::pulse::{MIC_RATE, MicKind, VirtualMic};
use krisp_vdev::shm::{RingConfig, RingFeed, RingWriter};
use ringbuf::HeapRb;
use ringbuf::traits::Split;
use serde::{Deserialize, Serialize};

use crate::rt::{CHUNK, CaptureSide, Sink};
use crate::stats::{RingInfo, Stats, StatsInner};
use crate::watch::Watch;
use crate::{EngineError, InputInfo};

/// Supervision round while something needs the control thread often (the silence it
/// writes without a microphone, a connection or device to retry).
const TICK: Duration = Duration::from_millis(50);
/// Longest wait between rounds while the microphone streams: the audio server's events
/// start a round at once, so this only bounds how late a device or model switch asked for
/// through [`Control`] begins. (At 50 ms the thread's wake-ups cost ~0.15 % of a core.)
const QUIET_TICK: Duration = Duration::from_millis(200);

/// Largest the adaptive jitter buffer grows after underruns (40 ms): beyond that the machine
/// is too starved for a call anyway, and latency matters more.
const MAX_JITTER_TARGET: usize = 1_920;

/// Default server-side buffer of the virtual device at start (frames): 32 ms. It grows by
/// 10 ms after each underflow the server reports, up to [`MAX_DEVICE_BUFFER`]
/// (`writer::DeviceBuffer`). Measured on the 2-core shared VMs we test on
/// (`e2e_linux`, PulseAudio): starting at 16 ms, half the runs had a gap in their first
/// seconds before the buffer grew, and the added latency measured from outside was not lower
/// (50-66 ms against 41-57 ms): most of it is capture framing, the model, the jitter buffer
/// and the server's own scheduling, not this buffer. `--device-buffer-ms` sets the start.
pub const DEFAULT_DEVICE_BUFFER: usize = 1_536;
/// Largest the virtual device's server-side buffer grows to after underflows (52 ms).
pub const MAX_DEVICE_BUFFER: usize = 2_496;

/// Silence the direct feed puts in the virtual device's buffer before the first chunk
/// (frames, 20 ms): its margin against the microphone's blocks arriving late.
pub const DEFAULT_DIRECT_PRIME: usize = 960;

/// Where the engine puts the denoised audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// "Krisp Microphone" as a PulseAudio/PipeWire source ([`EngineConfig::mic`]): the Linux
    /// product.
    VirtualMic,
    /// The shared-memory ring of `drivers/PROTOCOL.md`, written as the app side of that
    /// protocol for a driver to read (the macOS and Windows "Krisp Microphone"; on Linux, tests
    /// and tools). Must be 48 kHz mono, the engine's format.
    SharedRing(RingConfig),
}

/// How "Krisp Microphone" is made on Linux (krisp-vdev's [`MicKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VirtualDevice {
    /// On PipeWire our own node (falling back to the pipe source if it cannot be made); on
    /// PulseAudio the pipe source, or the null sink where the server cannot
    /// load one (e.g. a server that does not share this machine's file system).
    #[default]
    Auto,
    /// A PipeWire node of the engine's own (`pwnode.rs`); PipeWire servers only.
    Node,
    /// `module-pipe-source`: the engine writes each denoised chunk into its FIFO (`pipe.rs`).
    Pipe,
    /// A null sink fed by the feeder thread, its monitor remapped into the source.
    NullSink,
}

/// How the engine starts.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Input device name or id (`pactl` source name or description); `None`: system default.
    pub input: Option<String>,
    /// The virtual microphone to create (with [`Output::VirtualMic`]); with any output, the
    /// device the engine refuses to capture.
    pub mic: VirtualMic,
    /// Where the denoised audio goes.
    pub output: Output,
    /// The denoising model.
    pub model: Model,
    /// Noise removal on at start.
    pub enabled: bool,
    /// Attenuation limit in dB.
    pub strength_db: f32,
    /// Capture read size in frames (default 480, one model frame; at most 4800).
    pub capture_frames: u32,
    /// Frames per write into the virtual device (default 480, one model frame; at most
    /// 4800). Smaller writes wake the feeder and libpulse more often for no gain.
    pub device_period_frames: usize,
    /// Ring fill to aim for at first and at best, in frames (latency vs. robustness to
    /// scheduling jitter). The jitter buffer grows from here after underruns, up to 40 ms,
    /// and shrinks back after a calm spell.
    pub target_fill: usize,
    /// Audio the audio server holds for the virtual device, in frames: how long a refill by
    /// the engine may be late without a gap the engine cannot see.
    pub device_buffer_frames: usize,
    /// Resample the virtual mic's queue to hold its fill against clock drift (`steer.rs`).
    /// Off by default until its live runs are measured (docs/performance.md).
    pub drift_steering: bool,
    /// While someone records and a microphone is open, the capture thread writes each
    /// denoised chunk straight into the virtual device (`direct.rs`): one buffer instead of
    /// the feeder's jitter buffer plus the device buffer. Experimental and off by default:
    /// measured, it did not lower the latency seen from outside and under-ran more
    /// (docs/performance.md).
    pub direct_feed: bool,
    /// The direct feed's starting margin in frames ([`DEFAULT_DIRECT_PRIME`]).
    pub direct_prime_frames: usize,
    /// How the virtual microphone is made (with [`Output::VirtualMic`]).
    pub device: VirtualDevice,
}

impl EngineConfig {
    /// Defaults: system default input, "Krisp Microphone", noise removal on at full strength.
    pub fn new(model: Model) -> EngineConfig {
        EngineConfig {
            input: None,
            mic: VirtualMic::default(),
            output: Output::VirtualMic,
            model,
            enabled: true,
            strength_db: krisp_dsp::FULL_STRENGTH_DB,
            capture_frames: crate::capture::PERIOD as u32,
            device_period_frames: crate::writer::PERIOD,
            target_fill: 5 * CHUNK / 4,
            device_buffer_frames: DEFAULT_DEVICE_BUFFER,
            drift_steering: false,
            direct_feed: false,
            direct_prime_frames: DEFAULT_DIRECT_PRIME,
            device: VirtualDevice::Auto,
        }
    }
}

/// The on/off switch, strength and device choice of a running engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    dsp: Handle,
    user_enabled: Arc<AtomicBool>,
    licensed: Arc<AtomicBool>,
    input: Arc<Mutex<Option<String>>>,
    input_changed: Arc<AtomicBool>,
    /// A model to switch to, picked up by the control thread.
    model_request: Arc<Mutex<Option<Model>>>,
    /// The model the audio path runs (or is switching to).
    model_name: Arc<Mutex<String>>,
    mic: VirtualMic,
}

impl Control {
    fn apply(&self) {
        let on = self.user_enabled.load(Ordering::Relaxed) && self.licensed.load(Ordering::Relaxed);
        self.dsp.set_bypass(!on);
    }
    /// Turns noise removal on or off (crossfaded, click-free).
    pub fn set_enabled(&self, on: bool) {
        self.user_enabled.store(on, Ordering::Relaxed);
        self.apply();
    }
    /// Whether the user wants noise removal on.
    pub fn enabled(&self) -> bool {
        self.user_enabled.load(Ordering::Relaxed)
    }
    /// Whether the denoiser actually runs (on, and allowed by the license).
    pub fn denoising(&self) -> bool {
        !self.dsp.bypass()
    }
    /// Allows or forbids denoising (license state). Forbidden means pass-through, not silence.
    pub fn set_licensed(&self, ok: bool) {
        self.licensed.store(ok, Ordering::Relaxed);
        self.apply();
    }
    /// Attenuation limit in dB (0 untouched … 100 full).
    pub fn set_strength_db(&self, db: f32) {
        self.dsp.set_strength_db(db);
    }
    /// The attenuation limit in dB.
    pub fn strength_db(&self) -> f32 {
        self.dsp.strength_db()
    }
    /// Switches the input device (`None`: system default). Our own virtual mic is refused.
    pub fn set_input(&self, input: Option<String>) -> Result<(), EngineError> {
        if let Some(name) = &input
            && is_own(&self.mic, name)
        {
            return Err(EngineError::OwnDevice(name.clone()));
        }
        *self.input.lock().expect("invariant: lock never poisoned") = input;
        self.input_changed.store(true, Ordering::Relaxed);
        Ok(())
    }
    /// Switches the denoising model while audio flows: the engine's control thread builds the
    /// new denoiser and the realtime thread crossfades to it (krisp-dsp's `SwapReceiver`), so
    /// there is no gap. Returns at once.
    pub fn set_model(&self, model: Model) {
        *self
            .model_name
            .lock()
            .expect("invariant: lock never poisoned") = model.info().name.clone();
        *self
            .model_request
            .lock()
            .expect("invariant: lock never poisoned") = Some(model);
    }
    /// Name of the model in use (or being switched to).
    pub fn model(&self) -> String {
        self.model_name
            .lock()
            .expect("invariant: lock never poisoned")
            .clone()
    }
    /// The chosen input (`None`: system default).
    pub fn input(&self) -> Option<String> {
        self.input
            .lock()
            .expect("invariant: lock never poisoned")
            .clone()
    }
}

/// Whether `name` (a source name, id or description) is our own virtual microphone.
pub(crate) fn is_own(mic: &VirtualMic, name: &str) -> bool {
    let n = name.strip_prefix("pulseaudio:").unwrap_or(name);
    n == mic.source
        || n == format!("{}.monitor", mic.sink)
        || n == mic.sink
        || n.eq_ignore_ascii_case(&mic.description)
}

/// How the audio path is doing, for a window's banner and the tray icon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The path is being built.
    Starting,
    /// Microphone captured, Krisp Microphone fed.
    Running,
    /// The audio server is down or refused us; retrying.
    ServerDown,
    /// The microphone is gone or cannot be opened; Krisp Microphone plays silence meanwhile.
    MicGone,
}

/// Reads the engine's state sentence and [`Health`] from any thread.
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<(Health, String)>>);

impl StatusHandle {
    /// The health and the sentence describing it.
    pub fn get(&self) -> (Health, String) {
        self.0
            .lock()
            .expect("invariant: lock never poisoned")
            .clone()
    }
}

/// A running engine. Dropping it (or [`Engine::stop`]) removes the virtual microphone.
pub struct Engine {
    control: Control,
    stats: Stats,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<(Health, String)>>,
}

impl Engine {
    /// Starts the engine: returns at once; the audio path comes up on the control thread and
    /// comes back by itself after faults.
    pub fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        if let Some(name) = &config.input
            && is_own(&config.mic, name)
        {
            return Err(EngineError::OwnDevice(name.clone()));
        }
        // The shared ring is created here, so a bad name or geometry is reported to the caller
        // at once instead of being retried by the control thread.
        let ring = match &config.output {
            Output::VirtualMic => None,
            Output::SharedRing(rc) => {
                if rc.sample_rate != MIC_RATE || rc.channels != 1 {
                    return Err(EngineError::Ring(
                        krisp_vdev::shm::ShmError::InvalidConfig {
                            what: "the engine writes 48 kHz mono",
                        },
                    ));
                }
                Some(RingWriter::create(rc)?)
            }
        };
        let dsp = Handle::new();
        dsp.set_strength_db(config.strength_db);
        let control = Control {
            dsp: dsp.clone(),
            user_enabled: Arc::new(AtomicBool::new(config.enabled)),
            licensed: Arc::new(AtomicBool::new(true)),
            input: Arc::new(Mutex::new(config.input.clone())),
            input_changed: Arc::new(AtomicBool::new(false)),
            model_request: Arc::new(Mutex::new(None)),
            model_name: Arc::new(Mutex::new(config.model.info().name.clone())),
            mic: config.mic.clone(),
        };
        control.apply();
        let stats = Stats {
            inner: Arc::new(StatsInner::default()),
            dsp,
        };
        if let Some(w) = &ring {
            let _ = stats.inner.ring.set(RingInfo {
                name: w.name().unwrap_or_default().to_string(),
                target_fill: w.header().target_fill_frames,
                monitor: w.monitor(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new((Health::Starting, "starting".to_string())));
        let (ctl, inner, st, stat) = (
            control.clone(),
            stats.inner.clone(),
            stop.clone(),
            status.clone(),
        );
        // The supervisor is built on its thread: its audio-server connection is not `Send`.
        let thread = std::thread::Builder::new()
            .name("krisp-control".into())
            .spawn(move || {
                let mut sup = Supervisor::new(config, ctl, inner, st, stat);
                sup.pending_ring = ring;
                sup.run()
            })
            .map_err(EngineError::Thread)?;
        Ok(Engine {
            control,
            stats,
            stop,
            thread: Some(thread),
            status,
        })
    }

    /// The control handle.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The statistics handle.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// One sentence on the state of the audio path ("running: …", "waiting for …").
    pub fn status(&self) -> String {
        self.status_handle().get().1
    }

    /// A cheap, cloneable reader of the audio path's state, for other threads (a window, the
    /// control socket).
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.status.clone())
    }

    /// Stops the audio path and removes the virtual microphone.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct WriterHandle {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

struct CaptureHandle {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    thread: JoinHandle<CaptureSide>,
    name: String,
}

struct Supervisor {
    cfg: EngineConfig,
    control: Control,
    stats: Arc<StatsInner>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<(Health, String)>>,
    mic_ready: bool,
    /// The audio path's output exists (PulseAudio feeder thread, or the shared ring's feed).
    output_started: bool,
    writer: Option<WriterHandle>,
    /// The shared ring created by `Engine::start`, until the first output start takes it.
    pending_ring: Option<RingWriter>,
    /// The realtime state (ring producer + denoiser) while no capture thread owns it.
    idle_side: Option<CaptureSide>,
    /// Hands new denoisers (a model change) to whichever thread owns the realtime state.
    swap: Option<SwapSender>,
    capture: Option<CaptureHandle>,
    /// The persistent connection that tells which sources exist and whether anyone records
    /// from "Krisp Microphone" (instead of `pactl` subprocesses).
    watch: Option<Watch>,
    /// Last attempt to connect `watch` (shared-ring output, where it is optional).
    last_watch_try: Option<Instant>,
    last_input_try: Option<Instant>,
    /// Said with the running status when the virtual device itself adds delay (PipeWire 1.x's
    /// pipe source).
    device_note: Option<String>,
    /// "Krisp Microphone" as our own PipeWire node, while it is that.
    node: Option<crate::pwnode::Node>,
}

impl Supervisor {
    fn new(
        cfg: EngineConfig,
        control: Control,
        stats: Arc<StatsInner>,
        stop: Arc<AtomicBool>,
        status: Arc<Mutex<(Health, String)>>,
    ) -> Self {
        Supervisor {
            cfg,
            control,
            stats,
            stop,
            status,
            mic_ready: false,
            output_started: false,
            writer: None,
            pending_ring: None,
            idle_side: None,
            swap: None,
            capture: None,
            watch: None,
            last_watch_try: None,
            last_input_try: None,
            device_note: None,
            node: None,
        }
    }

    fn set_status(&self, health: Health, s: impl Into<String>) {
        let s = s.into();
        let mut cur = self.status.lock().expect("invariant: lock never poisoned");
        if cur.1 != s {
            tracing::info!(status = %s, "engine");
            *cur = (health, s);
        }
    }

    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.step() {
                self.set_status(Health::ServerDown, format!("waiting: {e}"));
                self.teardown();
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            self.idle();
        }
        // Remove the device first, so even a stuck stream cannot leave it behind. (A shared
        // ring stays: the driver's device stays present and plays silence once our heartbeat
        // is stale, as the protocol says.)
        if self.cfg.output == Output::VirtualMic
            && let Err(e) = self.cfg.mic.remove()
        {
            tracing::warn!(error = %e, "could not remove the virtual microphone");
        }
        self.teardown();
    }

    /// Waits for the next supervision round. While the microphone streams into "Krisp
    /// Microphone" nothing here is urgent except what the audio server announces (a recorder
    /// attaching or leaving, a source going away): the round starts at that event, or after
    /// [`QUIET_TICK`]. Otherwise (no microphone: the control thread paces the silence; no
    /// connection; a driver's shared ring) every [`TICK`].
    fn idle(&mut self) {
        let quiet = self.capture.is_some() && self.cfg.output == Output::VirtualMic;
        match self.watch.as_mut() {
            // A failed wait shows up as a lost connection in the next round's update.
            Some(w) if quiet => {
                let _ = w.wait(QUIET_TICK);
            }
            _ => std::thread::sleep(TICK),
        }
    }

    fn stop_output(&mut self) {
        self.output_started = false;
        if let Some(w) = self.writer.take() {
            // The writer notices at its next write and exits. It is not joined: a write into a
            // sink that is being unloaded can block until the server gives up on the stream,
            // and neither recovery nor exit may wait for that.
            w.stop.store(true, Ordering::Relaxed);
            drop(w.thread);
        }
        self.idle_side = None;
        self.swap = None;
        self.stats.output_running.store(false, Ordering::Relaxed);
    }

    /// Stops the capture thread and takes back its realtime state (if it comes back soon).
    fn stop_capture(&mut self) {
        if let Some(c) = self.capture.take() {
            c.stop.store(true, Ordering::Relaxed);
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            // A read returns within one period while the source lives, and fails at once when
            // it is gone; past that the thread is abandoned along with its ring.
            let t = Instant::now();
            while !c.thread.is_finished() && t.elapsed() < Duration::from_millis(500) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if c.thread.is_finished()
                && let Ok(side) = c.thread.join()
            {
                self.idle_side = Some(side);
            }
        }
        self.stats.input_running.store(false, Ordering::Relaxed);
    }

    fn teardown(&mut self) {
        self.stop_capture();
        self.stop_output();
        // The node goes with its connection (after the capture side stopped triggering it).
        self.node = None;
        self.mic_ready = false;
        // Reconnect on the next round: the server may be a new one by then.
        self.watch = None;
    }

    /// What the engine feeds, for status lines.
    /// PipeWire from 0.3.80 on buffers a pipe source by 170 ms (krisp-vdev's
    /// `PIPE_SOURCE_BUFFERS_FROM`): said, not hidden, until Krisp Microphone has a native
    /// PipeWire node.
    fn pipe_delay_note(kind: &MicKind, pipewire: Option<(u32, u32, u32)>) -> Option<String> {
        if !matches!(kind, MicKind::Pipe(_)) {
            return None;
        }
        let v = pipewire?;
        if v < krisp_vdev::pulse::PIPE_SOURCE_BUFFERS_FROM {
            return None;
        }
        let note = format!(
            " (PipeWire {}.{}.{} delays this kind of device by about 150 ms; a known problem)",
            v.0, v.1, v.2
        );
        tracing::warn!(
            pipewire = %format!("{}.{}.{}", v.0, v.1, v.2),
            "Krisp Microphone is a pipe source, which this PipeWire buffers by about 150 ms"
        );
        Some(note)
    }

    fn output_label(&self) -> String {
        match &self.cfg.output {
            Output::VirtualMic => self.cfg.mic.description.clone(),
            Output::SharedRing(rc) => format!("shared ring {}", rc.name),
        }
    }

    /// One supervision round. An error tears the path down and retries.
    fn step(&mut self) -> Result<(), EngineError> {
        self.step_model()?;
        match self.cfg.output {
            Output::VirtualMic => self.step_virtual_mic()?,
            Output::SharedRing(_) => self.step_shared_ring()?,
        }
        self.step_input()
    }

    /// A model change: build the new denoiser here and offer it to the realtime side, which
    /// crossfades; free the one it retired. Without a running path the next start uses it.
    fn step_model(&mut self) -> Result<(), EngineError> {
        if let Some(swap) = self.swap.as_mut() {
            swap.collect();
            if swap.pending() {
                return Ok(()); // the last offer is not taken yet
            }
        }
        let Some(model) = self
            .control
            .model_request
            .lock()
            .expect("invariant: lock never poisoned")
            .take()
        else {
            return Ok(());
        };
        self.cfg.model = model;
        if let Some(swap) = self.swap.as_mut() {
            let denoiser =
                Denoiser::with_handle(&dsp_config(), &self.cfg.model, self.control.dsp.clone())?;
            let latency = denoiser.latency() as u64;
            if swap.offer(denoiser).is_err() {
                // Still busy with the last change: ask again next round.
                *self
                    .control
                    .model_request
                    .lock()
                    .expect("invariant: lock never poisoned") = Some(self.cfg.model.clone());
                return Ok(());
            }
            let old = self.stats.model_latency.swap(latency, Ordering::Relaxed);
            self.stats
                .latency_samples
                .fetch_add(latency, Ordering::Relaxed);
            self.stats.latency_samples.fetch_sub(old, Ordering::Relaxed);
        }
        tracing::info!(model = %self.cfg.model.info().name, "model switched");
        Ok(())
    }

    /// The shared ring: (re)start the feed if needed; keep the heartbeat going while there is
    /// no microphone. (Whether a reader plays is judged on the realtime side.)
    fn step_shared_ring(&mut self) -> Result<(), EngineError> {
        if !self.output_started {
            self.start_output()?;
        }
        if self.capture.is_none()
            && let Some(side) = self.idle_side.as_mut()
        {
            side.idle_heartbeat();
        }
        // The audio server only matters here for the microphone: without a connection, the
        // capture is not watched (its read fails when the server goes) and inputs are listed
        // with `pactl`.
        if self.watch.is_none()
            && self
                .last_watch_try
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(1000))
        {
            self.last_watch_try = Some(Instant::now());
            self.watch = Watch::connect().ok();
        }
        if let Some(w) = self.watch.as_mut()
            && let Err(e) = w.update()
        {
            tracing::debug!(error = %e, "audio server connection lost");
            self.watch = None;
        }
        self.check_capture_source();
        Ok(())
    }

    fn step_virtual_mic(&mut self) -> Result<(), EngineError> {
        if let Some(w) = &self.writer
            && w.failed.load(Ordering::Relaxed)
        {
            return Err(EngineError::Server(
                "the audio server closed the virtual microphone stream".into(),
            ));
        }
        let watch = match self.watch.as_mut() {
            Some(w) => w,
            None => self
                .watch
                .insert(Watch::connect().map_err(EngineError::Server)?),
        };
        // Takes in the server's events; a lost connection means the server is down.
        watch.update().map_err(EngineError::Server)?;
        if !self.mic_ready {
            let server = |e: krisp_vdev::pulse::PulseError| EngineError::Server(e.to_string());
            // Chosen each time: the server that comes back after a restart may be another.
            let pipe = || MicKind::Pipe(krisp_vdev::pulse::default_fifo(&self.cfg.mic.source));
            // Asked once (a `pactl info`): it picks the kind and the running status's note.
            let pipewire = krisp_vdev::pulse::pipewire_version();
            self.cfg.mic.kind = match self.cfg.device {
                VirtualDevice::NullSink => MicKind::NullSink,
                VirtualDevice::Pipe => pipe(),
                VirtualDevice::Node => MicKind::Node,
                // On PipeWire our node: from 0.3.80 on a pipe source is buffered by 170 ms, and
                // on older PipeWire it measured 26-49 ms (past the 40 ms bound now and then)
                // against the node's 18-21 ms, for 0.4 % of a core more in Krisp and 3 % less
                // in the server (docs/performance.md, session 10).
                VirtualDevice::Auto if pipewire.is_some() => MicKind::Node,
                VirtualDevice::Auto => pipe(),
            };
            if self.cfg.mic.kind == MicKind::Node {
                self.cfg.mic.create().map_err(server)?; // leftovers of the other kinds
                let desc = crate::pwnode::NodeDesc {
                    name: self.cfg.mic.source.clone(),
                    description: self.cfg.mic.description.clone(),
                    rate: MIC_RATE,
                };
                match crate::pwnode::Node::start(&desc, self.stats.clone()) {
                    Ok(n) => self.node = Some(n),
                    Err(e) if self.cfg.device == VirtualDevice::Auto => {
                        tracing::warn!(error = %e, "no PipeWire node; using a pipe source");
                        self.cfg.mic.kind = pipe();
                    }
                    Err(e) => return Err(EngineError::Server(e)),
                }
            }
            if self.cfg.mic.kind != MicKind::Node
                && let Err(e) = self.cfg.mic.create()
            {
                let fall_back = self.cfg.device == VirtualDevice::Auto
                    && matches!(e, krisp_vdev::pulse::PulseError::LoadFailed { .. });
                if !fall_back {
                    return Err(server(e));
                }
                tracing::warn!(error = %e, "no pipe source here; using a null sink");
                self.cfg.mic.kind = MicKind::NullSink;
                self.cfg.mic.create().map_err(server)?;
            }
            self.mic_ready = true;
            self.device_note = Self::pipe_delay_note(&self.cfg.mic.kind, pipewire);
            // The new source is in the snapshot before it is looked for (pipewire-pulse
            // learns of our node from PipeWire's registry, a moment after it exists).
            let t = Instant::now();
            loop {
                watch.refresh().map_err(EngineError::Server)?;
                if watch.source(&self.cfg.mic.source).is_some()
                    || t.elapsed() > Duration::from_secs(3)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.node.as_ref().is_some_and(|n| n.failed()) {
            return Err(EngineError::Server(
                "PipeWire closed Krisp Microphone's node".into(),
            ));
        }
        // From the snapshot: no I/O, so checked every round (an event refreshes it at once).
        let listening = match watch.source(&self.cfg.mic.source) {
            Some(s) => s.running,
            None => return Err(EngineError::Server("Krisp Microphone disappeared".into())),
        };
        self.stats.listeners.store(listening, Ordering::Relaxed);
        if !self.output_started {
            self.start_output()?;
        }
        // No microphone: the pipe source gets silence from here, so recorders never stall.
        if self.capture.is_none()
            && let Some(p) = self.idle_side.as_mut().and_then(CaptureSide::pipe)
        {
            p.silence(listening, &self.stats)
                .map_err(|e| EngineError::Server(format!("Krisp Microphone's FIFO: {e}")))?;
        }
        self.check_capture_source();
        Ok(())
    }

    /// When a source goes away, a server moves its record streams to the default source,
    /// which can be Krisp Microphone itself (a feedback loop). The capture stream asks not to
    /// be moved (`DONT_MOVE`, capture.rs), so the server ends it instead; this is the second
    /// guard, for a server that moves it anyway: the capture is checked against the snapshot
    /// and reopened by name. The server's "source removed" event refreshes the snapshot, so
    /// this notices within a supervision round or two.
    fn check_capture_source(&self) {
        if let (Some(c), Some(w)) = (&self.capture, &self.watch)
            && w.source(&c.name).is_none()
        {
            c.failed.store(true, Ordering::Relaxed);
        }
    }

    /// The source the capture should move to while it runs on another: the chosen
    /// microphone once it is back (after a fallback to the default while it was gone), or,
    /// with no choice, the server's new default source (a headset plugged in, or the user's
    /// pick in the system settings) — never Krisp Microphone itself. From the connection's
    /// snapshot, so nothing is asked of the server here.
    fn better_input(&self) -> Option<String> {
        let c = self.capture.as_ref()?;
        self.watch.as_ref()?; // without the snapshot, `inputs` would start `pactl` each round
        let inputs = self.inputs().ok()?;
        preferred_input(&inputs, self.control.input().as_deref())
            .filter(|p| *p != c.name)
            .map(str::to_owned)
    }

    /// The server's inputs: from the connection's snapshot, or from `pactl` without one.
    fn inputs(&self) -> Result<Vec<InputInfo>, EngineError> {
        match &self.watch {
            Some(w) => Ok(inputs_from(
                &self.cfg.mic,
                w.sources()
                    .into_iter()
                    .map(|s| (s.name, s.description))
                    .collect(),
                &w.default_source(),
            )),
            None => list_inputs_with(&self.cfg.mic),
        }
    }

    fn step_input(&mut self) -> Result<(), EngineError> {
        // Input: (re)open when missing, failed, or the user chose another device.
        let changed = self.control.input_changed.swap(false, Ordering::Relaxed);
        let failed = self
            .capture
            .as_ref()
            .is_some_and(|c| c.failed.load(Ordering::Relaxed) || c.thread.is_finished());
        if failed {
            let name = self
                .capture
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default();
            self.stop_capture();
            self.set_status(
                Health::MicGone,
                format!(
                    "microphone '{name}' is gone; {} stays available with silence until it returns",
                    self.output_label()
                ),
            );
        } else if changed {
            self.stop_capture();
        } else if let Some(to) = self.better_input() {
            let from = self.capture.as_ref().map(|c| c.name.clone());
            tracing::info!(from = ?from, to = %to, "switching the microphone");
            self.stop_capture();
            self.last_input_try = None;
        }
        if self.capture.is_none() {
            if self.idle_side.is_none() {
                // The realtime state was lost with an abandoned thread: new ring, new writer.
                self.stop_output();
                self.start_output()?;
            }
            let retry = changed
                || self
                    .last_input_try
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(500));
            if retry {
                self.last_input_try = Some(Instant::now());
                self.try_open_input();
            }
        }
        Ok(())
    }

    fn start_output(&mut self) -> Result<(), EngineError> {
        let (sink, output_delay) = match (&self.cfg.output, &self.cfg.mic.kind) {
            // Written as it comes: no buffer of ours between the model and the recorders.
            (Output::VirtualMic, MicKind::Pipe(fifo)) => (
                Sink::Pipe(Box::new(
                    crate::pipe::PipeOut::open(fifo, MIC_RATE).map_err(EngineError::Server)?,
                )),
                0,
            ),
            (Output::VirtualMic, MicKind::NullSink) => {
                (self.start_pulse_feeder()?, self.cfg.device_buffer_frames)
            }
            // Delivered in the graph cycle the block triggers: no buffer of ours either.
            (Output::VirtualMic, MicKind::Node) => {
                let feed = self
                    .node
                    .as_mut()
                    .and_then(|n| n.take_feed())
                    .ok_or_else(|| {
                        // A path rebuilt without its node (the old ring went with a thread):
                        // the next round makes both anew.
                        EngineError::Server("Krisp Microphone's node needs a restart".into())
                    })?;
                (
                    Sink::Pipe(Box::new(crate::pipe::PipeOut::node(feed, MIC_RATE))),
                    0,
                )
            }
            (Output::SharedRing(rc), _) => {
                let writer = match self.pending_ring.take() {
                    Some(w) => w,
                    None => RingWriter::create(rc)?,
                };
                let feed = RingFeed::new(writer, CHUNK)?;
                let delay = feed.delay_frames();
                (Sink::Ring(Box::new(feed)), delay)
            }
        };
        let denoiser =
            Denoiser::with_handle(&dsp_config(), &self.cfg.model, self.control.dsp.clone())?;
        // Model delay, half a chunk of accumulation on average, and the device's buffer (or
        // the ring's resampler; the ring's own fill is added when status is read).
        self.stats
            .model_latency
            .store(denoiser.latency() as u64, Ordering::Relaxed);
        self.stats
            .output_delay
            .store(output_delay as u64, Ordering::Relaxed);
        self.stats.latency_samples.store(
            denoiser.latency() as u64 + CHUNK as u64 / 2 + output_delay as u64,
            Ordering::Relaxed,
        );
        self.stats
            .pipe
            .store(matches!(sink, Sink::Pipe(_)), Ordering::Relaxed);
        self.stats.node.store(
            self.cfg.output == Output::VirtualMic && self.cfg.mic.kind == MicKind::Node,
            Ordering::Relaxed,
        );
        let (swap, rt) = swap_channel(denoiser);
        self.swap = Some(swap);
        self.idle_side = Some(CaptureSide::new(sink, rt, self.stats.clone()));
        self.stats.output_running.store(true, Ordering::Relaxed);
        self.output_started = true;
        Ok(())
    }

    /// Opens the virtual device's stream and starts its feeder thread; returns the realtime
    /// side's end of the ringbuf between them.
    fn start_pulse_feeder(&mut self) -> Result<Sink, EngineError> {
        let period = self
            .cfg
            .device_period_frames
            .clamp(1, crate::writer::MAX_PERIOD);
        let rb = HeapRb::<f32>::new(MIC_RATE as usize / 2);
        let (prod, cons) = rb.split();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let w = crate::writer::Writer {
            cons,
            stats: self.stats.clone(),
            stop: stop.clone(),
            failed: failed.clone(),
            jitter: crate::writer::JitterBuffer::new(
                self.cfg.target_fill,
                self.cfg.target_fill.max(MAX_JITTER_TARGET),
                period,
            ),
            max_device_buffer: self.cfg.device_buffer_frames.max(MAX_DEVICE_BUFFER),
        };
        let thread = crate::writer::start(
            self.cfg.mic.sink.clone(),
            MIC_RATE,
            self.cfg.device_buffer_frames,
            w,
        )
        .map_err(EngineError::Server)?;
        self.writer = Some(WriterHandle {
            stop,
            failed,
            thread,
        });
        Ok(Sink::Queue(Box::new(crate::steer::SteeredQueue::new(
            prod,
            self.cfg.drift_steering,
        ))))
    }

    fn try_open_input(&mut self) {
        let wanted = self.control.input();
        let name = match self
            .inputs()
            .and_then(|inputs| pick_input(inputs, wanted.as_deref()))
        {
            Ok(n) => n,
            Err(e) => {
                self.set_status(
                    Health::MicGone,
                    format!(
                        "no microphone ({e}); {} stays available with silence",
                        self.output_label()
                    ),
                );
                return;
            }
        };
        let frames = self.cfg.capture_frames as usize;
        // The silence written so far goes on from the capture thread until the microphone's
        // first block (capture.rs), paced from where it is.
        let side = self.idle_side.take().expect("invariant: checked by caller");
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        // With the PulseAudio output the capture thread writes the virtual device itself
        // while someone records (direct.rs); the shared ring is written by the realtime side.
        let direct = match (&self.cfg.output, self.cfg.direct_feed) {
            (Output::VirtualMic, true) if self.cfg.mic.kind == MicKind::NullSink => {
                Some(crate::capture::DirectTo {
                    sink: self.cfg.mic.sink.clone(),
                    buffer_frames: self.cfg.device_buffer_frames,
                    prime_frames: self.cfg.direct_prime_frames,
                })
            }
            _ => None,
        };
        match crate::capture::start(
            name.clone(),
            MIC_RATE,
            frames,
            side,
            stop.clone(),
            failed.clone(),
            direct,
        ) {
            Ok(thread) => {
                self.stats.input_running.store(true, Ordering::Relaxed);
                self.set_status(
                    Health::Running,
                    format!(
                        "running: {name} -> {}{}",
                        self.output_label(),
                        self.device_note.as_deref().unwrap_or_default()
                    ),
                );
                self.capture = Some(CaptureHandle {
                    stop,
                    failed,
                    thread,
                    name,
                });
            }
            Err((e, side)) => {
                // Without the realtime state back (a hung thread), the next round builds a
                // new path.
                self.idle_side = side.map(|b| *b);
                self.set_status(Health::MicGone, format!("{e}; retrying"));
            }
        }
    }
}

/// The realtime denoiser's configuration: 48 kHz mono in whole 10 ms chunks, and
/// DeepFilterNet3's inference (which allocates) on its own thread, off the realtime one.
fn dsp_config() -> DspConfig {
    let mut c = DspConfig::new(MIC_RATE, 1);
    c.framing = Framing::Chunked;
    c.model_thread = true;
    // Measured: at normal priority, a loaded 2-core VM starved the DFN3 worker for up to
    // 200 ms (20 frames output as silence); it keeps realtime pace like the capture thread.
    c.model_thread_init = Some(crate::writer::promote_to_realtime);
    c
}

/// Chooses the source to capture: the wanted one if present, else the default, else the
/// first real (non-monitor, non-Krisp) source.
fn pick_input(inputs: Vec<InputInfo>, wanted: Option<&str>) -> Result<String, EngineError> {
    if let Some(name) = preferred_input(&inputs, wanted) {
        return Ok(name.to_owned());
    }
    if let Some(w) = wanted {
        tracing::warn!(device = w, "chosen input not present; using the default");
        if let Some(name) = preferred_input(&inputs, None) {
            return Ok(name.to_owned());
        }
    }
    inputs
        .into_iter()
        .find(|i| !i.is_own && !i.is_monitor)
        .map(|i| i.name)
        .ok_or_else(|| EngineError::Device("no microphone found".into()))
}

/// The input the capture belongs on when it is present: the chosen one (`wanted`), or with no
/// choice the default source unless that is our own. `None` when neither is listed (then
/// whatever the capture runs on stays: a fallback, or the last default before Krisp
/// Microphone became the default, as many users set it).
fn preferred_input<'a>(inputs: &'a [InputInfo], wanted: Option<&str>) -> Option<&'a str> {
    let found = match wanted {
        Some(w) => inputs.iter().find(|i| {
            !i.is_own && (i.name == w || i.id == w || i.description.eq_ignore_ascii_case(w))
        }),
        None => inputs.iter().find(|i| i.is_default && !i.is_own),
    };
    found.map(|i| i.name.as_str())
}

/// Lists the server's sources, marking the default, monitors and our own.
pub(crate) fn list_inputs_with(mic: &VirtualMic) -> Result<Vec<InputInfo>, EngineError> {
    let server = |e: krisp_vdev::pulse::PulseError| EngineError::Server(e.to_string());
    let default = krisp_vdev::pulse::default_source().unwrap_or_default();
    let sources = krisp_vdev::pulse::list_sources()
        .map_err(server)?
        .into_iter()
        .map(|s| (s.name, s.description))
        .collect();
    Ok(inputs_from(mic, sources, &default))
}

/// Marks (name, description) pairs as the picker shows them.
fn inputs_from(mic: &VirtualMic, sources: Vec<(String, String)>, default: &str) -> Vec<InputInfo> {
    sources
        .into_iter()
        .map(|(name, description)| InputInfo {
            id: format!("pulseaudio:{name}"),
            is_default: name == default,
            is_own: is_own(mic, &name),
            is_monitor: name.ends_with(".monitor"),
            name,
            description,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(dsp: Handle) -> Control {
        Control {
            dsp,
            user_enabled: Arc::new(AtomicBool::new(true)),
            licensed: Arc::new(AtomicBool::new(true)),
            input: Arc::new(Mutex::new(None)),
            input_changed: Arc::new(AtomicBool::new(false)),
            model_request: Arc::new(Mutex::new(None)),
            model_name: Arc::new(Mutex::new("rnnoise".into())),
            mic: VirtualMic::default(),
        }
    }

    #[test]
    fn without_a_license_the_microphone_passes_audio_through_untouched() {
        let model = Model::builtin();
        let mut cfg = DspConfig::new(MIC_RATE, 1);
        cfg.framing = Framing::Chunked;
        let handle = Handle::new();
        let ctl = control(handle.clone());
        ctl.set_licensed(false);
        assert!(ctl.enabled(), "the user's choice is kept");
        assert!(!ctl.denoising(), "but the denoiser does not run");
        let mut dn = Denoiser::with_handle(&cfg, &model, handle).unwrap();
        let x: Vec<f32> = (0..48_000)
            .map(|i| ((i as f32 * 0.07).sin() + ((i * 7919) % 101) as f32 / 200.0) * 0.3)
            .collect();
        let mut y = vec![0.0; x.len()];
        for (a, b) in x.chunks(CHUNK).zip(y.chunks_mut(CHUNK)) {
            dn.process(a, b).unwrap();
        }
        let lat = dn.latency();
        assert_eq!(&y[lat..], &x[..x.len() - lat], "pass-through, not silence");
        ctl.set_licensed(true);
        assert!(ctl.denoising());
    }

    #[test]
    fn a_shared_ring_the_engine_cannot_write_is_refused_at_start() {
        for (rc, says) in [
            (
                RingConfig::new("/krisp-engine-test").channels(2),
                "48 kHz mono",
            ),
            (
                RingConfig::new("/krisp-engine-test").sample_rate(44_100),
                "48 kHz mono",
            ),
            (RingConfig::new("no-slash"), "invalid shared ring name"),
            (
                RingConfig::new("/krisp-engine-test").fill(1000, 100, 500),
                "power of two",
            ),
        ] {
            let mut cfg = EngineConfig::new(Model::builtin());
            cfg.output = Output::SharedRing(rc);
            let err = Engine::start(cfg).err().expect("refused");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn the_capture_belongs_on_the_chosen_microphone_or_else_the_default_but_never_ours() {
        let mic = VirtualMic::default();
        let list = |default: &str| {
            inputs_from(
                &mic,
                [
                    ("alsa_input.builtin", "Built-in Audio"),
                    ("alsa_input.usb", "USB Headset"),
                    ("krisp_mic", "Krisp Microphone"),
                ]
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
                default,
            )
        };
        let builtin = list("alsa_input.builtin");
        // The chosen one, by name, id or description, wherever the default is.
        for w in ["alsa_input.usb", "pulseaudio:alsa_input.usb", "usb headset"] {
            assert_eq!(preferred_input(&builtin, Some(w)), Some("alsa_input.usb"));
        }
        // Chosen but unplugged: nothing to move to (the fallback stays).
        assert_eq!(preferred_input(&builtin, Some("alsa_input.gone")), None);
        // No choice: the default, and a new default when it changes.
        assert_eq!(preferred_input(&builtin, None), Some("alsa_input.builtin"));
        let usb = list("alsa_input.usb");
        assert_eq!(preferred_input(&usb, None), Some("alsa_input.usb"));
        // Krisp Microphone as the default: stay where the capture is; the first start picks
        // a real microphone.
        let ours = list("krisp_mic");
        assert_eq!(preferred_input(&ours, None), None);
        assert_eq!(pick_input(ours, None).unwrap(), "alsa_input.builtin");
        // Our own is never the preferred one, even when asked for by name.
        assert_eq!(preferred_input(&builtin, Some("krisp_mic")), None);
    }

    #[test]
    fn choosing_our_own_virtual_microphone_is_refused() {
        let ctl = control(Handle::new());
        for name in [
            "krisp_mic",
            "pulseaudio:krisp_mic",
            "krisp_mic_sink.monitor",
            "Krisp Microphone",
        ] {
            let err = ctl.set_input(Some(name.into())).unwrap_err();
            assert!(err.to_string().contains("own virtual microphone"), "{err}");
        }
        ctl.set_input(Some("alsa_input.usb".into())).unwrap();
        assert_eq!(ctl.input().as_deref(), Some("alsa_input.usb"));
    }
}
