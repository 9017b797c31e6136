//! The realtime denoiser.
//!
//! # Realtime rules
//! [`Denoiser::process`] runs on the audio thread. After [`Denoiser::new`] returns it never
//! allocates, locks, logs or makes a system call: every buffer is sized at construction,
//! settings arrive through atomics in [`Handle`], and meters leave the same way. The
//! `no_alloc` integration test runs it under an allocation detector at every supported rate.
//!
//! # Signal path (per channel)
//! ```text
//! input ─sanitize─┬─▶ chunk (c_in samples) ─rubato─▶ 48 kHz ─▶ RNNoise 480-sample frames
//!                 │                                              │
//!                 │                      rubato back to the input rate ◀─┘
//!                 │                                              ▼
//!                 └─▶ dry delay line (latency) ───────────▶ strength mix ─▶ bypass crossfade ─▶ out
//! ```
//! The dry path is delayed by exactly [`Denoiser::latency`], so strength mixing and bypass
//! never shift time, and bypass output is the input, bit for bit, delayed.
//!
//! # Channel policy
//! Every channel is denoised on its own (one RNNoise state per channel, up to
//! [`MAX_CHANNELS`]). A microphone is mono and costs one state; a stereo interface or a mono
//! mic the server reports as stereo keeps its layout and image, with no downmix/upmix step
//! whose level changes would need explaining. The cost is linear in channels (about 1 % of a
//! core each at 48 kHz), which is affordable for the 1–2 channels real microphones have.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};

use crate::{Error, FrameModel, Model, ProcessError};

/// Sample rate every model runs at.
pub const MODEL_RATE: u32 = 48_000;
/// Samples per model frame at [`MODEL_RATE`] (10 ms), for RNNoise and DeepFilterNet3 alike.
pub const MODEL_FRAME: usize = nnnoiseless::FRAME_SIZE;
/// Most channels a denoiser accepts.
pub const MAX_CHANNELS: usize = 8;
/// Strength at or above which the model output is used unmixed.
pub const FULL_STRENGTH_DB: f32 = 100.0;
/// Lowest supported input rate.
pub const MIN_RATE: u32 = 8_000;
/// Highest supported input rate.
pub const MAX_RATE: u32 = 192_000;

const DENORMAL_FLOOR: f32 = 1e-20;

/// How the caller delivers blocks to [`Denoiser::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Blocks of any size; costs up to one chunk of extra latency.
    #[default]
    Any,
    /// Blocks are always whole multiples of [`Denoiser::chunk_frames`]; no extra latency.
    Chunked,
}

/// What to build a [`Denoiser`] for.
#[derive(Debug, Clone)]
pub struct Config {
    /// Input (and output) sample rate in Hz.
    pub sample_rate: u32,
    /// Interleaved channels, 1 to [`MAX_CHANNELS`].
    pub channels: usize,
    /// Block delivery contract.
    pub framing: Framing,
    /// Length of the bypass and strength crossfades, at most 10 ms.
    pub crossfade_ms: f32,
    /// Run a model whose inference allocates (DeepFilterNet3) on a worker thread, so that
    /// [`Denoiser::process`] stays allocation-free; costs two model frames (20 ms) of latency.
    /// For live audio; file processing runs faster than realtime and leaves it off.
    pub model_thread: bool,
    /// Called first on the model's worker thread (with [`Config::model_thread`]): the engine
    /// raises it to realtime priority there, so a loaded machine cannot starve the model.
    pub model_thread_init: Option<fn()>,
}

impl Config {
    /// A config for `sample_rate` and `channels` with defaults for the rest.
    pub fn new(sample_rate: u32, channels: usize) -> Config {
        Config {
            sample_rate,
            channels,
            framing: Framing::Any,
            crossfade_ms: 5.0,
            model_thread: false,
            model_thread_init: None,
        }
    }
}

#[derive(Debug)]
struct Shared {
    bypass: AtomicBool,
    strength_db: AtomicU32,
    vad: AtomicU32,
    input_rms: AtomicU32,
    output_rms: AtomicU32,
    frames: AtomicU64,
    nonfinite_chunks: AtomicU64,
    late_frames: AtomicU64,
}

/// Lock-free controls and meters of a [`Denoiser`]; cheap to clone, safe from any thread.
#[derive(Debug, Clone)]
pub struct Handle(Arc<Shared>);

