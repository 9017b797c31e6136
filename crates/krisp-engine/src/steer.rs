//! Clock-drift steering for the virtual microphone's queue.
//!
//! The microphone's clock paces the capture side, the audio server's clock paces the feeder
//! (`writer.rs`): two crystals, typically 10–200 ppm apart. Left alone the queue between
//! them gains or loses ~10 samples a second at 200 ppm, so latency creeps up (120 ms in ten
//! minutes) or the queue runs dry every minute or so. The jitter buffer's quiet-sample trim
//! could only shed excess where the output is below -46 dBFS, which denoised speech in steady
//! noise rarely is (measured: latency walked up by 6 ms before a trim took back 15 ms), and
//! could not add samples at all.
//!
//! So, as for the drivers' shared ring (krisp-vdev's `RingFeed`), the capture side resamples
//! each block by a ratio within 1 ± 0.001 that a [`DriftController`] steers from the queue's
//! fill. The setpoint is the fill the queue settles at after the jitter buffer primed (its
//! mean over the second second), so the jitter buffer keeps deciding how much margin there is
//! (it grows after underruns and primes again; the setpoint is taken afresh each time) and the
//! steering only keeps that margin from walking away.
//!
//! Realtime: [`SteeredQueue::push`] does arithmetic, rubato's `process_into_buffer` into a
//! buffer made in [`SteeredQueue::new`], and a ringbuf push: no allocation, lock or system
//! call (covered by the no-alloc tests in `rt.rs`).

use std::sync::atomic::Ordering;

use krisp_vdev::shm::DriftController;
use ringbuf::HeapProd;
use ringbuf::traits::{Observer, Producer};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Adjustable, Async, Resampler};

use crate::rt::CHUNK;
use crate::stats::StatsInner;

/// Frames after priming before the fill counts (the first second settles).
const SETTLE: usize = 48_000;
/// Frames after priming by which the setpoint is taken (the mean fill of the second second).
const LATCH: usize = 96_000;

/// The capture side's end of the queue to the feeder, with drift-steered resampling.
pub(crate) struct SteeredQueue {
    prod: HeapProd<f32>,
    resampler: Async<f32>,
    out: Vec<f32>,
    drift: Option<DriftController>,
    epoch: u64,
    since_prime: usize,
    sum: f64,
    count: u32,
    ratio: f64,
    /// Whether the fill has strayed past [`DEADBAND`] since the setpoint was taken: until
    /// then blocks pass untouched (bit-exact; two clocks that agree never resample).
    engaged: bool,
    setpoint: f64,
    enabled: bool,
}

/// How far (frames, 1 ms) the fill may stray from its setpoint before resampling starts.
/// Interpolating at a fractional position softens the top octave a little (measured: the
/// pass-through after `krisp off` fell from bit-exact to ~21 dB SI-SDR against the
/// microphone with equal clocks), so it is only paid for when the clocks really differ.
const DEADBAND: f64 = 48.0;
/// A steered ratio this close to 1 (50 ppm, about twice the controller's own jitter) counts as
/// "nothing to correct" once the fill is back near its setpoint.
const IDLE_PPM: f64 = 50e-6;

impl SteeredQueue {
    /// Wraps the queue's producer; every [`push`](Self::push) takes one `CHUNK`. Disabled,
    /// blocks always pass untouched.
    pub fn new(prod: HeapProd<f32>, enabled: bool) -> Self {
        // The same resampler as the drivers' ring feed (krisp-vdev's RingFeed).
        let resampler = DriftController::new(48_000, 0)
            .resampler(CHUNK, 1)
            .expect("a 480-frame mono polynomial resampler is a valid configuration");
        let out = vec![0.0; resampler.output_frames_max()];
        SteeredQueue {
            prod,
            resampler,
            out,
            drift: None,
            epoch: 0,
            since_prime: 0,
            sum: 0.0,
            count: 0,
            ratio: 1.0,
            engaged: false,
            setpoint: 0.0,
            enabled,
        }
    }

    /// Whether drift steering is on at all (`EngineConfig::drift_steering`).
    pub fn steering(&self) -> bool {
        self.enabled
    }

