//! The app's end of the ring as the product runs it: a [`RingWriter`] behind a small
//! resampler whose ratio the [`DriftController`] steers, so the ring's fill stays at its target
//! although the microphone's clock (which paces the app) and the device's clock (which paces
//! the driver) differ by a few hundred ppm. `drivers/PROTOCOL.md`, "Clock drift".
//!
//! Realtime rules as for the writer: [`RingFeed::push`] and [`RingFeed::heartbeat`] do not
//! allocate, lock, log or make system calls (rubato's `process_into_buffer` with buffers
//! made in [`RingFeed::new`] does not allocate).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Adjustable, Async, Resampler};

use super::{DriftController, RingMonitor, RingWriter, ShmError};

/// Peak below which a block may be left out unheard to shed excess latency (-46 dBFS).
const QUIET: f32 = 0.005;

/// A [`RingWriter`] fed fixed-size blocks through a drift-steered resampler.
pub struct RingFeed {
    writer: RingWriter,
    drift: DriftController,
    resampler: Async<f32>,
    block: usize,
    channels: usize,
    out: Vec<f32>,
    last_reader_beat: u64,
    idle_blocks: u32,
    idle_limit: u32,
    last_resyncs: u64,
    /// False after a (re)start of the reader until it plays (its read index moves): while it
    /// prefills, a low fill is expected and says nothing about the clocks.
    settled: bool,
    /// The reader's index when it was last seen standing still while unsettled.
    prefill_r: Option<u64>,
    ratio: f64,
    /// Latency bound of the ring: blocks arriving while the fill is at or above it are skipped.
    max_fill: u64,
    skipped_frames: u64,
    /// Fill to steer to, and the excess over it (two blocks) past which quiet blocks are shed.
    target: u64,
    trimmed_frames: u64,
}

impl RingFeed {
    /// Wraps `writer`; every [`push`](Self::push) then takes exactly `block_frames` frames.
    pub fn new(writer: RingWriter, block_frames: usize) -> Result<Self, ShmError> {
        let h = writer.header();
        if block_frames == 0 || block_frames >= h.capacity_frames as usize {
            return Err(ShmError::InvalidConfig {
                what: "feed block must be 1 frame to less than the ring's capacity",
            });
        }
        let channels = h.channels as usize;
        let drift = DriftController::new(h.sample_rate, h.target_fill_frames);
        let resampler = drift
            .resampler(block_frames, channels)
            .ok_or(ShmError::InvalidConfig {
                what: "the resampler refused the block size",
            })?;
        let out = vec![0.0; resampler.output_frames_max() * channels];
        // The reader counts as gone when its clock has not moved for ~250 ms.
        let idle_limit = (h.sample_rate as usize / 4 / block_frames).max(2) as u32;
        let last_resyncs = writer.reader_counters().2;
        Ok(Self {
            last_reader_beat: writer.reader_heartbeat(),
            writer,
            drift,
            resampler,
            block: block_frames,
            channels,
            out,
            idle_blocks: idle_limit + 1,
            idle_limit,
            last_resyncs,
            settled: false,
            prefill_r: None,
            ratio: 1.0,
            max_fill: u64::from(h.max_fill_frames),
            skipped_frames: 0,
            target: u64::from(h.target_fill_frames),
            trimmed_frames: 0,
        })
    }

