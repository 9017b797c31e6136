//! DeepFilterNet3 (Schröter et al., 2023) at 48 kHz: our own STFT, ERB/complex features and
//! deep-filtering stages around the three published ONNX networks (encoder, ERB-gain decoder,
//! deep-filter decoder), which run on tract, a pure-Rust inference engine.
//!
//! # Signal path, one 480-sample hop at a time
//! ```text
//! hop ─▶ Vorbis-windowed 960-point FFT ─▶ spectrum X[t] (481 bins) ─┬─▶ history of spectra
//!        ERB energies (32 bands, dB, running mean norm) ──┐          │
//!        low 96 bins, running unit norm ─────────────────┴▶ encoder ─▶ lsnr
//!                                                              ├▶ ERB decoder ─▶ 32 gains
//!                                                              └▶ DF decoder  ─▶ 96×5 complex taps
//! Y[τ] = gains(X[τ]) above bin 96, Σ_k taps_k · X[τ-2+k] below; τ = t - lookahead
//! Y[τ] ─▶ inverse FFT, window, overlap-add ─▶ 480 output samples
//! ```
//! The network was trained to look `conv_lookahead` = 2 hops (20 ms) ahead; [`Dfn3Options`]
//! can shorten that to cut delay, at a quality cost (taps that would need future hops are
//! dropped and the gains are applied to a newer hop than the network expects).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use tract_onnx::prelude::*;
use tract_pulse::internal::ToDim;
use tract_pulse::model::{PulsedModel, PulsedModelExt};

use crate::Error;

type Plan = TypedSimplePlan<TypedModel>;
type NetState = SimpleState<TypedFact, Box<dyn TypedOp>, TypedModel, Arc<Plan>>;

/// Lowest and highest local SNR the encoder estimates, in dB.
const LSNR_MIN: f32 = -15.0;
const LSNR_MAX: f32 = 35.0;

/// Knobs of the DeepFilterNet3 runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dfn3Options {
    /// Hops (10 ms each) the filter looks ahead, 0 to 2. 2 is what the network was trained
    /// with (30 ms total delay); 1 gives 20 ms, 0 gives 10 ms, each with some quality loss.
    pub lookahead: usize,
}

impl Default for Dfn3Options {
    fn default() -> Self {
        Dfn3Options { lookahead: 2 }
    }
}

/// Numbers from the model's `config.ini` that the signal path needs.
#[derive(Debug, Clone)]
struct Dims {
    fft: usize,
    hop: usize,
    nb_erb: usize,
    nb_df: usize,
    df_order: usize,
    df_lookahead: usize,
    conv_lookahead: usize,
    conv_ch: usize,
    min_nb_erb_freqs: usize,
    norm_alpha: f32,
}

/// The networks and tables, shared by every channel's state.
pub(crate) struct Dfn3Net {
    dims: Dims,
    enc: Arc<Plan>,
    erb_dec: Arc<Plan>,
    df_dec: Arc<Plan>,
    erb_bands: Vec<usize>,
    window: Vec<f32>,
}

impl std::fmt::Debug for Dfn3Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dfn3Net").field("dims", &self.dims).finish()
    }
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::ModelLoad {
        path: path.to_path_buf(),
        reason: what.to_string(),
    }
}

