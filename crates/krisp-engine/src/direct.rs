//! Direct feed: while someone records from "Krisp Microphone" and a microphone is open, the
//! capture I/O thread writes each denoised chunk straight into the virtual device's stream,
//! in the same wake-up that brought the microphone's audio.
//!
//! Through the feeder thread (`writer.rs`) every chunk crossed two clocks' worth of buffering:
//! the jitter buffer that decouples the capture thread from the feeder (12.5 ms) and the
//! server-side buffer the feeder keeps ahead of the device (~20 ms), measured as the larger
//! half of the 41–49 ms the e2e test saw. Written directly, the server-side buffer is the only
//! one: it holds what arrived minus what the device has played, and the capture clock keeps
//! it topped up. The feeder thread stays for when there is no microphone (it plays silence
//! so recorders never stall) and for nobody recording (large blocks of silence).
//!
//! Two clocks still meet in that buffer: the microphone's and the device's. The I/O thread
//! measures the buffer (the server's timing, interpolated: what was written minus what the
//! device has read) each chunk, averages it over a second, and when the average strays more
//! than [`DEADBAND`] from where it settled after the start, asks the realtime side to drop
//! (microphone faster) or insert (slower) that many frames. The realtime side does it only in
//! a chunk that is at the output's noise floor, spliced with a short equal-power crossfade, so
//! no voice is cut; with agreeing clocks nothing is ever spliced (bit-exact).

/// Largest splice in one chunk (1 ms).
pub(crate) const MAX_STEP: usize = 48;
/// Crossfade across a splice (4 ms).
const FADE: usize = 192;
/// Where the crossfade starts in the chunk: late enough that an insert can reach back
/// [`MAX_STEP`] frames, early enough that the fade fits.
const SPLICE_AT: usize = 144;
/// Level below which a chunk counts as quiet whatever the floor (-46 dBFS).
const QUIET: f32 = 0.005;
/// How fast the tracked noise floor rises per chunk when the output is louder (+4 dB/s).
const FLOOR_RISE: f32 = 1.005;
/// Chunks in a measuring window (about one second).
const WINDOW: u32 = 100;
/// How far (frames, 2 ms) the buffer's mean may stray from its setpoint before frames are
/// dropped or inserted.
pub(crate) const DEADBAND: f64 = 96.0;
/// Chunks the output queue holds between the realtime code and the I/O thread's write: a
/// capture block of up to `capture::MAX_PERIOD` frames yields up to 10 chunks.
const QUEUE_CHUNKS: usize = 12;
/// Frames the output queue holds at most.
pub(crate) const QUEUE_FRAMES: usize = QUEUE_CHUNKS * (CHUNK + MAX_STEP);

use crate::rt::CHUNK;

/// The realtime side's half: collects processed chunks for the I/O thread and carries out
/// drops and inserts in quiet chunks. Allocation-free after [`DirectOut::new`].
pub(crate) struct DirectOut {
    /// Whether the capture thread writes the virtual device itself now.
    pub on: bool,
    /// Processed audio not yet written (the I/O thread takes it after each block).
    pub out: Vec<f32>,
    /// Frames still to drop (positive) or insert (negative), set by the I/O thread.
    pub pending: i32,
    floor: f32,
    /// Equal-power crossfade weights (cos², so `fade[i] + fade[FADE-1-i] == 1` in power).
    fade: Vec<f32>,
    /// Frames dropped and inserted so far.
    pub dropped: u64,
    pub inserted: u64,
}

impl Default for DirectOut {
    fn default() -> Self {
        Self::new()
    }
}

impl DirectOut {
    pub fn new() -> DirectOut {
        let fade = (0..FADE)
            .map(|i| {
                let t = (i as f32 + 0.5) / FADE as f32 * std::f32::consts::FRAC_PI_2;
                t.cos()
            })
            .collect();
        DirectOut {
            on: false,
            out: Vec::with_capacity(QUEUE_FRAMES),
            pending: 0,
            floor: 1.0,
            fade,
            dropped: 0,
            inserted: 0,
        }
    }

    /// Starts (or restarts) direct writing: nothing queued, nothing pending.
    pub fn reset(&mut self) {
        self.out.clear();
        self.pending = 0;
        self.floor = 1.0;
    }