    /// Resamples one block of exactly `block_frames` interleaved frames by the steered ratio,
    /// writes it (dropping and counting what does not fit) and publishes the clock anchor
    /// "the last frame written was captured at `host_ns`" (writer's monotonic clock). Returns
    /// the frames accepted into the ring; a block of the wrong size is refused (0).
    ///
    /// A block that arrives while a reader plays and the ring already holds `max_fill` frames
    /// or more is skipped (counted in [`skipped_frames`](Self::skipped_frames)): the app is
    /// catching up after a stall, and the reader would drop that much as overrun anyway.
    /// Writing it could fill the ring, and a full ring makes the reader discard everything
    /// queued and prefill again: a second, longer gap after the first. While no reader plays
    /// the ring fills and drops as the protocol says, so a returning reader never plays stale
    /// audio.
    ///
    /// Excess latency is shed where nobody hears it: while a reader plays and the low-passed
    /// fill stays more than two blocks above the target (late audio that arrived in a burst,
    /// which the clock steering alone would drain at only 1000 ppm), a block whose peak is
    /// below -46 dBFS is left out (counted in [`trimmed_frames`](Self::trimmed_frames)) and the
    /// steering starts afresh. Audible blocks are never left out for latency. Realtime-safe.
    pub fn push(&mut self, block: &[f32], host_ns: u64) -> usize {
        if block.len() != self.block * self.channels {
            self.writer.heartbeat();
            return 0;
        }
        self.ratio = self.steer();
        if self.reader_playing() && self.writer.fill() >= self.max_fill {
            self.skipped_frames += self.block as u64;
            self.writer.heartbeat();
            return 0;
        }
        if self.settled
            && self.reader_playing()
            && self.drift.filtered_fill() > (self.target + 2 * self.block as u64) as f64
            && block.iter().all(|s| s.abs() < QUIET)
        {
            self.trimmed_frames += self.block as u64;
            self.drift.reset();
            self.ratio = 1.0;
            self.writer.heartbeat();
            return 0;
        }
        // Within the bounds given at construction, so this cannot fail.
        let _ = self.resampler.set_resample_ratio_relative(self.ratio, true);
        let out_frames = self.out.len() / self.channels;
        let (Ok(input), Ok(mut output)) = (
            InterleavedSlice::new(block, self.channels, self.block),
            InterleavedSlice::new_mut(&mut self.out, self.channels, out_frames),
        ) else {
            self.writer.heartbeat();
            return 0;
        };
        let produced = match self
            .resampler
            .process_into_buffer(&input, &mut output, None)
        {
            Ok((_, produced)) => produced,
            Err(_) => 0,
        };
        let accepted = self.writer.write(&self.out[..produced * self.channels]);
        self.writer
            .publish_anchor(self.writer.write_index(), host_ns);
        accepted
    }

    /// The ratio for this block: 1 while no reader plays or it is still prefilling, else the
    /// drift controller's answer to the current fill.
    fn steer(&mut self) -> f64 {
        let beat = self.writer.reader_heartbeat();
        if beat != self.last_reader_beat {
            self.last_reader_beat = beat;
            self.idle_blocks = 0;
        } else {
            self.idle_blocks = self.idle_blocks.saturating_add(1);
        }
        let resyncs = self.writer.reader_counters().2;
        if resyncs != self.last_resyncs || self.idle_blocks > self.idle_limit {
            // A reader (re)started, or none plays: the history is meaningless.
            self.last_resyncs = resyncs;
            self.drift.reset();
            self.settled = false;
            self.prefill_r = None;
            return 1.0;
        }
        let fill = self.writer.fill();
        if !self.settled {
            let r = self.writer.write_index().wrapping_sub(fill);
            match self.prefill_r {
                Some(r0) if r0 != r => self.settled = true,
                _ => {
                    self.prefill_r = Some(r);
                    return 1.0;
                }
            }
        }
        self.drift.update(fill, self.block as u32)
    }

    /// Signals "alive" without audio (no microphone at the moment). Realtime-safe.
    pub fn heartbeat(&mut self) {
        self.writer.heartbeat();
    }

    /// The relative resampling ratio applied to the last block (1.0 = nominal).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Whether a reader has played within the last ~250 ms (as of the last push).
    /// Realtime-safe.
    pub fn reader_playing(&self) -> bool {
        self.idle_blocks <= self.idle_limit
    }

