//! The realtime side: the capture callback, where the denoiser runs.
//!
//! # Never here
//! No allocation, lock, log, print or system call. The capture callback gathers 10 ms chunks
//! in a fixed array, denoises each (krisp-dsp in `Framing::Chunked` mode, so no extra framing
//! latency) and hands the result to the output ([`Sink`]): an SPSC ring (ringbuf, sized at
//! start) for the PulseAudio virtual microphone, or the shared-memory ring a driver reads
//! (krisp-vdev's `RingFeed`: drift-steered resampling into preallocated buffers, atomics).
//! Trouble is counted in atomics of [`StatsInner`]; the control thread reads and reports it.
//! `Instant::now()` and `monotonic_ns()` read the monotonic clock through the vDSO, not a
//! system call.
//!
//! With the PulseAudio output, the I/O thread that feeds the virtual device (`writer.rs`) is
//! the other end of the ringbuf; it plays the part a driver would and may block in the audio
//! server's socket. With the shared ring, the other end is the driver (or a test's reader).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::direct::DirectOut;
use crate::pipe::PipeOut;
use crate::stats::StatsInner;
use crate::steer::SteeredQueue;
use krisp_dsp::SwapReceiver;
use krisp_vdev::shm::{RingFeed, monotonic_ns};

/// Samples per processing chunk (10 ms at 48 kHz).
pub(crate) const CHUNK: usize = 480;

/// Where the denoised audio goes.
pub(crate) enum Sink {
    /// The ringbuf the PulseAudio feeder thread drains, behind drift steering (boxed: it
    /// carries the resampler).
    Queue(Box<SteeredQueue>),
    /// The shared-memory ring a driver reads (boxed: it carries the resampler).
    Ring(Box<RingFeed>),
    /// The FIFO of the pipe-source "Krisp Microphone" (`pipe.rs`): chunks are queued here and
    /// written by the capture I/O thread after each block.
    Pipe(Box<PipeOut>),
}

/// Capture callback state.
pub(crate) struct CaptureSide {
    pub sink: Sink,
    /// The denoiser, and a model change offered by the control thread (crossfaded in).
    pub denoiser: SwapReceiver,
    pub stats: Arc<StatsInner>,
    pub inbuf: [f32; CHUNK],
    pub outbuf: [f32; CHUNK],
    pub fill: usize,
    /// With the PulseAudio output: the chunks the capture I/O thread writes straight into
    /// the virtual device while it does (`direct.rs`), instead of the queue to the feeder.
    pub direct: DirectOut,
}

impl CaptureSide {
    pub fn new(sink: Sink, denoiser: SwapReceiver, stats: Arc<StatsInner>) -> Self {
        CaptureSide {
            sink,
            denoiser,
            stats,
            inbuf: [0.0; CHUNK],
            outbuf: [0.0; CHUNK],
            fill: 0,
            direct: DirectOut::new(),
        }
    }

    /// The pipe source's writer, when that is the output.
    pub fn pipe(&mut self) -> Option<&mut PipeOut> {
        match &mut self.sink {
            Sink::Pipe(p) => Some(p),
            _ => None,
        }
    }

