//! The virtual device's feeder: an I/O thread that takes denoised audio from the ring and
//! writes it into the virtual sink with blocking writes, which pace it at the device clock.
//!
//! It plays the part a driver plays on macOS/Windows: when the ring runs dry it writes silence
//! (the virtual mic never stalls recorders) and counts an underrun; when the ring fills past
//! its bound because the microphone's clock runs faster than the device's, it drops the excess
//! so latency cannot creep.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use libpulse_binding::def::BufferAttr;
use libpulse_binding::sample::{Format, Spec};
use libpulse_binding::stream::Direction;
use libpulse_simple_binding::Simple;
use ringbuf::HeapCons;
use ringbuf::traits::{Consumer, Observer};

use crate::stats::StatsInner;

/// Frames per write (2.7 ms).
pub(crate) const PERIOD: usize = 128;
/// Writes per latency-trim window (about 0.7 s).
const TRIM_WINDOW: usize = 256;
/// Samples of margin kept above the lowest fill of a window (10 ms).
const TRIM_MARGIN: usize = 480;
/// Most samples dropped by one trim.
const MAX_TRIM: usize = 960;
/// Level below which samples may be dropped unheard (-46 dBFS).
const QUIET: f32 = 0.005;

pub(crate) struct Writer {
    pub cons: HeapCons<f32>,
    pub stats: Arc<StatsInner>,
    pub stop: Arc<AtomicBool>,
    pub failed: Arc<AtomicBool>,
    /// Fill to reach before playing, and to return to after dropping.
    pub target: usize,
    /// Fill above which the excess is dropped.
    pub high: usize,
}

/// Opens a playback stream on `sink`, 48 kHz mono float, with a small server buffer.
pub(crate) fn open(sink: &str, rate: u32) -> Result<Simple, String> {
    let spec = Spec {
        format: Format::F32le,
        channels: 1,
        rate,
    };
    let bytes = (PERIOD * 4) as u32;
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: bytes * 6,
        prebuf: bytes,
        minreq: bytes,
        fragsize: u32::MAX,
    };
    Simple::new(
        None,
        "Krisp",
        Direction::Playback,
        Some(sink),
        "Krisp Microphone feed",
        &spec,
        None,
        Some(&attr),
    )
    .map_err(|e| format!("cannot open the virtual device: {e}"))
}

impl Writer {
    pub fn run(mut self, pa: Simple) {
        promote_to_realtime();
        let mut buf = [0.0f32; PERIOD];
        let mut bytes = [0u8; PERIOD * 4];
        let mut primed = false;
        // Lowest fill seen in the current window: what the ring held that was never needed.
        let mut window_min = usize::MAX;
        let mut window_len = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let fill = self.cons.occupied_len();
            if !primed && fill >= self.target {
                primed = true;
                window_min = usize::MAX;
                window_len = 0;
            }
            if primed && fill > self.high {
                let dropped = self.cons.skip(fill - self.target);
                self.stats
                    .drift_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
            }
            if primed {
                window_min = window_min.min(fill);
                window_len += 1;
                if window_len == TRIM_WINDOW {
                    // Keep only a small margin above what the jitter actually used: latency
                    // settles at the minimum the machine needs and cannot creep with drift.
                    // Only cut where it cannot be heard: the samples dropped must be quiet.
                    // Otherwise try again in the next window (speech has pauses).
                    if window_min > TRIM_MARGIN + PERIOD {
                        let excess = (window_min - TRIM_MARGIN - PERIOD).min(MAX_TRIM);
                        let (a, b) = self.cons.as_slices();
                        let quiet = a
                            .iter()
                            .chain(b.iter())
                            .take(excess + 16)
                            .all(|s| s.abs() < QUIET);
                        if quiet {
                            let dropped = self.cons.skip(excess);
                            self.stats
                                .drift_dropped
                                .fetch_add(dropped as u64, Ordering::Relaxed);
                        }
                    }
                    window_min = usize::MAX;
                    window_len = 0;
                }
            }
            let got = if primed {
                self.cons.pop_slice(&mut buf)
            } else {
                0
            };
            if got < PERIOD {
                buf[got..].fill(0.0);
                if primed {
                    primed = false;
                    if self.stats.input_running.load(Ordering::Relaxed) {
                        self.stats.underruns.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.stats
                .ring_fill
                .store(self.cons.occupied_len() as u64, Ordering::Relaxed);
            for (b, s) in bytes.chunks_exact_mut(4).zip(buf.iter()) {
                b.copy_from_slice(&s.to_le_bytes());
            }
            if pa.write(&bytes).is_err() {
                self.failed.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Asks for SCHED_FIFO so the feeder keeps its 5 ms pace under CPU load. Best effort: without
/// the privilege (no rtkit, not root) it stays a normal thread and xruns are counted.
pub(crate) fn promote_to_realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid, initialised param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::debug!(
            "realtime scheduling not granted; the virtual-device feeder runs at normal priority"
        );
    }
}
