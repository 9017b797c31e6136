//! Behaviour of the realtime denoiser on real speech and noise (../shared/audio).

mod common;

use common::*;
use krisp_dsp::{Config, Denoiser, Framing, Handle, Model, offline};
use proptest::prelude::*;

const RATES: [u32; 12] = [
    8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000,
];

/// Runs `input` through `dn` in blocks whose sizes cycle through `blocks` (frames).
fn run_blocks(dn: &mut Denoiser, input: &[f32], blocks: &[usize]) -> Vec<f32> {
    let ch = dn.channels();
    let mut out = vec![0.0; input.len()];
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = (blocks[i % blocks.len()].max(1) * ch).min(input.len() - pos);
        dn.process(&input[pos..pos + n], &mut out[pos..pos + n])
            .unwrap();
        pos += n;
        i += 1;
    }
    out
}

fn noisy_speech_48k(secs: f32, snr: f64) -> (Vec<f32>, Vec<f32>) {
    let clean = speech(secs);
    let n = noise(clean.len(), 12_345);
    let noisy = mix(&clean, &n, snr);
    (clean, noisy)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn arbitrary_block_sizes_match_frame_aligned_blocks(
        blocks in prop::collection::vec(1usize..2000, 1..8),
        rate in prop::sample::select(vec![16_000u32, 44_100, 48_000]),
        channels in 1usize..3,
    ) {
        let (_, noisy) = noisy_speech_48k(1.5, 5.0);
        let x = interleave(&resample_from_48k(&noisy, rate), channels);
        let model = Model::builtin();
        let mut a = Denoiser::new(&Config::new(rate, channels), &model).unwrap();
        let chunk = a.chunk_frames();
        let reference = run_blocks(&mut a, &x, &[chunk]);
        let mut b = Denoiser::new(&Config::new(rate, channels), &model).unwrap();
        let got = run_blocks(&mut b, &x, &blocks);
        prop_assert!(reference == got, "block sizes {:?} changed the output", blocks);
    }
}

#[test]
fn chunked_framing_gives_same_output_with_one_chunk_less_latency() {
    let (_, noisy) = noisy_speech_48k(2.0, 5.0);
    let model = Model::builtin();
    let mut any = Denoiser::new(&Config::new(48_000, 1), &model).unwrap();
    let mut cfg = Config::new(48_000, 1);
    cfg.framing = Framing::Chunked;
    let mut chunked = Denoiser::new(&cfg, &model).unwrap();
    assert_eq!(any.latency() - chunked.latency(), any.chunk_frames() - 1);
    let a = run_blocks(&mut any, &noisy, &[480]);
    let c = run_blocks(&mut chunked, &noisy, &[960]);
    let d = any.latency() - chunked.latency();
    assert_eq!(&a[d..], &c[..c.len() - d]);
    assert!(chunked.process(&[0.0; 100], &mut [0.0; 100]).is_err());
}

#[test]
fn bypass_is_bit_exact_delayed_input_at_every_rate() {
    let model = Model::builtin();
    for rate in RATES {
        for channels in [1, 2] {
            let handle = Handle::new();
            handle.set_bypass(true);
            let mut dn =
                Denoiser::with_handle(&Config::new(rate, channels), &model, handle).unwrap();
            let x = interleave(&resample_from_48k(&speech(0.5), rate), channels);
            let y = run_blocks(&mut dn, &x, &[37, 512, 1]);
            let lat = dn.latency() * channels;
            assert!(y[..lat].iter().all(|&s| s == 0.0), "{rate} Hz");
            assert_eq!(&y[lat..], &x[..x.len() - lat], "{rate} Hz x{channels}");
        }
    }
}

#[test]
fn zero_strength_is_the_untouched_input_delayed() {
    let model = Model::builtin();
    let handle = Handle::new();
    handle.set_strength_db(0.0);
    let mut dn = Denoiser::with_handle(&Config::new(48_000, 1), &model, handle).unwrap();
    let (_, x) = noisy_speech_48k(1.0, 0.0);
    let y = run_blocks(&mut dn, &x, &[333]);
    let lat = dn.latency();
    assert_eq!(&y[lat..], &x[..x.len() - lat]);
}

#[test]
fn silence_in_gives_exact_silence_out_at_every_rate_and_layout() {
    let model = Model::builtin();
    for rate in RATES {
        for channels in [1, 2, 8] {
            let mut dn = Denoiser::new(&Config::new(rate, channels), &model).unwrap();
            let x = vec![0.0; rate as usize / 5 * channels];
            let y = run_blocks(&mut dn, &x, &[97, 1024]);
            assert!(y.iter().all(|&s| s == 0.0), "{rate} Hz x{channels}");
        }
    }
}