/// Reads an INI file into (section, key) -> value pairs; only what `config.ini` uses.
fn parse_ini(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn ini_get<T: std::str::FromStr>(
    ini: &[(String, String, String)],
    sections: &[&str],
    key: &str,
    path: &Path,
) -> Result<T, Error> {
    for s in sections {
        if let Some((_, _, v)) = ini.iter().find(|(sec, k, _)| sec == s && k == key) {
            return v.parse().map_err(|_| {
                bad(
                    path,
                    format!("config.ini: [{s}] {key} = '{v}' is not valid"),
                )
            });
        }
    }
    Err(bad(path, format!("config.ini has no '{key}'")))
}

/// Hz to ERB-rate and back (Glasberg & Moore scale as DeepFilterNet uses it).
fn hz_to_erb(hz: f32) -> f32 {
    9.265 * (hz / (24.7 * 9.265)).ln_1p()
}
fn erb_to_hz(erb: f32) -> f32 {
    24.7 * 9.265 * ((erb / 9.265).exp() - 1.0)
}

/// Width in FFT bins of each of `bands` ERB bands covering 0..=Nyquist, every band at least
/// `min_bins` wide.
fn erb_band_widths(sr: usize, fft: usize, bands: usize, min_bins: usize) -> Vec<usize> {
    let bin_hz = sr as f32 / fft as f32;
    let top = hz_to_erb((sr / 2) as f32);
    let step = top / bands as f32;
    let mut widths = Vec::with_capacity(bands);
    let mut prev_edge = 0i64;
    let mut borrowed = 0i64;
    for b in 1..=bands {
        let edge = (erb_to_hz(b as f32 * step) / bin_hz).round() as i64;
        let mut w = edge - prev_edge - borrowed;
        if w < min_bins as i64 {
            borrowed = min_bins as i64 - w;
            w = min_bins as i64;
        } else {
            borrowed = 0;
        }
        widths.push(w as usize);
        prev_edge = edge;
    }
    // The last band also holds the Nyquist bin; trim any excess from forced minimum widths.
    let n_bins = fft / 2 + 1;
    let last = bands - 1;
    widths[last] += 1;
    let total: usize = widths.iter().sum();
    if total > n_bins {
        widths[last] -= total - n_bins;
    }
    widths
}

impl Dfn3Net {
    /// Parses a DeepFilterNet3 ONNX tarball (enc.onnx, erb_dec.onnx, df_dec.onnx, config.ini)
    /// and prepares streaming (one hop per call) versions of the three networks.
    pub(crate) fn from_targz(bytes: &[u8], path: &Path) -> Result<Dfn3Net, Error> {
        let mut enc = None;
        let mut erb_dec = None;
        let mut df_dec = None;
        let mut config = None;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let entries = archive.entries().map_err(|e| bad(path, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(path, e))?;
            let name = entry
                .path()
                .map_err(|e| bad(path, e))?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let slot = match name.as_str() {
                "enc.onnx" => &mut enc,
                "erb_dec.onnx" => &mut erb_dec,
                "df_dec.onnx" => &mut df_dec,
                "config.ini" => &mut config,
                _ => continue,
            };
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(|e| bad(path, e))?;
            *slot = Some(buf);
        }
        let need = |x: Option<Vec<u8>>, n: &str| {
            x.ok_or_else(|| bad(path, format!("the archive has no {n}")))
        };
        let (enc, erb_dec, df_dec) = (
            need(enc, "enc.onnx")?,
            need(erb_dec, "erb_dec.onnx")?,
            need(df_dec, "df_dec.onnx")?,
        );
        let config = String::from_utf8(need(config, "config.ini")?)
            .map_err(|_| bad(path, "config.ini is not UTF-8"))?;
        let ini = parse_ini(&config);
        let net_kind: String = ini_get(&ini, &["train"], "model", path)?;
        if net_kind != "deepfilternet3" {
            return Err(bad(
                path,
                format!("model type '{net_kind}', expected deepfilternet3"),
            ));
        }
        let sr: usize = ini_get(&ini, &["df"], "sr", path)?;
        let dims = Dims {
            fft: ini_get(&ini, &["df"], "fft_size", path)?,
            hop: ini_get(&ini, &["df"], "hop_size", path)?,
            nb_erb: ini_get(&ini, &["df"], "nb_erb", path)?,
            nb_df: ini_get(&ini, &["df"], "nb_df", path)?,
            df_order: ini_get(&ini, &["df", "deepfilternet"], "df_order", path)?,
            df_lookahead: ini_get(&ini, &["df", "deepfilternet"], "df_lookahead", path)?,
            conv_lookahead: ini_get(&ini, &["deepfilternet"], "conv_lookahead", path)?,
            conv_ch: ini_get(&ini, &["deepfilternet"], "conv_ch", path)?,
            min_nb_erb_freqs: ini_get(&ini, &["df"], "min_nb_erb_freqs", path)?,
            norm_alpha: {
                let tau: f32 = ini_get(&ini, &["df"], "norm_tau", path)?;
                norm_alpha(sr, ini_get(&ini, &["df"], "hop_size", path)?, tau)
            },
        };
        let d = &dims;
        if sr != crate::MODEL_RATE as usize
            || d.hop != crate::MODEL_FRAME
            || d.fft != 2 * d.hop
            || d.nb_df > d.fft / 2
            || d.nb_erb < 2
            || !d.nb_erb.is_multiple_of(4)
            || d.df_order == 0
            || d.df_lookahead >= d.df_order
        {
            return Err(bad(
                path,
                format!(
                    "unsupported configuration (sr {sr}, {d:?}); Krisp runs 48 kHz, 480-sample hops, 960-point FFT"
                ),
            ));
        }
        let hidden = d.conv_ch * d.nb_erb / 4;
        let prep = |bytes: &[u8],
                    inputs: Vec<(&str, Vec<usize>, usize)>,
                    outputs: &[&str],
                    which: &str|
         -> Result<Arc<Plan>, Error> {
            let fail = |e: TractError| bad(path, format!("{which}: {e:#}"));
            let mut m = tract_onnx::onnx()
                .with_ignore_output_shapes(true)
                .model_for_read(&mut std::io::Cursor::new(bytes))
                .map_err(fail)?;
            let s = m.symbols.sym("S");
            let mut names = Vec::new();
            for (i, (name, shape, time_axis)) in inputs.iter().enumerate() {
                let mut v: TVec<TDim> = shape.iter().map(|&x| x.to_dim()).collect();
                v[*time_axis] = s.to_dim();
                m = m
                    .with_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), v))
                    .map_err(fail)?;
                names.push(*name);
            }
            m = m.with_input_names(names).map_err(fail)?;
            if !outputs.is_empty() {
                m = m.with_output_names(outputs).map_err(fail)?;
            }
            m.analyse(true).map_err(fail)?;
            let mut typed = m.into_typed().map_err(fail)?;
            typed.declutter().map_err(fail)?;
            let pulsed = PulsedModel::new(&typed, s, &1.to_dim()).map_err(fail)?;
            let opt = pulsed
                .into_typed()
                .map_err(fail)?
                .into_optimized()
                .map_err(fail)?;
            Ok(Arc::new(SimplePlan::new(opt).map_err(fail)?))
        };
        let enc = prep(
            &enc,
            vec![
                ("feat_erb", vec![1, 1, 0, d.nb_erb], 2),
                ("feat_spec", vec![1, 2, 0, d.nb_df], 2),
            ],
            &["e0", "e1", "e2", "e3", "emb", "c0", "lsnr"],
            "enc.onnx",
        )?;
        let erb_dec = prep(
            &erb_dec,
            vec![
                ("emb", vec![1, 0, hidden], 1),
                ("e3", vec![1, d.conv_ch, 0, d.nb_erb / 4], 2),
                ("e2", vec![1, d.conv_ch, 0, d.nb_erb / 4], 2),
                ("e1", vec![1, d.conv_ch, 0, d.nb_erb / 2], 2),
                ("e0", vec![1, d.conv_ch, 0, d.nb_erb], 2),
            ],
            &[],
            "erb_dec.onnx",
        )?;
        let df_dec = prep(
            &df_dec,
            vec![
                ("emb", vec![1, 0, hidden], 1),
                ("c0", vec![1, d.conv_ch, 0, d.nb_df], 2),
            ],
            &["coefs"],
            "df_dec.onnx",
        )?;
        let erb_bands = erb_band_widths(sr, d.fft, d.nb_erb, d.min_nb_erb_freqs);
        // Vorbis power-complementary window.
        let half = d.fft / 2;
        let window = (0..d.fft)
            .map(|i| {
                let s = (0.5 * std::f64::consts::PI * (i as f64 + 0.5) / half as f64).sin();
                (0.5 * std::f64::consts::PI * s * s).sin() as f32
            })
            .collect();
        Ok(Dfn3Net {
            dims,
            enc,
            erb_dec,
            df_dec,
            erb_bands,
            window,
        })
    }

    /// Hops of look-ahead the network was trained with.
    pub(crate) fn trained_lookahead(&self) -> usize {
        self.dims.conv_lookahead.max(self.dims.df_lookahead)
    }
}

