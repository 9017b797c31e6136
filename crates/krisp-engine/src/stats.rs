//! Lock-free statistics of a running engine.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use krisp_vdev::shm::RingMonitor;

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
    /// The model's part of `latency_samples` (it changes when the model is switched).
    pub model_latency: AtomicU64,
    /// The drift controller's correction of the shared ring's resampler, ppm.
    pub drift_ppm: AtomicI64,
    /// Set once when the output is the shared ring.
    pub ring: OnceLock<RingInfo>,
    /// Microphone level (f32 bits) while the model idles because nobody listens.
    pub idle_input_rms: AtomicU32,
    /// The virtual device's server-side buffer now, frames (adaptive).
    pub device_buffer: AtomicU64,
    /// Times the audio server ran out of our audio while someone recorded.
    pub device_underflows: AtomicU64,
    /// Bumped by the feeder each time its jitter buffer primes (the queue's level is set
    /// anew): the capture side's drift steering takes a new setpoint.
    pub prime_epoch: AtomicU64,
    /// When the feeder last took a period from the queue (monotonic ns): the drift steering's
    /// view of the device clock's phase.
    pub last_pop_ns: AtomicU64,
    /// Whether the capture I/O thread writes the virtual device directly now (`direct.rs`);
    /// the feeder thread stands by meanwhile.
    pub direct: AtomicBool,
    /// Frames inserted to keep latency from falling when the microphone's clock is slower.
    pub drift_inserted: AtomicU64,
    /// The output's part of `latency_samples` (the device buffer assumed at start).
    pub output_delay: AtomicU64,
    /// In direct mode: the device buffer's measured level plus the device's own latency,
    /// frames (mean of the last second).
    pub direct_latency: AtomicU64,
    /// The virtual microphone is a pipe source (`pipe.rs`), or our PipeWire node.
    pub pipe: AtomicBool,
    /// The virtual microphone is our own PipeWire node (`pwnode.rs`).
    pub node: AtomicBool,
}

/// The shared ring the engine writes, for status.
pub(crate) struct RingInfo {
    pub name: String,
    pub target_fill: u32,
    pub monitor: RingMonitor,
}

impl std::fmt::Debug for RingInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingInfo")
            .field("name", &self.name)
            .finish()
    }
}

/// Output kind names as `krisp status --json` shows them.
pub const OUTPUT_VIRTUAL_MIC: &str = "virtual-mic";
/// See [`OUTPUT_VIRTUAL_MIC`].
pub const OUTPUT_SHARED_RING: &str = "shared-ring";

/// The shared-memory ring when it is the engine's output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RingStatus {
    /// Segment name (`/krisp-mic-<uid>`).
    pub name: String,
    /// Frames queued now.
    pub fill_frames: u64,
    /// Fill the writer steers to.
    pub target_fill_frames: u32,
    /// Whether a reader (the driver) played within the last ~250 ms.
    pub reader_playing: bool,
    /// The resampler's drift correction, ppm (positive: the device clock runs faster).
    pub drift_ppm: i64,
    /// Silence frames the reader played because the ring ran dry.
    pub reader_underrun_frames: u64,
    /// Oldest frames the reader skipped to bound latency.
    pub reader_overrun_frames: u64,
    /// Times the reader started over (start, app restart, stale queue).
    pub reader_resyncs: u64,
    /// Frames dropped because the ring was full (no reader).
    pub writer_dropped_frames: u64,
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
    /// Samples inserted (in quiet moments) to keep latency from falling when the
    /// microphone's clock is the slower one.
    #[serde(default)]
    pub drift_inserted: u64,
    /// Whether the capture thread writes "Krisp Microphone" directly (someone records and a
    /// microphone is open); otherwise the feeder thread plays the queue or silence.
    #[serde(default)]
    pub direct: bool,
    /// Frames a worker-thread model (DeepFilterNet3) did not finish in time: each was output
    /// as silence. Non-zero means the machine is too slow for the model; RNNoise is always 0.
    #[serde(default)]
    pub late_model_frames: u64,
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
    /// The virtual device's server-side buffer in ms: small at start, grown by 10 ms after
    /// each server underflow (up to a bound). 0 for the shared ring.
    #[serde(default)]
    pub device_buffer_ms: f32,
    /// Times the audio server ran out of our audio while someone recorded (a gap the
    /// recorder heard; each one grows the device buffer).
    #[serde(default)]
    pub device_underflows: u64,
    /// Where the denoised audio goes: `virtual-mic` (the PulseAudio/PipeWire source "Krisp
    /// Microphone") or `shared-ring` (the shared-memory ring of the macOS/Windows drivers).
    #[serde(default)]
    pub output: String,
    /// The shared ring, when it is the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingStatus>,
    /// "Krisp Microphone" is a pipe source, written as the audio comes (no jitter or device
    /// buffer of ours on the path).
    #[serde(default)]
    pub pipe: bool,
    /// "Krisp Microphone" is the app's own PipeWire node (delivered in the graph cycle each
    /// block starts; `pipe` is true too).
    #[serde(default)]
    pub node: bool,
}