#[test]
fn nan_and_inf_become_silence_and_never_reach_the_output() {
    let model = Model::builtin();
    let mut dn = Denoiser::new(&Config::new(48_000, 1), &model).unwrap();
    let (_, mut x) = noisy_speech_48k(2.0, 10.0);
    for (i, v) in x[24_000..24_100].iter_mut().enumerate() {
        *v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3];
    }
    x[50_000] = f32::MIN_POSITIVE / 8.0; // a denormal
    let y = run_blocks(&mut dn, &x, &[256]);
    assert!(y.iter().all(|s| s.is_finite()));
    assert!(dn.handle().nonfinite_chunks() >= 1);
    // Output stays alive after the bad chunk: speech is still there a second later.
    let tail = &y[60_000..];
    assert!(energy(tail) > 1e-3, "denoiser went dead after NaN input");
}

#[test]
fn every_rate_and_channel_count_round_trips_voice_at_the_reported_latency() {
    let model = Model::builtin();
    let clean = speech(3.0);
    for rate in RATES {
        let mono = resample_from_48k(&clean, rate);
        let channel_counts: &[usize] = if rate == 48_000 {
            &[1, 2, 3, 4, 5, 6, 7, 8]
        } else {
            &[1, 2]
        };
        for &channels in channel_counts {
            let mut dn = Denoiser::new(&Config::new(rate, channels), &model).unwrap();
            let x = interleave(&mono, channels);
            let block = dn.chunk_frames() + 3;
            let y = run_blocks(&mut dn, &x, &[block]);
            for c in [0, channels - 1] {
                let xi = channel(&x, channels, c);
                let yi = channel(&y, channels, c);
                let lat = dn.latency() as i64;
                let (lag, corr) = best_lag(&xi, &yi, lat - 40..lat + 40);
                assert!(
                    (lag - lat).abs() <= 2,
                    "{rate} Hz x{channels} ch{c}: voice at lag {lag}, reported {}",
                    dn.latency()
                );
                // Clean voice passes: strongly correlated and not much quieter.
                assert!(
                    corr > 0.8,
                    "{rate} Hz x{channels} ch{c}: correlation {corr}"
                );
                let ratio = energy(&yi) / energy(&xi);
                assert!(
                    ratio > 0.3 && ratio < 1.5,
                    "{rate} Hz: energy ratio {ratio}"
                );
            }
        }
    }
}

#[test]
fn latency_is_at_most_one_chunk_plus_model_delay_at_48k() {
    let model = Model::builtin();
    let dn = Denoiser::new(&Config::new(48_000, 1), &model).unwrap();
    assert_eq!(dn.latency(), 479 + 480);
    let mut cfg = Config::new(48_000, 1);
    cfg.framing = Framing::Chunked;
    assert_eq!(Denoiser::new(&cfg, &model).unwrap().latency(), 480);
}

/// The SI-SDR gain the DSP guarantees on the real fixtures at 5 dB SNR (measured +3.3 dB on
/// the broadband ALSA noise); the engine's end-to-end test uses the same margin.
pub const SI_SDR_GAIN_DB_AT_5DB: f64 = 2.0;

fn si_sdr_gain(clean: &[f32], noisy: &[f32]) -> (f64, f64) {
    let model = Model::builtin();
    let out = offline::denoise_interleaved(noisy, 48_000, 1, &model, 100.0, |_| {}).unwrap();
    // Skip the first 0.5 s (model warm-up) when scoring.
    let s = 24_000;
    let before = si_sdr(&clean[s..], &noisy[s..]);
    let after = si_sdr(&clean[s..], &out[s..]);
    (before, after)
}

#[test]
fn si_sdr_improves_on_real_speech_and_broadband_noise() {
    // Margins: measured gains were +4.5, +3.3 and +1.5 dB; each bound leaves ~1 dB of slack.
    for (snr, margin) in [(0.0, 3.5), (5.0, SI_SDR_GAIN_DB_AT_5DB), (10.0, 0.5)] {
        let (clean, noisy) = noisy_speech_48k(8.0, snr);
        let (before, after) = si_sdr_gain(&clean, &noisy);
        eprintln!(
            "SNR {snr} dB: SI-SDR {before:.2} -> {after:.2} dB (+{:.2})",
            after - before
        );
        assert!(
            after - before >= margin,
            "SNR {snr}: SI-SDR gain {:.2} dB below the {margin} dB margin",
            after - before
        );
    }
}

#[test]
fn si_sdr_improves_on_brown_noise_with_mains_hum() {
    let clean = speech(8.0);
    let mut seed = 0x2545_f491_u64;
    let mut brown = 0.0f32;
    let n: Vec<f32> = (0..clean.len())
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let white = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            brown = 0.995 * brown + 0.1 * white;
            let t = i as f32 / 48_000.0;
            let hum: f32 = [50.0f32, 100.0, 150.0]
                .iter()
                .map(|f| (2.0 * std::f32::consts::PI * f * t).sin() * 0.3 / f * 50.0)
                .sum();
            brown + hum * 0.2
        })
        .collect();
    let noisy = mix(&clean, &n, 5.0);
    let (before, after) = si_sdr_gain(&clean, &noisy);
    eprintln!(
        "brown+hum 5 dB: SI-SDR {before:.2} -> {after:.2} dB (+{:.2})",
        after - before
    );
    assert!(after - before >= 4.0, "gain {:.2} dB", after - before);
}