    /// Queues one processed chunk, spliced if a correction is pending and the chunk is quiet.
    /// Returns false when the queue is full (the I/O thread has not written for 120 ms: the
    /// chunk is lost and counted as an overrun). Realtime: no allocation, lock or system call.
    pub fn push(&mut self, block: &[f32; CHUNK]) -> bool {
        let rms = (block.iter().map(|x| x * x).sum::<f32>() / CHUNK as f32).sqrt();
        self.floor = if rms < self.floor {
            rms
        } else {
            self.floor * FLOOR_RISE
        };
        if self.out.len() + CHUNK + MAX_STEP > self.out.capacity() {
            return false;
        }
        let quiet = rms < QUIET || rms <= 2.0 * self.floor;
        let d = if quiet {
            self.pending.clamp(-(MAX_STEP as i32), MAX_STEP as i32)
        } else {
            0
        };
        if d == 0 {
            self.out.extend_from_slice(block);
            return true;
        }
        self.splice(block, d);
        self.pending -= d;
        if d > 0 {
            self.dropped += d as u64;
        } else {
            self.inserted += (-d) as u64;
        }
        true
    }

    /// Appends `block` shortened by `d` frames (`d < 0`: lengthened): up to [`SPLICE_AT`] as
    /// it is, then a crossfade from the block to the block shifted by `d`, then the shifted
    /// block to its end.
    fn splice(&mut self, x: &[f32; CHUNK], d: i32) {
        let d = d as isize;
        let len = (CHUNK as isize - d) as usize;
        for i in 0..len {
            let shifted = || x[(i as isize + d) as usize];
            let y = if i < SPLICE_AT {
                x[i]
            } else if i < SPLICE_AT + FADE {
                let k = i - SPLICE_AT;
                x[i] * self.fade[k] + shifted() * self.fade[FADE - 1 - k]
            } else {
                shifted()
            };
            self.out.push(y);
        }
    }
}

/// The I/O thread's half: from the device buffer's measured level, the correction to ask for.
#[derive(Debug, Default)]
pub(crate) struct LatencyHold {
    sum: f64,
    n: u32,
    windows: u32,
    setpoint: Option<f64>,
    /// Windows to skip after asking for a correction (it takes effect over the next chunks).
    hold_off: u32,
}

impl LatencyHold {
    /// Forgets the setpoint: the next settled second sets it anew (start, or the buffer was
    /// deliberately grown).
    pub fn restart(&mut self) {
        *self = LatencyHold::default();
    }

    /// The setpoint, once settled (frames).
    #[cfg(test)]
    pub fn setpoint(&self) -> Option<f64> {
        self.setpoint
    }