impl Default for Handle {
    fn default() -> Self {
        Handle(Arc::new(Shared {
            bypass: AtomicBool::new(false),
            strength_db: AtomicU32::new(FULL_STRENGTH_DB.to_bits()),
            vad: AtomicU32::new(0),
            input_rms: AtomicU32::new(0),
            output_rms: AtomicU32::new(0),
            frames: AtomicU64::new(0),
            nonfinite_chunks: AtomicU64::new(0),
            late_frames: AtomicU64::new(0),
        }))
    }
}

impl Handle {
    /// A new handle: noise removal on, full strength.
    pub fn new() -> Handle {
        Handle::default()
    }
    /// Bypass (true: dry signal, delayed) or denoise (false). Crossfades; never clicks.
    pub fn set_bypass(&self, bypass: bool) {
        self.0.bypass.store(bypass, Ordering::Relaxed);
    }
    /// Whether bypass is requested.
    pub fn bypass(&self) -> bool {
        self.0.bypass.load(Ordering::Relaxed)
    }
    /// Attenuation limit in dB: 0 leaves the input untouched, [`FULL_STRENGTH_DB`] or more is
    /// the full model output; values between mix model output with the aligned dry signal.
    pub fn set_strength_db(&self, db: f32) {
        let db = if db.is_nan() { FULL_STRENGTH_DB } else { db };
        self.0
            .strength_db
            .store(db.clamp(0.0, FULL_STRENGTH_DB).to_bits(), Ordering::Relaxed);
    }
    /// The attenuation limit in dB.
    pub fn strength_db(&self) -> f32 {
        f32::from_bits(self.0.strength_db.load(Ordering::Relaxed))
    }
    /// Voice-activity probability (0–1) of the most recent model frame, max over channels.
    pub fn vad(&self) -> f32 {
        f32::from_bits(self.0.vad.load(Ordering::Relaxed))
    }
    /// RMS (full scale = 1.0) of the most recent input chunk.
    pub fn input_rms(&self) -> f32 {
        f32::from_bits(self.0.input_rms.load(Ordering::Relaxed))
    }
    /// RMS of the most recent chunk of output.
    pub fn output_rms(&self) -> f32 {
        f32::from_bits(self.0.output_rms.load(Ordering::Relaxed))
    }
    /// Input frames processed so far.
    pub fn frames_processed(&self) -> u64 {
        self.0.frames.load(Ordering::Relaxed)
    }
    /// Model frames a worker-thread model (see [`Config::model_thread`]) did not finish in time,
    /// output as silence; always 0 for models run inline.
    pub fn late_frames(&self) -> u64 {
        self.0.late_frames.load(Ordering::Relaxed)
    }
    /// Chunks that contained NaN or Inf and were replaced by silence.
    pub fn nonfinite_chunks(&self) -> u64 {
        self.0.nonfinite_chunks.load(Ordering::Relaxed)
    }
}

/// Gain of the dry signal for an attenuation limit in dB (DeepFilterNet's `atten_lim`).
fn dry_mix_for(db: f32) -> f32 {
    if db >= FULL_STRENGTH_DB {
        0.0
    } else {
        10f32.powf(-db.max(0.0) / 20.0)
    }
}

/// A fixed-capacity FIFO of samples; never grows.
#[derive(Debug)]
struct Fifo {
    buf: Vec<f32>,
    head: usize,
    len: usize,
}

impl Fifo {
    fn with_capacity(cap: usize) -> Fifo {
        Fifo {
            buf: vec![0.0; cap.max(1)],
            head: 0,
            len: 0,
        }
    }
    fn push_slice(&mut self, xs: &[f32]) {
        debug_assert!(self.len + xs.len() <= self.buf.len(), "fifo sized at start");
        let cap = self.buf.len();
        for &x in xs {
            let idx = (self.head + self.len) % cap;
            self.buf[idx] = x;
            self.len += 1;
        }
    }
    fn push_zeros(&mut self, n: usize) {
        let cap = self.buf.len();
        for _ in 0..n {
            let idx = (self.head + self.len) % cap;
            self.buf[idx] = 0.0;
            self.len += 1;
        }
    }
    fn pop(&mut self) -> f32 {
        debug_assert!(self.len > 0, "latency covers the chunk");
        let x = self.buf[self.head];
        self.head = (self.head + 1) % self.buf.len();
        self.len -= 1;
        x
    }
}

