//! Cost of denoising: per 10 ms frame and per second of audio at common rates, with the bare
//! nnnoiseless frame loop as the in-run reference (the ratio is our overhead: resampling,
//! mixing, metering).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use krisp_benches::test_signal;
use krisp_dsp::{Config, Denoiser, Framing, Model};
use std::hint::black_box;

fn frame_48k_mono(c: &mut Criterion) {
    let model = Model::builtin();
    let x = test_signal(48_000, 1.0);
    let mut g = c.benchmark_group("frame_48k_mono");
    g.throughput(Throughput::Elements(480));
    let mut cfg = Config::new(48_000, 1);
    cfg.framing = Framing::Chunked;
    let mut dn = Denoiser::new(&cfg, &model).unwrap();
    let mut out = vec![0.0f32; 480];
    let mut i = 0;
    g.bench_function("krisp_denoiser", |b| {
        b.iter(|| {
            let s = (i % 99) * 480;
            i += 1;
            dn.process(black_box(&x[s..s + 480]), &mut out).unwrap();
        })
    });
    let mut st = nnnoiseless::DenoiseState::new();
    let scaled: Vec<f32> = x.iter().map(|v| v * 32768.0).collect();
    let mut j = 0;
    g.bench_function("nnnoiseless_reference", |b| {
        b.iter(|| {
            let s = (j % 99) * 480;
            j += 1;
            black_box(st.process_frame(&mut out, black_box(&scaled[s..s + 480])));
        })
    });
    g.finish();
}

fn second_of_audio(c: &mut Criterion) {
    let model = Model::builtin();
    let mut g = c.benchmark_group("second_of_audio_mono");
    g.sample_size(20);
    for rate in [16_000u32, 44_100, 48_000] {
        let x = test_signal(rate, 1.0);
        let mut out = vec![0.0f32; x.len()];
        let mut dn = Denoiser::new(&Config::new(rate, 1), &model).unwrap();
        let block = rate as usize / 100;
        g.bench_function(format!("{rate}Hz"), |b| {
            b.iter(|| {
                for (xi, yi) in x.chunks(block).zip(out.chunks_mut(block)) {
                    dn.process(black_box(xi), yi).unwrap();
                }
            })
        });
    }
    g.finish();
}

/// DeepFilterNet3 next to RNNoise in the same run: one 10 ms frame at 48 kHz mono through the
/// full Denoiser, for each model (the ratio dfn3 / rnnoise is the cost of the better model).
fn frame_48k_mono_dfn3(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let dfn3 = krisp_dsp::Manifest::load(&dir)
        .and_then(|m| m.load_model("dfn3"))
        .expect("models/ with the dfn3 entry");
    let x = test_signal(48_000, 1.0);
    let mut g = c.benchmark_group("frame_48k_mono_models");
    g.throughput(Throughput::Elements(480));
    for (name, model) in [("rnnoise", Model::builtin()), ("dfn3", dfn3)] {
        let mut cfg = Config::new(48_000, 1);
        cfg.framing = Framing::Chunked;
        let mut dn = Denoiser::new(&cfg, &model).unwrap();
        let mut out = vec![0.0f32; 480];
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let s = (i % 99) * 480;
                i += 1;
                dn.process(black_box(&x[s..s + 480]), &mut out).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    frame_48k_mono,
    second_of_audio,
    frame_48k_mono_dfn3
);
criterion_main!(benches);