    /// The ratio applied to the last block (1.0 = nominal).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Resamples one block by the steered ratio into the queue; returns false when the queue
    /// had no room for all of it (an overrun: the feeder is stuck). Realtime-safe.
    ///
    /// The fill it steers on is the queue's fill as if the feeder drained it continuously:
    /// the frames queued minus those the feeder has been due to take since its last write
    /// (`now_ns` against `StatsInner::last_pop_ns`, both on the monotonic clock). The queue is
    /// drained in whole periods, so its plain fill stays constant while the two clocks' phase
    /// slides, and then jumps by a period; only the time since the last write shows the slide.
    pub fn push(&mut self, block: &[f32; CHUNK], stats: &StatsInner, now_ns: u64) -> bool {
        if !self.enabled {
            return self.prod.push_slice(block) == CHUNK;
        }
        let epoch = stats.prime_epoch.load(Ordering::Relaxed);
        if epoch != self.epoch || !stats.listeners.load(Ordering::Relaxed) {
            // The feeder primed again (start, a recorder attached, the jitter buffer grew) or
            // idles: the old setpoint means nothing.
            self.epoch = epoch;
            self.drift = None;
            self.since_prime = 0;
            self.sum = 0.0;
            self.count = 0;
            self.ratio = 1.0;
            self.engaged = false;
        }
        let since_pop = now_ns.saturating_sub(stats.last_pop_ns.load(Ordering::Relaxed));
        // At most two periods' worth: a feeder that stalls is not extrapolated.
        let due = (since_pop as f64 * 48e-6).min(2.0 * CHUNK as f64);
        let fill = (self.prod.occupied_len() as f64 + 2.0 * CHUNK as f64 - due).max(0.0);
        self.since_prime = self.since_prime.saturating_add(CHUNK);
        match &mut self.drift {
            Some(d) => {
                let ratio = d.update(fill.round() as u64, CHUNK as u32);
                let off = (d.filtered_fill() - self.setpoint).abs();
                if !self.engaged && off > DEADBAND {
                    // Start from a clean history: the blocks that passed untouched meanwhile
                    // are not in the resampler's.
                    self.resampler.reset();
                    self.engaged = true;
                } else if self.engaged && off < DEADBAND / 4.0 && (ratio - 1.0).abs() < IDLE_PPM {
                    // Back at the setpoint and the controller asks for (almost) nothing: the
                    // clocks agree after all (a transient moved the fill). Untouched blocks
                    // again, so a pass-through stays bit-exact; real drift moves the fill out
                    // of the band again and re-engages with what the controller learnt.
                    self.engaged = false;
                }
                self.ratio = if self.engaged { ratio } else { 1.0 };
            }
            None if self.since_prime > SETTLE => {
                self.sum += fill;
                self.count += 1;
                if self.since_prime >= LATCH {
                    let setpoint = (self.sum / f64::from(self.count)).round() as u32;
                    self.drift = Some(DriftController::new(48_000, setpoint));
                    self.setpoint = f64::from(setpoint);
                }
            }
            None => {}
        }
        if !self.engaged {
            return self.prod.push_slice(block) == CHUNK;
        }
        // Within the bounds given at construction, so this cannot fail.
        let _ = self.resampler.set_resample_ratio_relative(self.ratio, true);
        let out_len = self.out.len();
        let (Ok(input), Ok(mut output)) = (
            InterleavedSlice::new(&block[..], 1, CHUNK),
            InterleavedSlice::new_mut(&mut self.out, 1, out_len),
        ) else {
            return self.prod.push_slice(block) == CHUNK;
        };
        let produced = match self
            .resampler
            .process_into_buffer(&input, &mut output, None)
        {
            Ok((_, produced)) => produced,
            Err(_) => 0,
        };
        self.prod.push_slice(&self.out[..produced]) == produced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbuf::HeapRb;
    use ringbuf::traits::{Consumer, Split};
    use std::sync::atomic::Ordering;

    /// A capture clock `ppm` faster than the feeder's: the producer pushes a block every
    /// 10 ms of *its* clock, the consumer pops 480 frames every 10 ms of its own. Returns the
    /// queue's latency in frames (its fill before each push, plus what the consumer has been
    /// due to take since its last pop: the audio's age, not the saw-tooth of whole periods)
    /// over the run's last minute, and the final ratio.
    fn run(ppm: f64, seconds: f64) -> (usize, usize, f64) {
        run_with(ppm, seconds, None).0
    }

    /// As [`run`], with the consumer skipping its pops for a stretch `(from, secs)`; also
    /// returns how many pushes were resampled in the last 30 s and in all.
    fn run_with(
        ppm: f64,
        seconds: f64,
        stall: Option<(f64, f64)>,
    ) -> ((usize, usize, f64), usize, usize) {
        let (prod, mut cons) = HeapRb::<f32>::new(48_000).split();
        let stats = StatsInner::default();
        stats.listeners.store(true, Ordering::Relaxed);
        stats.prime_epoch.store(1, Ordering::Relaxed);
        let mut q = SteeredQueue::new(prod, true);
        let block = [0.1f32; CHUNK];
        // Prime at 600 frames as the jitter buffer does.
        let mut buf = [0.0f32; CHUNK];
        let (mut t_push, mut t_pop) = (0.0f64, 0.005f64);
        let push_dt = 0.01 / (1.0 + ppm * 1e-6);
        let (mut lo, mut hi) = (usize::MAX, 0);
        let mut primed = false;
        let mut last_pop = 0.0;
        let (mut resampled, mut engaged) = (0, 0);
        while t_push < seconds {
            if t_push <= t_pop {
                if t_push > seconds - 60.0 {
                    let f = cons.occupied_len() + CHUNK - ((t_push - last_pop) * 48_000.0) as usize;
                    lo = lo.min(f);
                    hi = hi.max(f);
                }
                assert!(q.push(&block, &stats, (t_push * 1e9) as u64), "overrun");
                if q.engaged {
                    engaged += 1;
                    if t_push > seconds - 30.0 {
                        resampled += 1;
                    }
                }
                t_push += push_dt;
            } else {
                if !primed && cons.occupied_len() >= 600 {
                    primed = true;
                }
                let stalled =
                    stall.is_some_and(|(from, secs)| (from..from + secs).contains(&t_pop));
                if primed && !stalled {
                    stats
                        .last_pop_ns
                        .store((t_pop * 1e9) as u64, Ordering::Relaxed);
                    last_pop = t_pop;
                    let got = cons.pop_slice(&mut buf);
                    assert_eq!(got, CHUNK, "ran dry at {t_pop:.2} s (ppm {ppm})");
                }
                t_pop += 0.01;
            }
        }
        ((lo, hi, q.ratio()), resampled, engaged)
    }

    #[test]
    fn after_a_transient_with_agreeing_clocks_blocks_pass_untouched_again() {
        // The consumer stalls for 30 ms at 20 s: the fill jumps by 1,440 frames and steering
        // engages to bring it back; with equal clocks it must then let go.
        let ((lo, hi, ratio), resampled, engaged) = run_with(0.0, 150.0, Some((20.0, 0.03)));
        assert!(engaged > 100, "the transient engaged it ({engaged} blocks)");
        assert_eq!(
            resampled, 0,
            "still resampling in the last 30 s (fill {lo}..{hi})"
        );
        assert_eq!(ratio, 1.0);
        // A real drift after the same transient keeps it engaged and holds the fill.
        let ((_, _, ratio), resampled, _) = run_with(300.0, 150.0, Some((20.0, 0.03)));
        assert!(resampled > 2_000, "{resampled}");
        assert!((ratio - 1.0 / 1.0003).abs() < 1e-4, "{ratio}");
    }

    #[test]
    fn steering_holds_the_fill_against_a_fast_or_slow_microphone_clock() {
        let (lo0, hi0, r0) = run(0.0, 120.0);
        assert_eq!(r0, 1.0, "equal clocks: blocks pass untouched");
        for ppm in [-300.0, 300.0] {
            let (lo, hi, ratio) = run(ppm, 240.0);
            // Without steering, 240 s at 300 ppm moves it by 3,456 frames (72 ms).
            eprintln!("{ppm} ppm: {lo}..{hi} frames (equal clocks {lo0}..{hi0}), ratio {ratio}");
            assert!(
                lo + 96 >= lo0 && hi <= hi0 + 96,
                "{ppm} ppm: fill {lo}..{hi} in the last minute, {lo0}..{hi0} with equal clocks"
            );
            // Output frames per input frame: a fast microphone is slowed down.
            let want = 1.0 / (1.0 + ppm * 1e-6);
            assert!(
                (ratio - want).abs() < 1e-4,
                "{ppm} ppm: ratio {ratio}, want {want}"
            );
        }
    }

    #[test]
    fn while_nobody_listens_or_before_the_setpoint_the_ratio_is_nominal() {
        let (prod, _cons) = HeapRb::<f32>::new(48_000).split();
        let stats = StatsInner::default();
        let mut q = SteeredQueue::new(prod, true);
        for _ in 0..300 {
            q.push(&[0.0; CHUNK], &stats, 0);
            assert_eq!(q.ratio(), 1.0);
        }
        assert!(q.drift.is_none());
    }
}