    /// No microphone at the moment: tell a driver reading the shared ring that the app is
    /// alive (it plays silence either way, but does not count the app as gone).
    pub fn idle_heartbeat(&mut self) {
        if let Sink::Ring(feed) = &mut self.sink {
            feed.heartbeat();
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
        // Someone to hear it? For the shared ring the feed tells from the reader's clock, here
        // on the realtime thread, so a driver that starts IO hears the voice within a block or
        // two however late the control thread runs.
        let listening = match &self.sink {
            Sink::Queue(_) | Sink::Pipe(_) => self.stats.listeners.load(Ordering::Relaxed),
            Sink::Ring(feed) => {
                let playing = feed.reader_playing();
                self.stats.listeners.store(playing, Ordering::Relaxed);
                playing
            }
        };
        if listening {
            let _ = self.denoiser.process(&self.inbuf, &mut self.outbuf);
        } else {
            // Nobody records from the virtual mic: skip the model, keep the clock going, and
            // still meter the microphone (a window shows it while the user sets up).
            self.outbuf.fill(0.0);
            // Nothing to crossfade: a model change offered meanwhile takes over at once.
            self.denoiser.poll();
            let sq: f32 = self.inbuf.iter().map(|x| x * x).sum();
            let rms = (sq / CHUNK as f32).sqrt();
            self.stats
                .idle_input_rms
                .store(rms.to_bits(), Ordering::Relaxed);
        }
        match &mut self.sink {
            Sink::Queue(_) if self.direct.on => {
                let (dropped, inserted) = (self.direct.dropped, self.direct.inserted);
                if !self.direct.push(&self.outbuf) {
                    self.stats.overruns.fetch_add(1, Ordering::Relaxed);
                }
                self.stats
                    .drift_dropped
                    .fetch_add(self.direct.dropped - dropped, Ordering::Relaxed);
                self.stats
                    .drift_inserted
                    .fetch_add(self.direct.inserted - inserted, Ordering::Relaxed);
            }
            Sink::Queue(q) => {
                if !q.push(&self.outbuf, &self.stats, monotonic_ns()) {
                    self.stats.overruns.fetch_add(1, Ordering::Relaxed);
                }
                if q.steering() {
                    self.stats
                        .drift_ppm
                        .store(((q.ratio() - 1.0) * 1e6).round() as i64, Ordering::Relaxed);
                }
            }
            // Nobody records: nothing to write (the FIFO would only fill with stale audio).
            Sink::Pipe(p) => {
                if listening && !p.push(&self.outbuf) {
                    self.stats.overruns.fetch_add(1, Ordering::Relaxed);
                }
            }
            Sink::Ring(feed) => {
                // A full shared ring means no reader plays (or it stalled): the feed counts
                // the drop in the ring's header, where the driver looks for it.
                let (skipped, trimmed) = (feed.skipped_frames(), feed.trimmed_frames());
                feed.push(&self.outbuf, monotonic_ns());
                if feed.skipped_frames() != skipped {
                    // Catching up after a stall with the ring at its latency bound.
                    self.stats.overruns.fetch_add(1, Ordering::Relaxed);
                }
                // A quiet block left out to shed excess latency.
                self.stats
                    .drift_dropped
                    .fetch_add(feed.trimmed_frames() - trimmed, Ordering::Relaxed);
                self.stats.ring_fill.store(feed.fill(), Ordering::Relaxed);
                self.stats.drift_ppm.store(
                    ((feed.ratio() - 1.0) * 1e6).round() as i64,
                    Ordering::Relaxed,
                );
            }
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
    use krisp_dsp::{Config, Denoiser, Framing, Model, swap_channel};
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
        let (mut swap, rt) = swap_channel(dn);
        let mut side = CaptureSide::new(
            Sink::Queue(Box::new(SteeredQueue::new(prod, true))),
            rt,
            stats.clone(),
        );
        let block: Vec<f32> = (0..479).map(|i| (i as f32 * 0.05).sin() * 0.2).collect();
        let mut sink = vec![0.0f32; 4_800];
        let mut run = |from: usize, to: usize| {
            assert_no_alloc(|| {
                for i in from..to {
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
            })
        };
        run(0, 50);
        // A model change offered by the control thread is crossfaded in on this thread.
        let next = Denoiser::with_handle(&cfg, &Model::builtin(), handle.clone()).unwrap();
        assert!(swap.offer(next).is_ok());
        run(50, 400);
        assert!(
            swap.collect(),
            "the old denoiser came back to be freed off this thread"
        );
        assert!(stats.processed_frames.load(Ordering::Relaxed) > 40_000);
        assert!(
            stats.overruns.load(Ordering::Relaxed) > 0,
            "the full ring was exercised"
        );
    }

    #[test]
    fn the_io_threads_per_block_work_never_allocates() {
        use crate::writer::{JitterBuffer, Writer};
        use std::sync::atomic::AtomicBool;
        // Capture thread: server blocks of any size, converted and handed on 480 at a time;
        // feeder thread: one 480-frame period at a time from the ring, through the jitter
        // buffer, including priming, drops and running dry.
        let (prod, cons) = HeapRb::<f32>::new(24_000).split();
        let stats = Arc::new(StatsInner::default());
        stats.listeners.store(true, Ordering::Relaxed);
        let mut cfg = Config::new(48_000, 1);
        cfg.framing = Framing::Chunked;
        let dn = Denoiser::new(&cfg, &Model::builtin()).unwrap();
        let (_swap, rt) = swap_channel(dn);
        let mut side = CaptureSide::new(
            Sink::Queue(Box::new(SteeredQueue::new(prod, true))),
            rt,
            stats.clone(),
        );
        let mut writer = Writer {
            cons,
            stats: stats.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            failed: Arc::new(AtomicBool::new(false)),
            jitter: JitterBuffer::new(600, 1_920, CHUNK),
            max_device_buffer: 2_304,
        };
        let block: Vec<u8> = (0..2_000)
            .flat_map(|i| ((i as f32 * 0.05).sin() * 0.2).to_le_bytes())
            .collect();
        let mut cbuf = vec![0.0f32; CHUNK];
        let (mut wbuf, mut wbytes) = (vec![0.0f32; CHUNK], vec![0u8; CHUNK * 4]);
        assert_no_alloc(|| {
            for i in 0..600 {
                let frames = [480, 128, 1_000, 7, 2_000][i % 5];
                crate::capture::deliver(&block[..frames * 4], &mut cbuf, &mut side);
                // The feeder runs a little slower, then stalls, then catches up.
                let writes = if (300..350).contains(&i) { 0 } else { 2 };
                for _ in 0..writes {
                    writer.next_period(&mut wbuf, &mut wbytes);
                }
            }
        });
        assert!(stats.processed_frames.load(Ordering::Relaxed) > 300_000);
        assert!(
            stats.underruns.load(Ordering::Relaxed) + stats.drift_dropped.load(Ordering::Relaxed)
                > 0
        );
    }

    #[test]
    fn the_direct_feeds_realtime_part_never_allocates_even_when_it_splices_or_overflows() {
        let (prod, _cons) = HeapRb::<f32>::new(4_800).split();
        let stats = Arc::new(StatsInner::default());
        stats.listeners.store(true, Ordering::Relaxed);
        let mut cfg = Config::new(48_000, 1);
        cfg.framing = Framing::Chunked;
        let dn = Denoiser::new(&cfg, &Model::builtin()).unwrap();
        let (_swap, rt) = swap_channel(dn);
        let mut side = CaptureSide::new(
            Sink::Queue(Box::new(SteeredQueue::new(prod, false))),
            rt,
            stats.clone(),
        );
        side.direct.on = true;
        // Quiet noise (the splices happen in quiet chunks) with a louder burst now and then.
        let block: Vec<f32> = (0..2_000)
            .map(|i| (i as f32 * 0.37).sin() * if i % 700 < 100 { 0.3 } else { 0.001 })
            .collect();
        let mut written = 0;
        assert_no_alloc(|| {
            for i in 0..1_500 {
                if i % 100 == 0 {
                    side.direct.pending = if i % 200 == 0 { 200 } else { -200 };
                }
                side.on_data(&block[..[480, 128, 2_000, 7][i % 4]]);
                // The I/O thread writes and empties the queue, except during a stall.
                if !(600..700).contains(&i) {
                    written += side.direct.out.len();
                    side.direct.out.clear();
                }
            }
        });
        assert!(stats.drift_dropped.load(Ordering::Relaxed) >= 400);
        assert!(stats.drift_inserted.load(Ordering::Relaxed) >= 400);
        assert!(
            stats.overruns.load(Ordering::Relaxed) > 0,
            "the stall overflowed it"
        );
        assert!(written > 700_000, "{written}");
    }

    #[test]
    fn shared_ring_output_never_allocates_with_or_without_a_reader() {
        use krisp_vdev::shm::{ReaderState, RingConfig, RingFeed, heap_pair};
        let (writer, mut reader) = heap_pair(&RingConfig::new("/rt-test")).unwrap();
        let feed = RingFeed::new(writer, CHUNK).unwrap();
        let monitor = feed.monitor();
        let stats = Arc::new(StatsInner::default());
        stats.listeners.store(true, Ordering::Relaxed);
        let mut cfg = Config::new(48_000, 1);
        cfg.framing = Framing::Chunked;
        let dn = Denoiser::new(&cfg, &Model::builtin()).unwrap();
        let (_swap, rt) = swap_channel(dn);
        let mut side = CaptureSide::new(Sink::Ring(Box::new(feed)), rt, stats.clone());
        let block: Vec<f32> = (0..480).map(|i| (i as f32 * 0.05).sin() * 0.2).collect();
        let mut out = vec![0.0f32; 512];
        let mut played = 0;
        assert_no_alloc(|| {
            // 8 s of 128-frame captures; the "driver" reads 512-frame periods at the same
            // rate, except between 3 s and 5 s, when it stops (ring fills, writer drops).
            let mut owed = 0usize;
            for i in 0..3_000 {
                side.on_data(&block[..128]);
                if i % 500 == 0 {
                    side.idle_heartbeat();
                }
                owed += 128;
                let t = i * 128 / 48_000;
                while owed >= 512 {
                    owed -= 512;
                    if !(3..5).contains(&t) && reader.read(&mut out).state == ReaderState::Playing {
                        played += 1;
                    }
                }
            }
        });
        let c = monitor.snapshot();
        assert!(played > 400, "the reader played {played} periods");
        assert!(c.writer_dropped_frames > 0, "the full ring was exercised");
        assert!(
            reader.stats().resyncs >= 2,
            "the reader discarded the stale queue after the stop"
        );
        assert!(stats.processed_frames.load(Ordering::Relaxed) >= 383_000);
    }
}