/// Smoothing factor of the running feature normalisation for a time constant `tau` seconds,
/// rounded the way DeepFilterNet's training data was (to the fewest decimals below 1).
fn norm_alpha(sr: usize, hop: usize, tau: f32) -> f32 {
    let a = (-(hop as f32 / sr as f32) / tau).exp();
    let mut digits = 3;
    loop {
        let p = 10f32.powi(digits);
        let r = (a * p).round() / p;
        if r < 1.0 {
            return r;
        }
        digits += 1;
    }
}

/// One channel of DeepFilterNet3: STFT state, feature norms, spectrum history and the
/// recurrent state of the three networks.
pub(crate) struct Dfn3State {
    net: Arc<Dfn3Net>,
    lookahead: usize,
    enc: NetState,
    erb_dec: NetState,
    df_dec: NetState,
    fwd: Arc<dyn RealToComplex<f32>>,
    inv: Arc<dyn ComplexToReal<f32>>,
    fwd_scratch: Vec<Complex32>,
    inv_scratch: Vec<Complex32>,
    time_buf: Vec<f32>,
    prev_in: Vec<f32>,
    ola: Vec<f32>,
    /// Ring of the last `hist` noisy spectra; `head` is the newest.
    hist: Vec<Vec<Complex32>>,
    head: usize,
    spec_out: Vec<Complex32>,
    erb_mean: Vec<f32>,
    unit_mean: Vec<f32>,
    feat_erb: Vec<f32>,
    feat_cplx: Vec<f32>,
    gains: Vec<f32>,
    coefs: Vec<f32>,
    quiet_hops: usize,
}