/// A delay line of exactly `len` samples.
#[derive(Debug)]
struct Delay {
    buf: Vec<f32>,
    pos: usize,
}

impl Delay {
    fn new(len: usize) -> Delay {
        Delay {
            buf: vec![0.0; len],
            pos: 0,
        }
    }
    #[inline]
    fn push_pop(&mut self, x: f32) -> f32 {
        if self.buf.is_empty() {
            return x;
        }
        let y = std::mem::replace(&mut self.buf[self.pos], x);
        self.pos += 1;
        if self.pos == self.buf.len() {
            self.pos = 0;
        }
        y
    }
}

/// Chunk plan for one input rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Input-rate samples per chunk.
    pub chunk: usize,
    /// Model-rate samples per chunk (a multiple of [`MODEL_FRAME`]).
    pub mid: usize,
    /// FFT block of the input-side resampler, in input samples.
    pub fft_in: usize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

pub(crate) fn plan(rate: u32) -> Result<Plan, Error> {
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(Error::UnsupportedSampleRate { rate });
    }
    let r = rate as usize;
    let m = MODEL_RATE as usize;
    let g = gcd(r, m);
    let (p, q) = (r / g, m / g);
    // Smallest k with k*q a multiple of the model frame: the chunk maps to whole frames.
    let k = MODEL_FRAME / gcd(q, MODEL_FRAME);
    let chunk = k * p;
    if chunk * 25 > r {
        return Err(Error::UnsupportedSampleRate { rate });
    }
    // FFT blocks of about 5 ms keep resampler delay low with a decent filter; the block must
    // divide the chunk so that every chunk yields exactly `mid` samples.
    let target = (r / 200).max(p);
    let mut sub = 1;
    for d in 1..=k {
        if k.is_multiple_of(d) && d * p <= target {
            sub = d;
        }
    }
    Ok(Plan {
        chunk,
        mid: k * q,
        fft_in: sub * p,
    })
}

/// Realtime noise remover for one stream: any rate, 1–8 channels, any block size.
pub struct Denoiser {
    shared: Arc<Shared>,
    channels: usize,
    sample_rate: u32,
    framing: Framing,
    plan: Plan,
    latency: usize,
    states: Vec<Box<dyn FrameModel>>,
    threaded: bool,
    rs_in: Option<Fft<f32>>,
    rs_out: Option<Fft<f32>>,
    in_buf: Vec<Vec<f32>>,
    in_fill: usize,
    chunk_bad: bool,
    mid_in: Vec<Vec<f32>>,
    mid_out: Vec<Vec<f32>>,
    wet_chunk: Vec<Vec<f32>>,
    wet: Vec<Fifo>,
    dry: Vec<Delay>,
    bypass_gain: f32,
    dry_mix: f32,
    step: f32,
    out_acc: f32,
    out_count: usize,
}

impl std::fmt::Debug for Denoiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denoiser")
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .field("framing", &self.framing)
            .field("chunk", &self.plan.chunk)
            .field("latency", &self.latency)
            .finish()
    }
}

impl Denoiser {
    /// Builds a denoiser with a fresh [`Handle`]. Allocates; call it off the realtime thread.
    pub fn new(config: &Config, model: &Model) -> Result<Denoiser, Error> {
        Denoiser::with_handle(config, model, Handle::new())
    }

