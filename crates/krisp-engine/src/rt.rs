//! The realtime side: the capture callback, where the denoiser runs.
//!
//! # Never here
//! No allocation, lock, log, print or system call. The capture callback gathers 10 ms chunks
//! in a fixed array, denoises each (krisp-dsp in `Framing::Chunked` mode, so no extra framing
//! latency) and pushes the result into an SPSC ring (ringbuf, sized at start). Trouble is
//! counted in atomics of [`StatsInner`]; the control thread reads and reports it.
//! `Instant::now()` reads the monotonic clock through the vDSO, not a system call.
//!
//! The I/O thread that feeds the virtual device (`writer.rs`) is the other end of the ring; it
//! plays the part a driver would and may block in the audio server's socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use krisp_dsp::Denoiser;
use ringbuf::HeapProd;
use ringbuf::traits::Producer;

use crate::stats::StatsInner;

/// Samples per processing chunk (10 ms at 48 kHz).
pub(crate) const CHUNK: usize = 480;

/// Capture callback state.
pub(crate) struct CaptureSide {
    pub prod: HeapProd<f32>,
    pub denoiser: Denoiser,
    pub stats: Arc<StatsInner>,
    pub inbuf: [f32; CHUNK],
    pub outbuf: [f32; CHUNK],
    pub fill: usize,
}

impl CaptureSide {
    pub fn new(prod: HeapProd<f32>, denoiser: Denoiser, stats: Arc<StatsInner>) -> Self {
        CaptureSide {
            prod,
            denoiser,
            stats,
            inbuf: [0.0; CHUNK],
            outbuf: [0.0; CHUNK],
            fill: 0,
        }
    }

    pub fn on_data(&mut self, mut data: &[f32]) {
        self.stats
            .captured_frames
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        while !data.is_empty() {
            let take = data.len().min(CHUNK - self.fill);
            self.inbuf[self.fill..self.fill + take].copy_from_slice(&data[..take]);
            self.fill += take;
            data = &data[take..];
            if self.fill == CHUNK {
                self.fill = 0;
                self.run_chunk();
            }
        }
    }

    fn run_chunk(&mut self) {
        let t0 = Instant::now();
        if self.stats.listeners.load(Ordering::Relaxed) {
            let _ = self.denoiser.process(&self.inbuf, &mut self.outbuf);
        } else {
            // Nobody records from the virtual mic: skip the model, keep the clock going, and
            // still meter the microphone (a window shows it while the user sets up).
            self.outbuf.fill(0.0);
            let sq: f32 = self.inbuf.iter().map(|x| x * x).sum();
            let rms = (sq / CHUNK as f32).sqrt();
            self.stats
                .idle_input_rms
                .store(rms.to_bits(), Ordering::Relaxed);
        }
        let pushed = self.prod.push_slice(&self.outbuf);
        if pushed < CHUNK {
            self.stats.overruns.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .processed_frames
            .fetch_add(CHUNK as u64, Ordering::Relaxed);
        // Load in parts per million of the 10 ms chunk period, smoothed.
        let busy = t0.elapsed().as_nanos() as u64;
        let load = busy * 1_000_000 / 10_000_000;
        let old = self.stats.cpu_load_ppm.load(Ordering::Relaxed);
        self.stats
            .cpu_load_ppm
            .store((old * 31 + load) / 32, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assert_no_alloc::{AllocDisabler, assert_no_alloc};
    use krisp_dsp::{Config, Framing, Model};
    use ringbuf::HeapRb;
    use ringbuf::traits::{Consumer, Split};

    #[global_allocator]
    static ALLOC: AllocDisabler = AllocDisabler;

    #[test]
    fn capture_callback_never_allocates_even_when_the_ring_overflows() {
        let (prod, mut cons) = HeapRb::<f32>::new(4_800).split();
        let stats = Arc::new(StatsInner::default());
        stats.listeners.store(true, Ordering::Relaxed);
        let mut cfg = Config::new(48_000, 1);
        cfg.framing = Framing::Chunked;
        let dn = Denoiser::new(&cfg, &Model::builtin()).unwrap();
        let handle = dn.handle();
        let mut side = CaptureSide::new(prod, dn, stats.clone());
        let block: Vec<f32> = (0..479).map(|i| (i as f32 * 0.05).sin() * 0.2).collect();
        let mut sink = vec![0.0f32; 4_800];
        assert_no_alloc(|| {
            for i in 0..400 {
                let n = [1, 128, 479, 37][i % 4];
                side.on_data(&block[..n]);
                if i == 100 {
                    handle.set_bypass(true);
                }
                if i < 300 {
                    cons.pop_slice(&mut sink);
                }
                if i == 200 {
                    stats.listeners.store(false, Ordering::Relaxed);
                }
            }
        });
        assert!(stats.processed_frames.load(Ordering::Relaxed) > 40_000);
        assert!(
            stats.overruns.load(Ordering::Relaxed) > 0,
            "the full ring was exercised"
        );
    }
}