// SAFETY: tract's per-run state keeps `Rc`s (intermediate values) and type-erased scratch that
// are not `Send` by type. Every one of them is created by and owned exclusively by this state's
// three `SimpleState`s; none is handed out (outputs are copied into plain buffers before
// `process_hop` returns), so moving the whole state to another thread moves every reference
// together, and nothing is ever shared between threads. The shared parts (plans, FFT plans)
// are `Arc`s of `Send + Sync` types.
unsafe impl Send for Dfn3State {}

impl Dfn3State {
    pub(crate) fn new(net: Arc<Dfn3Net>, opts: Dfn3Options) -> Result<Dfn3State, Error> {
        let d = net.dims.clone();
        let mk = |p: &Arc<Plan>| {
            SimpleState::new(p.clone()).map_err(|e| Error::ModelLoad {
                path: "<dfn3>".into(),
                reason: format!("{e:#}"),
            })
        };
        let mut planner = RealFftPlanner::<f32>::new();
        let fwd = planner.plan_fft_forward(d.fft);
        let inv = planner.plan_fft_inverse(d.fft);
        let n_freqs = d.fft / 2 + 1;
        // History: the DF window reaches df_order-1-df_lookahead hops before the target hop,
        // which is up to `trained lookahead` hops old.
        let hist_len = d.df_order + net.trained_lookahead();
        let lin = |a: f32, b: f32, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| a + (b - a) * i as f32 / (n - 1) as f32)
                .collect()
        };
        let st = Dfn3State {
            lookahead: opts.lookahead.min(net.trained_lookahead()),
            enc: mk(&net.enc)?,
            erb_dec: mk(&net.erb_dec)?,
            df_dec: mk(&net.df_dec)?,
            fwd_scratch: fwd.make_scratch_vec(),
            inv_scratch: inv.make_scratch_vec(),
            fwd,
            inv,
            time_buf: vec![0.0; d.fft],
            prev_in: vec![0.0; d.fft - d.hop],
            ola: vec![0.0; d.fft - d.hop],
            hist: vec![vec![Complex32::default(); n_freqs]; hist_len],
            head: 0,
            spec_out: vec![Complex32::default(); n_freqs],
            erb_mean: lin(-60.0, -90.0, d.nb_erb),
            unit_mean: lin(0.001, 0.0001, d.nb_df),
            feat_erb: vec![0.0; d.nb_erb],
            feat_cplx: vec![0.0; 2 * d.nb_df],
            gains: vec![0.0; d.nb_erb],
            coefs: vec![0.0; d.nb_df * d.df_order * 2],
            quiet_hops: 0,
            net,
        };
        Ok(st)
    }

    /// Algorithmic delay in samples: the overlap of the STFT plus the look-ahead.
    pub(crate) fn delay(&self) -> usize {
        let d = &self.net.dims;
        d.fft - d.hop + self.lookahead * d.hop
    }

    /// Denoises one hop (full scale ±1.0); returns speech presence 0–1 from the local SNR.
    pub(crate) fn process_hop(&mut self, input: &[f32], output: &mut [f32]) -> f32 {
        let net = self.net.clone();
        let d = &net.dims;
        let (hop, nb_df, order) = (d.hop, d.nb_df, d.df_order);
        let energy: f32 = input.iter().map(|x| x * x).sum::<f32>() / hop as f32;
        if energy < 1e-7 {
            self.quiet_hops += 1;
        } else {
            self.quiet_hops = 0;
        }
        if self.quiet_hops > 5 {
            // Long digital silence: nothing to denoise, keep the networks' state as it is.
            output.fill(0.0);
            return 0.0;
        }

        // Analysis: window [previous hop, this hop], FFT, scale by 1/fft.
        let split = d.fft - hop;
        let w = &net.window;
        let (first, second) = self.time_buf.split_at_mut(split);
        for ((t, &x), &wi) in first.iter_mut().zip(&self.prev_in).zip(&w[..split]) {
            *t = x * wi;
        }
        for ((t, &x), &wi) in second.iter_mut().zip(&input[..hop]).zip(&w[split..]) {
            *t = x * wi;
        }
        self.prev_in.copy_from_slice(&input[hop - split..]);
        let n = self.hist.len();
        self.head = (self.head + 1) % n;
        let head = self.head;
        let spec = &mut self.hist[head];
        let _ = self
            .fwd
            .process_with_scratch(&mut self.time_buf, spec, &mut self.fwd_scratch);
        let scale = 1.0 / d.fft as f32;
        for c in spec.iter_mut() {
            *c *= scale;
        }

        // Features of the newest hop.
        let alpha = d.norm_alpha;
        let mut bin = 0;
        for (b, &width) in net.erb_bands.iter().enumerate() {
            let inv_w = 1.0 / width as f32;
            let mut e = 0.0f32;
            for c in &spec[bin..bin + width] {
                e += (c.re * c.re + c.im * c.im) * inv_w;
            }
            bin += width;
            let db = (e + 1e-10).log10() * 10.0;
            let m = &mut self.erb_mean[b];
            *m = db * (1.0 - alpha) + *m * alpha;
            self.feat_erb[b] = (db - *m) / 40.0;
        }
        for (f, &c) in spec[..nb_df].iter().enumerate() {
            let m = &mut self.unit_mean[f];
            *m = c.norm() * (1.0 - alpha) + *m * alpha;
            let s = m.sqrt();
            self.feat_cplx[f] = c.re / s;
            self.feat_cplx[nb_df + f] = c.im / s;
        }

        let (lsnr, have_gains, have_coefs) = match self.run_nets() {
            Ok(x) => x,
            Err(_) => {
                // tract failing mid-stream would be a bug; pass the frame through unfiltered.
                (LSNR_MAX, false, false)
            }
        };

        // Enhance the target hop.
        let la = self.lookahead;
        self.spec_out
            .copy_from_slice(&self.hist[(self.head + n - la) % n]);
        if have_gains {
            let mut bin = 0;
            for (b, &width) in net.erb_bands.iter().enumerate() {
                let g = self.gains[b];
                for c in &mut self.spec_out[bin..bin + width] {
                    *c *= g;
                }
                bin += width;
            }
        }
        if have_coefs {
            // Tap k filters hop (target - (order-1-df_la) + k); hops not yet seen are dropped.
            let before = order - 1 - d.df_lookahead;
            for c in &mut self.spec_out[..nb_df] {
                *c = Complex32::default();
            }
            for k in 0..order {
                let rel = k as isize - before as isize; // hops after the target
                let back = la as isize - rel; // hops before the newest
                if back < 0 {
                    continue;
                }
                let x = &self.hist[(self.head + n - back as usize) % n];
                for (f, (o, &xf)) in self.spec_out[..nb_df].iter_mut().zip(x).enumerate() {
                    let i = (f * order + k) * 2;
                    *o += xf * Complex32::new(self.coefs[i], self.coefs[i + 1]);
                }
            }
        }

        // Synthesis: inverse FFT, window, overlap-add.
        let last = self.spec_out.len() - 1;
        self.spec_out[0].im = 0.0;
        self.spec_out[last].im = 0.0;
        let _ = self.inv.process_with_scratch(
            &mut self.spec_out,
            &mut self.time_buf,
            &mut self.inv_scratch,
        );
        for (x, &w) in self.time_buf.iter_mut().zip(w.iter()) {
            *x *= w;
        }
        for ((o, &t), &m) in output[..hop].iter_mut().zip(&self.time_buf).zip(&self.ola) {
            *o = t + m;
        }
        self.ola.copy_from_slice(&self.time_buf[hop..]);
        ((lsnr - LSNR_MIN) / (LSNR_MAX - LSNR_MIN)).clamp(0.0, 1.0)
    }

    /// Runs the encoder and, as its local-SNR estimate asks, the two decoders.
    fn run_nets(&mut self) -> TractResult<(f32, bool, bool)> {
        let d = &self.net.dims;
        let erb = Tensor::from_shape(&[1, 1, 1, d.nb_erb], &self.feat_erb)?;
        let cplx = Tensor::from_shape(&[1, 2, 1, d.nb_df], &self.feat_cplx)?;
        let mut out = self.enc.run(tvec!(erb.into(), cplx.into()))?;
        // Outputs: e0, e1, e2, e3, emb, c0, lsnr.
        let lsnr = *out[6].to_scalar::<f32>()?;
        let c0 = out.remove(5);
        let emb = out.remove(4);
        let e3 = out.remove(3);
        let e2 = out.remove(2);
        let e1 = out.remove(1);
        let e0 = out.remove(0);
        // Stage selection as in DeepFilterNet's C runtime: below -15 dB only noise (zero
        // gains), above 35 dB clean speech (untouched); the estimate is bounded to that range.
        if lsnr < LSNR_MIN {
            self.gains.fill(0.0);
            return Ok((lsnr, true, false));
        }
        if lsnr > LSNR_MAX {
            return Ok((lsnr, false, false));
        }
        let m = self.erb_dec.run(tvec!(emb.clone(), e3, e2, e1, e0))?;
        self.gains
            .copy_from_slice(m[0].as_slice::<f32>()?.get(..d.nb_erb).unwrap_or(&[]));
        let c = self.df_dec.run(tvec!(emb, c0))?;
        let c = c[0].as_slice::<f32>()?;
        let n = self.coefs.len();
        self.coefs.copy_from_slice(&c[..n]);
        Ok((lsnr, true, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erb_bands_cover_every_bin_once_and_respect_the_minimum_width() {
        let w = erb_band_widths(48_000, 960, 32, 2);
        assert_eq!(w.len(), 32);
        assert_eq!(w.iter().sum::<usize>(), 481);
        assert!(w.iter().all(|&x| x >= 2), "{w:?}");
        // Bands widen with frequency.
        assert!(w[31] > w[10] && w[10] >= w[0], "{w:?}");
    }

    #[test]
    fn norm_alpha_is_rounded_like_the_training_pipeline() {
        assert_eq!(norm_alpha(48_000, 480, 1.0), 0.99);
    }

    #[test]
    fn ini_reader_finds_keys_by_section() {
        let ini = parse_ini("[a]\nx = 1\n# c\n[b]\nx= 2 \n");
        let p = Path::new("t");
        assert_eq!(ini_get::<u32>(&ini, &["b"], "x", p).unwrap(), 2);
        assert_eq!(ini_get::<u32>(&ini, &["c", "a"], "x", p).unwrap(), 1);
        assert!(ini_get::<u32>(&ini, &["a"], "y", p).is_err());
    }
}