    /// Frames of blocks skipped because the ring was at its latency bound while a reader
    /// played (see [`push`](Self::push)).
    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }

    /// Frames of quiet blocks left out to shed excess latency (see [`push`](Self::push)).
    pub fn trimmed_frames(&self) -> u64 {
        self.trimmed_frames
    }

    /// Frames queued in the ring. Realtime-safe.
    pub fn fill(&self) -> u64 {
        self.writer.fill()
    }

    /// Frames of delay the resampler adds.
    pub fn delay_frames(&self) -> usize {
        self.resampler.output_delay()
    }

    /// The ring writer.
    pub fn writer(&self) -> &RingWriter {
        &self.writer
    }

    /// A read-only view of the ring's counters for a control thread.
    pub fn monitor(&self) -> RingMonitor {
        self.writer.monitor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{ReaderState, RingConfig, heap_pair};

    /// The app pushes 480-frame blocks on its clock, the reader reads `period`-frame periods on
    /// a clock `ppm` faster; returns (fill range and mean ratio over the last half, reader
    /// stats).
    fn run(ppm: f64, period: usize, seconds: f64) -> ((u64, u64), f64, crate::shm::ReaderStats) {
        let cfg = RingConfig::new("/feed-test");
        let (w, mut r) = heap_pair(&cfg).unwrap();
        let mut feed = RingFeed::new(w, 480).unwrap();
        let block: Vec<f32> = (0..480).map(|i| (i as f32 * 0.01).sin() * 0.1).collect();
        let mut out = vec![0.0; period];
        let (mut tw, mut tr) = (0.0f64, 0.0f64);
        let (mut lo, mut hi) = (u64::MAX, 0);
        let (mut sum, mut n) = (0.0, 0.0);
        while tw < seconds {
            if tw <= tr {
                feed.push(&block, (tw * 1e9) as u64);
                if tw > seconds / 2.0 {
                    sum += feed.ratio();
                    n += 1.0;
                }
                tw += 480.0 / 48_000.0;
            } else {
                let rep = r.read(&mut out);
                tr += period as f64 / (48_000.0 * (1.0 + ppm * 1e-6));
                if tr > seconds / 2.0 && rep.state == ReaderState::Playing {
                    lo = lo.min(rep.fill_before);
                    hi = hi.max(rep.fill_before);
                }
            }
        }
        ((lo, hi), sum / n, r.stats())
    }

    #[test]
    fn steering_keeps_the_fill_near_target_against_a_fast_or_slow_device() {
        // Periods of 480 right after each write leave the fill the writer sees below the
        // target all the time (the reader prefilled to 1440, then takes 480 per write): the
        // steering must engage anyway.
        for (ppm, period) in [(-300.0, 512), (300.0, 512), (-300.0, 480), (300.0, 480)] {
            let ((lo, hi), ratio, st) = run(ppm, period, 120.0);
            assert!(lo > 256 && hi < 2048, "ppm {ppm}/{period}: fill {lo}..{hi}");
            // The fill the writer sees depends on the phase of the two block clocks, which
            // beats slowly when the blocks are equal; so the mean is only within 100 ppm of the
            // true offset (unsteered it would be the whole 300 ppm off, and run away).
            assert!(
                (ratio - (1.0 + ppm * 1e-6)).abs() < 1e-4,
                "ppm {ppm}/{period}: mean ratio {ratio}"
            );
            // After the start-up prefill the stream never broke.
            assert_eq!(st.overrun_frames, 0, "ppm {ppm}: {st:?}");
            assert_eq!(st.resyncs, 1, "ppm {ppm}: {st:?}");
        }
    }

    #[test]
    fn without_a_reader_the_ratio_stays_nominal_and_the_anchor_follows_the_writes() {
        let cfg = RingConfig::new("/feed-test");
        let (w, r) = heap_pair(&cfg).unwrap();
        let mut feed = RingFeed::new(w, 480).unwrap();
        let block = vec![0.1f32; 480];
        for k in 0..200u64 {
            feed.push(&block, 1_000 + k);
            assert_eq!(feed.ratio(), 1.0);
        }
        assert!(!feed.reader_playing());
        // The ring filled up; the rest was dropped and counted, never overwritten.
        assert_eq!(feed.fill(), u64::from(cfg.capacity_frames));
        assert!(feed.writer().stats().dropped_frames > 0);
        let (frame, ns) = r.anchor().expect("anchor published");
        assert_eq!(frame, feed.writer().write_index());
        assert_eq!(ns, 1_199);
        assert_eq!(feed.monitor().snapshot().fill, feed.fill());
    }

    #[test]
    fn a_burst_after_an_app_stall_costs_one_gap_not_a_resync() {
        let cfg = RingConfig::new("/feed-test");
        let (w, mut r) = heap_pair(&cfg).unwrap();
        let mut feed = RingFeed::new(w, 480).unwrap();
        let block = vec![0.1f32; 480];
        let mut out = vec![0.0; 480];
        // Steady: one block per read.
        for _ in 0..300 {
            feed.push(&block, 0);
            r.read(&mut out);
        }
        let before = r.stats();
        // The app stalls for 180 ms (the reader keeps playing: underrun; less than the 200 ms
        // after which the writer would count as gone), then catches up with 18 blocks at once:
        // 8640 frames, more than the ring's 8192.
        for _ in 0..18 {
            r.read(&mut out);
        }
        for _ in 0..18 {
            feed.push(&block, 0);
        }
        for _ in 0..300 {
            feed.push(&block, 0);
            r.read(&mut out);
        }
        let after = r.stats();
        assert_eq!(after.resyncs, before.resyncs, "{after:?}");
        assert_eq!(feed.writer().stats().dropped_frames, 0);
        assert!(feed.skipped_frames() > 0);
        // The reader skipped the excess once, and played on.
        assert!(after.overrun_frames > before.overrun_frames, "{after:?}");
        assert_eq!(after.writer_gone_events, 0);
    }

    #[test]
    fn excess_latency_is_shed_in_quiet_blocks_only() {
        let cfg = RingConfig::new("/feed-test");
        let (w, mut r) = heap_pair(&cfg).unwrap();
        let mut feed = RingFeed::new(w, 480).unwrap();
        let loud = vec![0.2f32; 480];
        let quiet = vec![0.001f32; 480];
        let mut out = vec![0.0; 480];
        let mut fill = 0;
        for _ in 0..300 {
            feed.push(&loud, 0);
            fill = r.read(&mut out).fill_before;
        }
        assert!(fill < 2_000, "settled at {fill}");
        // Late audio arrives in a burst: 3 extra blocks, below the latency bound.
        for _ in 0..3 {
            feed.push(&loud, 0);
        }
        // Loud audio: nothing is left out, the fill stays up (the steering drains it slowly).
        for _ in 0..200 {
            feed.push(&loud, 0);
            fill = r.read(&mut out).fill_before;
        }
        assert_eq!(feed.trimmed_frames(), 0);
        assert!(fill > 2_200, "fill {fill}");
        // A pause: quiet blocks are left out until the excess is gone.
        for _ in 0..100 {
            feed.push(&quiet, 0);
            fill = r.read(&mut out).fill_before;
        }
        assert!(feed.trimmed_frames() >= 480, "{}", feed.trimmed_frames());
        assert!(fill <= 1024 + 2 * 480 + 480, "fill {fill}");
        let st = r.stats();
        assert_eq!((st.resyncs, st.overrun_frames), (1, 0), "{st:?}");
        assert_eq!(st.underrun_frames, 0, "{st:?}");
    }

    #[test]
    fn blocks_of_the_wrong_size_are_refused() {
        let (w, _r) = heap_pair(&RingConfig::new("/feed-test")).unwrap();
        let mut feed = RingFeed::new(w, 480).unwrap();
        assert_eq!(feed.push(&[0.0; 479], 0), 0);
        assert_eq!(feed.fill(), 0);
        let (w, _r) = heap_pair(&RingConfig::new("/feed-test")).unwrap();
        assert!(RingFeed::new(w, 0).is_err());
    }
}
