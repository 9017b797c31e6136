//! Clock-drift steering for the writer.
//!
//! The app's capture clock and the driver's device clock are different crystals: ±100–200 ppm
//! apart is normal. Left alone, the ring's fill would walk by ~10 frames per second at 48 kHz
//! until it under- or overruns. Like adaptive resamplers (e.g. the ones in JACK's
//! `alsa_in`/`alsa_out` or PipeWire's adaptive resampling), the writer measures the fill each
//! time it writes and nudges its resampler's ratio with a PI controller so the fill settles at
//! the target. The ratio is meant for rubato's `Async::set_resample_ratio_relative`:
//! output frames per input frame, relative to nominal.

use rubato::{Async, FixedAsync, PolynomialDegree};

/// PI controller from ring fill to relative resampling ratio. Realtime-safe (arithmetic only).
#[derive(Debug, Clone)]
pub struct DriftController {
    rate: f64,
    target: f64,
    filtered: Option<f64>,
    integral: f64,
    ratio: f64,
    kp: f64,
    ki: f64,
    filter_seconds: f64,
    max_deviation: f64,
}

impl DriftController {
    /// A controller for a ring at `sample_rate` that steers the fill towards `target_fill`
    /// frames. Tuned for a critically damped response with a ~4 s time constant on a fill
    /// low-passed over ~1 s (the fill saw-tooths by a period or two as writer and reader blocks
    /// interleave; the filter keeps that out of the ratio: ~25 ppm of ratio jitter in the
    /// model test below) — slow enough that the pitch change is inaudible, fast enough to
    /// absorb a 200 ppm clock offset within ~10 s — and a ratio limited to ±1000 ppm.
    pub fn new(sample_rate: u32, target_fill: u32) -> Self {
        let rate = f64::from(sample_rate.max(1));
        let tau = 4.0;
        // Plant: d(fill)/dt = rate * (ratio - 1) - drift. With ratio - 1 = -(kp e + ki ∫e):
        // closed loop s² + rate·kp s + rate·ki; 2ζω = rate·kp = 1/τ, ω² = rate·ki, ζ = 1.
        let kp = 1.0 / (rate * tau);
        let omega = 1.0 / (2.0 * tau);
        let ki = omega * omega / rate;
        Self {
            rate,
            target: f64::from(target_fill),
            filtered: None,
            integral: 0.0,
            ratio: 1.0,
            kp,
            ki,
            filter_seconds: 1.0,
            max_deviation: 1e-3,
        }
    }

    /// Feeds one fill measurement, taken `frames_elapsed` frames (at the ring's rate) after the
    /// previous one, and returns the relative ratio to apply now.
    pub fn update(&mut self, fill: u64, frames_elapsed: u32) -> f64 {
        let dt = f64::from(frames_elapsed) / self.rate;
        let fill = fill as f64;
        let filtered = match self.filtered {
            None => fill,
            Some(prev) => {
                let alpha = dt / (self.filter_seconds + dt);
                prev + alpha * (fill - prev)
            }
        };
        self.filtered = Some(filtered);
        let error = filtered - self.target;
        let limit = self.max_deviation / self.ki;
        self.integral = (self.integral + error * dt).clamp(-limit, limit);
        let correction = (self.kp * error + self.ki * self.integral)
            .clamp(-self.max_deviation, self.max_deviation);
        self.ratio = 1.0 - correction;
        self.ratio
    }

    /// The ratio last returned by [`update`](Self::update) (1.0 before the first).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// The low-pass-filtered fill the controller is steering on.
    pub fn filtered_fill(&self) -> f64 {
        self.filtered.unwrap_or(self.target)
    }

    /// Largest relative deviation the controller will ask for (rubato's
    /// `max_resample_ratio_relative` must be at least `1 + max_deviation`).
    pub fn max_deviation(&self) -> f64 {
        self.max_deviation
    }

    /// The resampler this controller steers: septic polynomial interpolation, transparent for
    /// speech at ratios within 1 ± 0.001 and far cheaper than a sinc resampler, taking
    /// `block_frames` per call, its ratio range wide enough for every ratio the controller
    /// asks for. `None` if rubato refuses the block size.
    pub fn resampler(&self, block_frames: usize, channels: usize) -> Option<Async<f32>> {
        Async::<f32>::new_poly(
            1.0,
            1.0 + 2.0 * self.max_deviation,
            PolynomialDegree::Septic,
            block_frames,
            channels,
            FixedAsync::Input,
        )
        .ok()
    }

    /// Forgets the history (after the reader resynced, e.g. the driver restarted).
    pub fn reset(&mut self) {
        self.filtered = None;
        self.integral = 0.0;
        self.ratio = 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Model of the ring: writer blocks of 480 input frames resampled by `ratio`, reader
    /// periods of 512 at a clock `ppm` away. Returns (min fill, max fill, mean ratio) over the
    /// settled last two thirds.
    fn simulate(ppm: f64, seconds: f64) -> (f64, f64, f64) {
        let rate = 48_000.0;
        let mut c = DriftController::new(48_000, 1024);
        let mut fill = 1024.0f64;
        let mut frac = 0.0f64;
        let writer_period = 480.0 / rate;
        let reader_period = 512.0 / (rate * (1.0 + ppm * 1e-6));
        let (mut tw, mut tr) = (0.0, 0.0);
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        let (mut sum, mut count) = (0.0, 0.0);
        while tw < seconds {
            if tw <= tr {
                let ratio = c.update(fill as u64, 480);
                let out = 480.0 * ratio + frac;
                frac = out - out.floor();
                fill += out.floor();
                tw += writer_period;
                if tw > seconds / 3.0 {
                    sum += ratio;
                    count += 1.0;
                }
            } else {
                fill -= 512.0;
                tr += reader_period;
                if tr > seconds / 3.0 {
                    lo = lo.min(fill);
                    hi = hi.max(fill);
                }
            }
        }
        (lo, hi, sum / count)
    }

    #[test]
    fn fill_settles_under_200_ppm_either_way() {
        for ppm in [-200.0, 0.0, 200.0] {
            let (lo, hi, ratio) = simulate(ppm, 600.0);
            assert!(lo > 512.0 && hi < 1600.0, "ppm {ppm}: fill {lo}..{hi}");
            let expected = 1.0 + ppm * 1e-6;
            assert!(
                (ratio - expected).abs() < 5e-6,
                "ppm {ppm}: mean ratio {ratio}"
            );
        }
    }

    #[test]
    fn ratio_is_bounded() {
        let mut c = DriftController::new(48_000, 1024);
        for _ in 0..10_000 {
            let r = c.update(8192, 480);
            assert!((r - 1.0).abs() <= c.max_deviation() + 1e-12);
        }
        c.reset();
        assert_eq!(c.ratio(), 1.0);
    }
}