    /// Takes one measurement of the device buffer (frames, right after a write). At the end
    /// of each window returns the correction to ask for: frames to drop (positive) or insert
    /// (negative); `Some(0)` when the level is within the deadband.
    pub fn observe(&mut self, frames: f64) -> Option<i32> {
        self.sum += frames;
        self.n += 1;
        if self.n < WINDOW {
            return None;
        }
        let mean = self.sum / self.n as f64;
        self.sum = 0.0;
        self.n = 0;
        self.windows += 1;
        if self.windows == 1 {
            return None; // the first second settles
        }
        let Some(sp) = self.setpoint else {
            self.setpoint = Some(mean);
            return None;
        };
        if self.hold_off > 0 {
            self.hold_off -= 1;
            return None;
        }
        let err = mean - sp;
        if err.abs() > DEADBAND {
            self.hold_off = 1;
            Some(err.round() as i32)
        } else {
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, amp: f32, seed: &mut u32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((*seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn chunk(v: &[f32]) -> &[f32; CHUNK] {
        v.try_into().unwrap()
    }

    #[test]
    fn without_a_correction_chunks_pass_bit_exact() {
        let mut d = DirectOut::new();
        let mut seed = 1;
        let x = noise(CHUNK * 5, 0.3, &mut seed);
        for c in x.chunks(CHUNK) {
            assert!(d.push(chunk(c)));
        }
        assert_eq!(d.out, x);
    }

    #[test]
    fn a_drop_shortens_a_quiet_chunk_and_a_loud_one_is_left_alone() {
        let mut d = DirectOut::new();
        let mut seed = 7;
        // Quiet floor first, then a chunk 20 dB louder (voice): not spliced.
        for _ in 0..10 {
            d.push(chunk(&noise(CHUNK, 0.001, &mut seed)));
        }
        d.out.clear();
        d.pending = 30;
        d.push(chunk(&noise(CHUNK, 0.1, &mut seed)));
        assert_eq!((d.out.len(), d.pending), (CHUNK, 30), "voice is never cut");
        d.push(chunk(&noise(CHUNK, 0.001, &mut seed)));
        assert_eq!((d.out.len(), d.pending, d.dropped), (2 * CHUNK - 30, 0, 30));
        d.pending = -100;
        d.push(chunk(&noise(CHUNK, 0.001, &mut seed)));
        assert_eq!(
            d.out.len(),
            3 * CHUNK - 30 + MAX_STEP,
            "at most 1 ms per chunk"
        );
        assert_eq!((d.pending, d.inserted), (-100 + MAX_STEP as i32, 48));
    }

    #[test]
    fn a_splice_in_steady_noise_keeps_its_level_and_makes_no_step() {
        let mut seed = 3;
        let x = noise(CHUNK, 0.01, &mut seed);
        for dd in [-48, -17, 1, 23, 48] {
            let mut d = DirectOut::new();
            d.pending = dd;
            d.push(chunk(&x));
            let y = &d.out;
            assert_eq!(y.len() as i32, CHUNK as i32 - dd);
            // The ends are the block's own (shifted) samples.
            assert_eq!(y[..SPLICE_AT], x[..SPLICE_AT]);
            assert_eq!(*y.last().unwrap(), x[CHUNK - 1]);
            // Equal-power fade: the crossfaded stretch has the level of the noise (within
            // 1.5 dB), and no sample-to-sample step larger than the noise's own.
            let fade = &y[SPLICE_AT..SPLICE_AT + FADE];
            let rms = |v: &[f32]| (v.iter().map(|s| s * s).sum::<f32>() / v.len() as f32).sqrt();
            let ratio_db = 20.0 * (rms(fade) / rms(&x)).log10();
            assert!(ratio_db.abs() < 1.5, "d={dd}: fade level {ratio_db:.2} dB");
        }
        // A tone spliced out of phase: the crossfade leaves no step much larger than the tone's
        // own (an equal-power fade of two nearly in-phase copies swells by up to 3 dB; a hard
        // splice would leave a step ~16 times the tone's at these shifts).
        let tone: Vec<f32> = (0..CHUNK)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 200.0 / 48_000.0).sin() * 0.01)
            .collect();
        let step = |v: &[f32]| {
            v.windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0.0, f32::max)
        };
        for dd in [-48, -17, 23, 48] {
            let mut d = DirectOut::new();
            d.pending = dd;
            d.push(chunk(&tone));
            assert!(step(&d.out) <= step(&tone) * 1.5, "d={dd}");
        }
    }

    #[test]
    fn the_hold_settles_then_corrects_drift_beyond_the_deadband_only() {
        let mut h = LatencyHold::default();
        let mut asked = Vec::new();
        // 200 ppm faster microphone: the buffer grows 9.6 frames a second from 1000.
        let mut level = 1_000.0f64;
        for s in 0..60 {
            for _ in 0..WINDOW {
                if let Some(a) = h.observe(level)
                    && a != 0
                {
                    asked.push((s, a));
                    level -= a as f64; // the realtime side carries it out
                }
                level += 9.6 / WINDOW as f64;
            }
        }
        let sp = h.setpoint().unwrap();
        assert!((sp - 1_014.4).abs() < 1.0, "setpoint {sp}");
        assert!(asked.len() >= 4, "{asked:?}");
        assert!(asked.iter().all(|&(_, a)| a > 0 && a <= 120), "{asked:?}");
        assert!(
            (level - sp).abs() < DEADBAND + 20.0,
            "level {level} vs {sp}"
        );
        // Agreeing clocks: never a correction.
        let mut h = LatencyHold::default();
        let asks = (0..WINDOW * 60)
            .filter_map(|i| h.observe(1_000.0 + (i % 7) as f64 * 10.0))
            .filter(|&a| a != 0)
            .count();
        assert_eq!(asks, 0);
    }
}