    /// Builds a denoiser that shares `handle` (controls and meters) with an existing one, e.g.
    /// to swap in a processor for a new sample rate without the UI noticing.
    pub fn with_handle(config: &Config, model: &Model, handle: Handle) -> Result<Denoiser, Error> {
        let ch = config.channels;
        if ch == 0 || ch > MAX_CHANNELS {
            return Err(Error::UnsupportedChannels {
                channels: ch,
                max: MAX_CHANNELS,
            });
        }
        let plan = plan(config.sample_rate)?;
        let resampling = config.sample_rate != MODEL_RATE;
        let make = |from: u32, to: u32, chunk: usize, fft: usize| {
            Fft::<f32>::new_custom(
                from as usize,
                to as usize,
                chunk,
                chunk / fft,
                ch,
                rubato::WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )
            .map_err(|e| Error::Resampler {
                rate: config.sample_rate,
                reason: e.to_string(),
            })
        };
        let (rs_in, rs_out) = if resampling {
            let fft_mid = plan.fft_in * plan.mid / plan.chunk;
            let a = make(config.sample_rate, MODEL_RATE, plan.chunk, plan.fft_in)?;
            let b = make(MODEL_RATE, config.sample_rate, plan.mid, fft_mid)?;
            for (rs, want_in, want_out) in [(&a, plan.chunk, plan.mid), (&b, plan.mid, plan.chunk)]
            {
                if rs.input_frames_next() != want_in || rs.output_frames_next() != want_out {
                    return Err(Error::Resampler {
                        rate: config.sample_rate,
                        reason: format!(
                            "chunk plan {want_in}->{want_out} not met ({}->{})",
                            rs.input_frames_next(),
                            rs.output_frames_next()
                        ),
                    });
                }
            }
            (Some(a), Some(b))
        } else {
            (None, None)
        };

        let pre = match config.framing {
            Framing::Any => plan.chunk - 1,
            Framing::Chunked => 0,
        };
        let threaded = config.model_thread && model.is_dfn3();
        let states = (0..ch)
            .map(|_| {
                let fm = model.frame_model()?;
                if !threaded {
                    return Ok(fm);
                }
                crate::threaded::ThreadedFrames::spawn(fm, config.model_thread_init)
                    .map(|t| Box::new(t) as Box<dyn FrameModel>)
                    .map_err(|e| Error::ModelLoad {
                        path: model.info().file.clone().into(),
                        reason: format!("cannot start the model thread: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if states.iter().any(|s| s.frame_size() != MODEL_FRAME) {
            return Err(Error::ModelLoad {
                path: model.info().file.clone().into(),
                reason: format!("frame size is not {MODEL_FRAME} samples"),
            });
        }
        let model_delay = states[0].delay();
        let d_in = rs_in.as_ref().map_or(0, |r| r.output_delay());
        let d_out = rs_out.as_ref().map_or(0, |r| r.output_delay());
        let model_part = ((d_in + model_delay) as f64 * config.sample_rate as f64
            / MODEL_RATE as f64)
            .round() as usize;
        let latency = pre + d_out + model_part;

        let mid_cap = rs_in
            .as_ref()
            .map_or(plan.mid, |r| r.output_frames_max().max(plan.mid));
        let out_cap = rs_out
            .as_ref()
            .map_or(plan.chunk, |r| r.output_frames_max().max(plan.chunk));
        let crossfade =
            (config.crossfade_ms.clamp(0.1, 10.0) / 1000.0 * config.sample_rate as f32).max(1.0);
        let mut wet: Vec<Fifo> = (0..ch)
            .map(|_| Fifo::with_capacity(pre + plan.chunk))
            .collect();
        for f in wet.iter_mut() {
            f.push_zeros(pre);
        }
        let shared = handle.0;
        let dry_mix = dry_mix_for(f32::from_bits(shared.strength_db.load(Ordering::Relaxed)));
        let bypass_gain = if shared.bypass.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        };
        let mut d = Denoiser {
            shared,
            channels: ch,
            sample_rate: config.sample_rate,
            framing: config.framing,
            plan,
            latency,
            states,
            threaded,
            rs_in,
            rs_out,
            in_buf: vec![vec![0.0; plan.chunk]; ch],
            in_fill: 0,
            chunk_bad: false,
            mid_in: vec![vec![0.0; mid_cap]; ch],
            mid_out: vec![vec![0.0; plan.mid]; ch],
            wet_chunk: vec![vec![0.0; out_cap]; ch],
            wet,
            dry: (0..ch).map(|_| Delay::new(latency)).collect(),
            bypass_gain,
            dry_mix,
            step: 1.0 / crossfade,
            out_acc: 0.0,
            out_count: 0,
        };
        d.warm_resamplers();
        Ok(d)
    }

    /// Runs silence through the resamplers once so any lazy set-up happens now. Their state
    /// after silence equals their initial state.
    fn warm_resamplers(&mut self) {
        let ch = self.channels;
        if let (Some(a), Some(b)) = (self.rs_in.as_mut(), self.rs_out.as_mut()) {
            let zeros = vec![vec![0.0f32; self.plan.chunk.max(self.plan.mid)]; ch];
            let zin = SequentialSliceOfVecs::new(&zeros, ch, self.plan.chunk)
                .expect("invariant: sized at start");
            let cap = self.mid_in[0].len();
            let mut out = SequentialSliceOfVecs::new_mut(&mut self.mid_in, ch, cap)
                .expect("invariant: sized at start");
            let _ = a.process_into_buffer(&zin, &mut out, None);
            a.reset();
            let zmid = SequentialSliceOfVecs::new(&zeros, ch, self.plan.mid)
                .expect("invariant: sized at start");
            let cap = self.wet_chunk[0].len();
            let mut out2 = SequentialSliceOfVecs::new_mut(&mut self.wet_chunk, ch, cap)
                .expect("invariant: sized at start");
            let _ = b.process_into_buffer(&zmid, &mut out2, None);
            b.reset();
        }
    }

    /// The shared controls and meters.
    pub fn handle(&self) -> Handle {
        Handle(self.shared.clone())
    }

    /// Delay from input to output, in samples at the (input = output) rate.
    pub fn latency(&self) -> usize {
        self.latency
    }

    /// Frames per processing chunk (10 ms for most rates).
    pub fn chunk_frames(&self) -> usize {
        self.plan.chunk
    }

    /// The sample rate this denoiser was built for.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Interleaved channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Denoises one block of interleaved samples (full scale ±1.0) into `output`.
    ///
    /// Realtime-safe: no allocation, lock, log or system call.
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), ProcessError> {
        let ch = self.channels;
        if input.len() != output.len() || !input.len().is_multiple_of(ch) {
            return Err(ProcessError::BadLength {
                input: input.len(),
                output: output.len(),
                channels: ch,
            });
        }
        let frames = input.len() / ch;
        if self.framing == Framing::Chunked && !frames.is_multiple_of(self.plan.chunk) {
            return Err(ProcessError::Misaligned {
                frames,
                chunk: self.plan.chunk,
            });
        }
        let want_bypass = if self.shared.bypass.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        };
        let want_mix = dry_mix_for(f32::from_bits(
            self.shared.strength_db.load(Ordering::Relaxed),
        ));

        let mut f = 0;
        while f < frames {
            let take = (frames - f).min(self.plan.chunk - self.in_fill);
            // Input side: sanitize, fill the chunk, and put the delayed dry signal in `output`.
            for i in 0..take {
                let base = (f + i) * ch;
                for c in 0..ch {
                    let mut x = input[base + c];
                    if !x.is_finite() {
                        x = 0.0;
                        self.chunk_bad = true;
                    } else if x.abs() < DENORMAL_FLOOR {
                        x = 0.0;
                    }
                    self.in_buf[c][self.in_fill + i] = x;
                    output[base + c] = self.dry[c].push_pop(x);
                }
            }
            self.in_fill += take;
            if self.in_fill == self.plan.chunk {
                self.run_chunk();
                self.in_fill = 0;
            }
            // Output side: mix the wet signal with the aligned dry one, then the bypass fade.
            for i in 0..take {
                self.bypass_gain = approach(self.bypass_gain, want_bypass, self.step);
                self.dry_mix = approach(self.dry_mix, want_mix, self.step);
                let (g, m) = (self.bypass_gain, self.dry_mix);
                let base = (f + i) * ch;
                for c in 0..ch {
                    let wet = self.wet[c].pop();
                    let dry = output[base + c];
                    let y = if g >= 1.0 {
                        dry
                    } else {
                        let mixed = wet * (1.0 - m) + dry * m;
                        mixed * (1.0 - g) + dry * g
                    };
                    output[base + c] = y;
                    self.out_acc += y * y;
                }
                self.out_count += 1;
                if self.out_count >= self.plan.chunk {
                    let rms = (self.out_acc / (self.out_count * ch) as f32).sqrt();
                    self.shared
                        .output_rms
                        .store(rms.to_bits(), Ordering::Relaxed);
                    self.out_acc = 0.0;
                    self.out_count = 0;
                }
            }
            f += take;
        }
        self.shared
            .frames
            .fetch_add(frames as u64, Ordering::Relaxed);
        Ok(())
    }

    fn run_chunk(&mut self) {
        let ch = self.channels;
        let n = self.plan.chunk;
        if self.chunk_bad {
            for buf in self.in_buf.iter_mut() {
                buf.fill(0.0);
            }
            self.chunk_bad = false;
            self.shared.nonfinite_chunks.fetch_add(1, Ordering::Relaxed);
        }
        let mut acc = 0.0f32;
        for buf in &self.in_buf {
            acc += buf.iter().map(|x| x * x).sum::<f32>();
        }
        let rms = (acc / (n * ch) as f32).sqrt();
        self.shared
            .input_rms
            .store(rms.to_bits(), Ordering::Relaxed);

        match self.rs_in.as_mut() {
            Some(rs) => {
                let inp = SequentialSliceOfVecs::new(&self.in_buf, ch, n)
                    .expect("invariant: sized at start");
                let cap = self.mid_in[0].len();
                let mut out = SequentialSliceOfVecs::new_mut(&mut self.mid_in, ch, cap)
                    .expect("invariant: sized at start");
                let r = rs.process_into_buffer(&inp, &mut out, None);
                debug_assert_eq!(r.map(|x| x.1).ok(), Some(self.plan.mid));
            }
            None => {
                for c in 0..ch {
                    self.mid_in[c][..n].copy_from_slice(&self.in_buf[c]);
                }
            }
        }

        let mut vad = 0.0f32;
        for c in 0..ch {
            let mid_in = &self.mid_in[c][..self.plan.mid];
            let mid_out = &mut self.mid_out[c];
            for (o, i) in mid_out
                .chunks_exact_mut(MODEL_FRAME)
                .zip(mid_in.chunks_exact(MODEL_FRAME))
            {
                vad = vad.max(self.states[c].process_frame(i, o));
            }
        }
        self.shared.vad.store(vad.to_bits(), Ordering::Relaxed);
        if self.threaded {
            let late = self.states.iter().map(|s| s.late_frames()).sum::<u64>();
            self.shared.late_frames.store(late, Ordering::Relaxed);
        }

        match self.rs_out.as_mut() {
            Some(rs) => {
                let inp = SequentialSliceOfVecs::new(&self.mid_out, ch, self.plan.mid)
                    .expect("invariant: sized at start");
                let cap = self.wet_chunk[0].len();
                let mut out = SequentialSliceOfVecs::new_mut(&mut self.wet_chunk, ch, cap)
                    .expect("invariant: sized at start");
                let r = rs.process_into_buffer(&inp, &mut out, None);
                debug_assert_eq!(r.map(|x| x.1).ok(), Some(n));
            }
            None => {
                for c in 0..ch {
                    self.wet_chunk[c][..n].copy_from_slice(&self.mid_out[c]);
                }
            }
        }
        for c in 0..ch {
            self.wet[c].push_slice(&self.wet_chunk[c][..n]);
        }
    }
}

#[inline]
fn approach(cur: f32, target: f32, step: f32) -> f32 {
    if cur < target {
        (cur + step).min(target)
    } else if cur > target {
        (cur - step).max(target)
    } else {
        cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_rates_plan_to_whole_model_frames_within_40ms() {
        for rate in [
            8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000,
        ] {
            let p = plan(rate).unwrap();
            assert_eq!(p.mid % MODEL_FRAME, 0, "{rate}");
            assert_eq!(
                p.chunk * MODEL_RATE as usize,
                p.mid * rate as usize,
                "{rate}"
            );
            assert!(p.chunk * 25 <= rate as usize, "{rate}: {p:?}");
            assert_eq!(p.chunk % p.fft_in, 0, "{rate}");
        }
        assert_eq!(plan(44100).unwrap().chunk, 441);
        assert_eq!(plan(48000).unwrap().chunk, 480);
    }

    #[test]
    fn out_of_range_and_awkward_rates_are_refused_clearly() {
        for rate in [0, 4000, 7999, 192001, 384000, 44101] {
            let err = plan(rate).unwrap_err();
            assert!(err.to_string().contains(&rate.to_string()), "{err}");
        }
    }

    #[test]
    fn strength_maps_to_dry_mix() {
        assert_eq!(dry_mix_for(0.0), 1.0);
        assert_eq!(dry_mix_for(FULL_STRENGTH_DB), 0.0);
        assert!((dry_mix_for(20.0) - 0.1).abs() < 1e-6);
    }
}
