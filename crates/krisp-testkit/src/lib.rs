//! Fixtures and measures shared by Krisp's test suites. Test-only: never a dependency of the
//! product.
//!
//! Audio comes from the real recordings in `../shared/audio` (override with
//! `KRISP_SHARED_AUDIO`), mixed at known SNRs.
#![deny(missing_docs)]

use std::ops::Range;
use std::path::{Path, PathBuf};

/// `../shared/audio` beside the repository, or `$KRISP_SHARED_AUDIO`.
pub fn shared_audio() -> PathBuf {
    std::env::var_os("KRISP_SHARED_AUDIO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/audio"))
}

/// Reads a WAV (any PCM or 32-bit float) as interleaved f32 in ±1.0, with its spec.
pub fn read_wav(path: &Path) -> (hound::WavSpec, Vec<f32>) {
    let mut r = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let spec = r.spec();
    let v = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(|s| s.unwrap()).collect(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.unwrap() as f32 * scale)
                .collect()
        }
    };
    (spec, v)
}

/// Writes mono 32-bit float audio.
pub fn write_f32_wav(path: &Path, rate: u32, x: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in x {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

/// Reads a mono 48 kHz fixture from `../shared/audio`.
pub fn read_fixture(name: &str) -> Vec<f32> {
    let (spec, v) = read_wav(&shared_audio().join(name));
    assert_eq!((spec.sample_rate, spec.channels), (48_000, 1), "{name}");
    v
}

fn speech_with(secs: f32, pause: impl Fn(usize) -> usize) -> Vec<f32> {
    let parts = [
        read_fixture("speech_front_center.wav"),
        read_fixture("speech_rear_right.wav"),
        read_fixture("speech_side_right.wav"),
    ];
    let want = (secs * 48_000.0) as usize;
    let mut out = Vec::with_capacity(want + 96_000);
    let mut i = 0;
    while out.len() < want {
        out.extend_from_slice(&parts[i % 3]);
        out.extend(std::iter::repeat_n(0.0, pause(i)));
        i += 1;
    }
    out.truncate(want);
    out
}

/// About `secs` seconds of real speech: the three fixtures with 200 ms pauses, looped.
pub fn speech(secs: f32) -> Vec<f32> {
    speech_with(secs, |_| 9_600)
}

/// Like [`speech`] but with pauses of varying length, so the clip never repeats and
/// cross-correlation alignment against it is unambiguous.
pub fn speech_varied(secs: f32) -> Vec<f32> {
    speech_with(secs, |i| 4_800 + (i * 7_919) % 9_600)
}

/// The real noise fixture looped to `len` samples, starting at `offset`.
pub fn noise(len: usize, offset: usize) -> Vec<f32> {
    let n = read_fixture("alsa_noise.wav");
    (0..len).map(|i| n[(i + offset) % n.len()]).collect()
}

/// Sum of squares.
pub fn energy(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// `clean + noise`, the noise scaled to `snr_db` over the whole clip.
pub fn mix(clean: &[f32], noise: &[f32], snr_db: f64) -> Vec<f32> {
    let g = (energy(clean) / energy(noise) / 10f64.powf(snr_db / 10.0)).sqrt() as f32;
    clean.iter().zip(noise).map(|(&c, &n)| c + g * n).collect()
}

/// Scale-invariant signal-to-distortion ratio in dB.
pub fn si_sdr(reference: &[f32], estimate: &[f32]) -> f64 {
    let n = reference.len().min(estimate.len());
    let (r, e) = (&reference[..n], &estimate[..n]);
    let dot: f64 = r.iter().zip(e).map(|(&a, &b)| a as f64 * b as f64).sum();
    let alpha = dot / energy(r);
    let (mut num, mut den) = (0.0, 0.0);
    for (&a, &b) in r.iter().zip(e) {
        let t = alpha * a as f64;
        num += t * t;
        den += (b as f64 - t) * (b as f64 - t);
    }
    10.0 * (num / den.max(1e-20)).log10()
}

/// The lag in `lags` (how much later `y` is than `x`; negative: earlier) with the highest
/// normalised correlation, and that correlation.
pub fn best_lag(x: &[f32], y: &[f32], lags: Range<i64>) -> (i64, f64) {
    let mut best = (0, f64::MIN);
    for lag in lags {
        let (mut dot, mut ex, mut ey) = (0.0, 0.0, 0.0);
        for (i, &a) in x.iter().enumerate() {
            let j = i as i64 + lag;
            if j < 0 || j >= y.len() as i64 {
                continue;
            }
            let b = y[j as usize] as f64;
            dot += a as f64 * b;
            ex += a as f64 * a as f64;
            ey += b * b;
        }
        let c = dot / (ex * ey).sqrt().max(1e-20);
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

/// [`best_lag`] over `lo..=hi` for long ranges: a coarse search on 16× decimated signals,
/// then a fine one around its result.
pub fn find_lag_in(x: &[f32], y: &[f32], lo: i64, hi: i64) -> (i64, f64) {
    let dec =
        |s: &[f32]| -> Vec<f32> { s.chunks(16).map(|c| c.iter().sum::<f32>() / 16.0).collect() };
    let (coarse, _) = best_lag(&dec(x), &dec(y), lo / 16..hi / 16 + 1);
    let c = coarse * 16;
    best_lag(x, y, (c - 32).max(lo)..(c + 33).min(hi + 1))
}

/// Interleaves `channels` copies of `x`, each channel scaled a little differently.
pub fn interleave(x: &[f32], channels: usize) -> Vec<f32> {
    x.iter()
        .flat_map(|&s| (0..channels).map(move |c| s * (1.0 - 0.1 * c as f32)))
        .collect()
}

/// Channel `c` of interleaved audio.
pub fn channel(x: &[f32], channels: usize, c: usize) -> Vec<f32> {
    x.iter().skip(c).step_by(channels).copied().collect()
}

/// Runs of exact digital silence at least `min` samples long, as (start, length).
pub fn zero_runs(x: &[f32], min: usize) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &v) in x.iter().chain(std::iter::once(&1.0)).enumerate() {
        match (v == 0.0, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= min {
                    runs.push((s, i - s));
                }
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// Share of CPU time the hypervisor stole from this (virtual) machine since `since`, from
/// /proc/stat, and the counters to pass next time. Audio servers miss their deadlines when it
/// is high; tests report it next to dropouts.
pub fn steal_share(since: Option<(u64, u64)>) -> (f64, (u64, u64)) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let steal = fields.get(7).copied().unwrap_or(0);
    let share = match since {
        Some((t0, s0)) if total > t0 => (steal - s0) as f64 / (total - t0) as f64,
        _ => 0.0,
    };
    (share, (total, steal))
}

/// Longest run of exact zeros in `x`.
pub fn longest_zero_run(x: &[f32]) -> usize {
    let (mut best, mut cur) = (0, 0);
    for &v in x {
        if v == 0.0 {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs_are_found_at_the_edges_too() {
        let x = [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0];
        assert_eq!(zero_runs(&x, 2), vec![(0, 2), (5, 3)]);
        assert_eq!(zero_runs(&x, 1).len(), 3);
        assert!(zero_runs(&[1.0; 4], 1).is_empty());
    }

    #[test]
    fn lag_search_finds_a_known_shift_both_ways() {
        let x: Vec<f32> = (0..4000).map(|i| ((i * i) as f32 * 0.001).sin()).collect();
        let mut y = vec![0.0; 137];
        y.extend_from_slice(&x);
        assert_eq!(best_lag(&x, &y, 0..300).0, 137);
        assert_eq!(find_lag_in(&x, &y, 0, 2000).0, 137);
        assert_eq!(best_lag(&y, &x, -300..0).0, -137);
    }

    #[test]
    fn si_sdr_of_a_scaled_copy_is_huge_and_of_noise_is_low() {
        let x: Vec<f32> = (0..4800).map(|i| (i as f32 * 0.05).sin()).collect();
        let y: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
        assert!(si_sdr(&x, &y) > 100.0);
        let z: Vec<f32> = x.iter().rev().copied().collect();
        assert!(si_sdr(&x, &z) < 0.0);
    }
}