impl Stats {
    /// Reads every counter once.
    pub fn snapshot(&self) -> StatsSnapshot {
        let i = &self.inner;
        let r = Ordering::Relaxed;
        let rate = krisp_vdev::pulse::MIC_RATE as f32;
        let ring = i.ring.get().map(|info| {
            let c = info.monitor.snapshot();
            RingStatus {
                name: info.name.clone(),
                fill_frames: c.fill,
                target_fill_frames: info.target_fill,
                reader_playing: i.listeners.load(r),
                drift_ppm: i.drift_ppm.load(r),
                reader_underrun_frames: c.underrun_frames,
                reader_overrun_frames: c.overrun_frames,
                reader_resyncs: c.resyncs,
                writer_dropped_frames: c.writer_dropped_frames,
            }
        });
        let fill = ring
            .as_ref()
            .map_or(i.ring_fill.load(r), |ring| ring.fill_frames);
        let listeners = i.listeners.load(r);
        let direct = i.direct.load(r);
        // Direct: the device buffer is measured, in place of the one assumed at start and the
        // feeder's queue.
        let added = if direct {
            (i.latency_samples.load(r) + i.direct_latency.load(r))
                .saturating_sub(i.output_delay.load(r))
        } else {
            fill + i.latency_samples.load(r)
        };
        let input_running = i.input_running.load(r);
        let (input_rms, output_rms, vad) = if !input_running {
            // No microphone: nothing is metered, and Krisp Microphone carries silence (the
            // last block's levels would otherwise stay on the meters).
            (0.0, 0.0, 0.0)
        } else if listeners {
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
            drift_inserted: i.drift_inserted.load(r),
            direct,
            late_model_frames: self.dsp.late_frames(),
            input_rms,
            output_rms,
            vad,
            added_latency_ms: added as f32 / rate * 1000.0,
            cpu_load: i.cpu_load_ppm.load(r) as f32 / 1e6,
            input_running,
            output_running: i.output_running.load(r),
            listeners,
            restarts: i.restarts.load(r),
            jitter_buffer_ms: i.jitter_target.load(r) as f32 / rate * 1000.0,
            device_buffer_ms: i.device_buffer.load(r) as f32 / rate * 1000.0,
            device_underflows: i.device_underflows.load(r),
            output: if ring.is_some() {
                OUTPUT_SHARED_RING
            } else {
                OUTPUT_VIRTUAL_MIC
            }
            .to_string(),
            ring,
            pipe: i.pipe.load(r),
            node: i.node.load(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krisp_dsp::{Config, Denoiser, Model};

    #[test]
    fn without_a_microphone_the_meters_read_silence_not_the_last_block() {
        let mut dn = Denoiser::new(&Config::new(48_000, 1), &Model::builtin()).unwrap();
        let loud: Vec<f32> = (0..9_600).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let mut out = vec![0.0f32; loud.len()];
        dn.process(&loud, &mut out).unwrap();
        let stats = Stats {
            inner: Arc::new(StatsInner::default()),
            dsp: dn.handle(),
        };
        stats.inner.listeners.store(true, Ordering::Relaxed);
        stats.inner.input_running.store(true, Ordering::Relaxed);
        let live = stats.snapshot();
        assert!(live.input_rms > 0.1, "{live:?}");
        // The microphone went away: the model is not called any more, its meters keep the
        // last block's levels; the snapshot must not show them.
        stats.inner.input_running.store(false, Ordering::Relaxed);
        let gone = stats.snapshot();
        assert_eq!((gone.input_rms, gone.output_rms, gone.vad), (0.0, 0.0, 0.0));
        assert!(!gone.input_running);
    }
}