#[test]
fn offline_output_is_aligned_sample_for_sample() {
    let model = Model::builtin();
    let clean = speech(3.0);
    for rate in [16_000, 44_100, 48_000] {
        let x = resample_from_48k(&clean, rate);
        let y = offline::denoise_interleaved(&x, rate, 1, &model, 100.0, |_| {}).unwrap();
        assert_eq!(x.len(), y.len());
        let (lag, _) = best_lag(&x, &y, 0..50);
        let lag = lag as usize;
        assert!(lag <= 1, "{rate}: offline output lags by {lag}");
    }
}

#[test]
fn strength_limits_attenuation_of_noise() {
    let model = Model::builtin();
    let n: Vec<f32> = noise(96_000, 0).iter().map(|v| v * 0.3).collect();
    let rms_db = |x: &[f32]| 10.0 * (energy(x) / x.len() as f64).log10();
    let full = offline::denoise_interleaved(&n, 48_000, 1, &model, 100.0, |_| {}).unwrap();
    let lim = offline::denoise_interleaved(&n, 48_000, 1, &model, 6.0, |_| {}).unwrap();
    let s = 9_600;
    let (inp, full, lim) = (rms_db(&n[s..]), rms_db(&full[s..]), rms_db(&lim[s..]));
    eprintln!("noise {inp:.1} dB, full {full:.1} dB, 6 dB limit {lim:.1} dB");
    assert!(inp - full > 10.0, "full strength removes noise");
    assert!(
        inp - lim < 6.5 && inp - lim > 3.0,
        "6 dB limit: {:.1} dB",
        inp - lim
    );
}

#[test]
fn toggling_bypass_is_click_free() {
    let model = Model::builtin();
    let (_, x) = noisy_speech_48k(3.0, 5.0);
    let handle = Handle::new();
    let mut dn = Denoiser::with_handle(&Config::new(48_000, 1), &model, handle.clone()).unwrap();
    let mut y = vec![0.0; x.len()];
    let block = 480;
    let mut toggles = vec![];
    for (i, (xi, yi)) in x.chunks(block).zip(y.chunks_mut(block)).enumerate() {
        if i % 37 == 20 {
            handle.set_bypass(!handle.bypass());
            toggles.push(i * block);
        }
        dn.process(xi, yi).unwrap();
    }
    assert!(toggles.len() >= 3);
    // The largest step in the output near a toggle is no larger than the largest step the
    // signal itself has anywhere (no discontinuity introduced by switching).
    let step = |s: &[f32]| {
        s.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0f32, f32::max)
    };
    let signal_max_step = step(&x).max(step(&y[..toggles[0]]));
    for &t in &toggles {
        let w = &y[t.saturating_sub(10)..(t + 480).min(y.len())];
        assert!(
            step(w) <= signal_max_step * 1.05,
            "click at {t}: {} > {}",
            step(w),
            signal_max_step
        );
    }
}

#[test]
fn full_scale_input_is_not_clipped() {
    let model = Model::builtin();
    let clean = speech(4.0);
    let peak = clean.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let x: Vec<f32> = clean.iter().map(|v| v / peak * 0.999).collect();
    let y = offline::denoise_interleaved(&x, 48_000, 1, &model, 100.0, |_| {}).unwrap();
    let out_peak = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(out_peak <= 1.0, "output peak {out_peak} exceeds full scale");
}

#[test]
fn meters_report_voice_activity_and_levels() {
    let model = Model::builtin();
    let clean = speech(2.0);
    let mut dn = Denoiser::new(&Config::new(48_000, 1), &model).unwrap();
    let h = dn.handle();
    let mut max_vad = 0.0f32;
    let mut out = vec![0.0; 480];
    for block in clean.chunks(480).take(150) {
        dn.process(block, &mut out[..block.len()]).unwrap();
        max_vad = max_vad.max(h.vad());
    }
    assert!(max_vad > 0.9, "VAD never saw the speech: {max_vad}");
    assert!(h.input_rms() >= 0.0 && h.output_rms() >= 0.0);
    let mut dn = Denoiser::new(&Config::new(48_000, 1), &model).unwrap();
    dn.process(&[0.0; 4800], &mut [0.0; 4800]).unwrap();
    assert_eq!(dn.handle().vad(), 0.0);
    assert_eq!(dn.handle().input_rms(), 0.0);
}

#[test]
fn bad_layouts_are_refused_clearly() {
    let model = Model::builtin();
    for ch in [0, 9] {
        let err = Denoiser::new(&Config::new(48_000, ch), &model).unwrap_err();
        assert!(err.to_string().contains("channel"), "{err}");
    }
    let mut dn = Denoiser::new(&Config::new(48_000, 2), &model).unwrap();
    assert!(dn.process(&[0.0; 3], &mut [0.0; 3]).is_err());
    assert!(dn.process(&[0.0; 4], &mut [0.0; 6]).is_err());
}
