//! Lock-free statistics of a running engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    pub captured_frames: AtomicU64,
    pub processed_frames: AtomicU64,
    pub underruns: AtomicU64,
    pub overruns: AtomicU64,
    pub drift_dropped: AtomicU64,
    pub ring_fill: AtomicU64,
    pub jitter_target: AtomicU64,
    pub cpu_load_ppm: AtomicU64,
    pub input_running: AtomicBool,
    pub output_running: AtomicBool,
    pub listeners: AtomicBool,
    pub restarts: AtomicU64,
    pub latency_samples: AtomicU64,
    /// Microphone level (f32 bits) while the model idles because nobody listens.
    pub idle_input_rms: AtomicU32,
}

/// Statistics of a running engine; read from any thread without locks.
#[derive(Debug, Clone)]
pub struct Stats {
    pub(crate) inner: Arc<StatsInner>,
    pub(crate) dsp: krisp_dsp::Handle,
}

/// A copy of the statistics at one moment (what `krisp status` prints).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    /// Microphone frames captured.
    pub captured_frames: u64,
    /// Frames delivered through the denoiser.
    pub processed_frames: u64,
    /// Times the virtual mic had to play silence because capture was late.
    pub underruns: u64,
    /// Times the capture ring was full (processing late).
    pub overruns: u64,
    /// Samples dropped to keep latency bounded when clocks drift.
    pub drift_dropped: u64,
    /// Input level (RMS, full scale 1.0).
    pub input_rms: f32,
    /// Output level (RMS); 0 while no program records from Krisp Microphone (the model idles).
    pub output_rms: f32,
    /// Voice-activity probability of the latest frame.
    pub vad: f32,
    /// Latency the engine adds in the ring and the model, in milliseconds.
    pub added_latency_ms: f32,
    /// Share of the realtime period spent in the output callback (0–1).
    pub cpu_load: f32,
    /// Whether the microphone stream runs.
    pub input_running: bool,
    /// Whether the virtual microphone stream runs.
    pub output_running: bool,
    /// Whether some program records from "Krisp Microphone".
    pub listeners: bool,
    /// Times the audio path was rebuilt (server restart, device change).
    pub restarts: u64,
    /// The adaptive jitter buffer's current target in ms: the configured buffer, grown after
    /// underruns on a starved machine, shrinking back when calm.
    #[serde(default)]
    pub jitter_buffer_ms: f32,
}

impl Stats {
    /// Reads every counter once.
    pub fn snapshot(&self) -> StatsSnapshot {
        let i = &self.inner;
        let r = Ordering::Relaxed;
        let rate = krisp_vdev::pulse::MIC_RATE as f32;
        let listeners = i.listeners.load(r);
        let (input_rms, output_rms, vad) = if listeners {
            (self.dsp.input_rms(), self.dsp.output_rms(), self.dsp.vad())
        } else {
            // The model is idle: its meters are stale; the microphone is metered apart.
            (f32::from_bits(i.idle_input_rms.load(r)), 0.0, 0.0)
        };
        StatsSnapshot {
            captured_frames: i.captured_frames.load(r),
            processed_frames: i.processed_frames.load(r),
            underruns: i.underruns.load(r),
            overruns: i.overruns.load(r),
            drift_dropped: i.drift_dropped.load(r),
            input_rms,
            output_rms,
            vad,
            added_latency_ms: (i.ring_fill.load(r) + i.latency_samples.load(r)) as f32 / rate
                * 1000.0,
            cpu_load: i.cpu_load_ppm.load(r) as f32 / 1e6,
            input_running: i.input_running.load(r),
            output_running: i.output_running.load(r),
            listeners,
            restarts: i.restarts.load(r),
            jitter_buffer_ms: i.jitter_target.load(r) as f32 / rate * 1000.0,
        }
    }
}
