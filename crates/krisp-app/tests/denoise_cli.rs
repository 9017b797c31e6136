//! `krisp denoise` as a user runs it: real files in, real files out, clear one-line errors.

use std::path::Path;
use std::process::Command;

use hound::{SampleFormat, WavSpec};
use krisp_testkit::{mix, noise, read_wav, si_sdr, speech};

fn krisp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_krisp"))
}

fn write_wav(path: &Path, spec: WavSpec, x: &[f32]) {
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in x {
        match (spec.sample_format, spec.bits_per_sample) {
            (SampleFormat::Float, _) => w.write_sample(s).unwrap(),
            (SampleFormat::Int, 8) => w.write_sample((s * 127.0) as i8).unwrap(),
            (SampleFormat::Int, 16) => w.write_sample((s * 32767.0) as i16).unwrap(),
            (SampleFormat::Int, 24) => w.write_sample((s * 8_388_607.0) as i32).unwrap(),
            (SampleFormat::Int, _) => w.write_sample((s as f64 * 2_147_483_647.0) as i32).unwrap(),
        }
    }
    w.finalize().unwrap();
}

/// Noisy speech (fixtures + real noise at 5 dB) and the clean reference, 48 kHz mono.
fn noisy_and_clean() -> (Vec<f32>, Vec<f32>) {
    let clean = speech(7.0);
    let noisy = mix(&clean, &noise(clean.len(), 999), 5.0);
    (noisy, clean)
}

fn mono_spec(rate: u32, fmt: SampleFormat, bits: u16, channels: u16) -> WavSpec {
    WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: fmt,
    }
}

#[test]
fn denoise_improves_real_noisy_speech_and_keeps_format_and_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let (noisy, clean) = noisy_and_clean();
    let inp = dir.path().join("noisy.wav");
    let out = dir.path().join("clean.wav");
    write_wav(&inp, mono_spec(48_000, SampleFormat::Int, 16, 1), &noisy);
    let st = krisp().arg("denoise").arg(&inp).arg(&out).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (spec, y) = read_wav(&out);
    assert_eq!(spec, mono_spec(48_000, SampleFormat::Int, 16, 1));
    assert_eq!(y.len(), noisy.len());
    // OUT gets the permissions any new file of the user gets (umask), not a private 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    assert_eq!(format!("{:o}", mode(&out)), format!("{:o}", mode(&plain)));
    let s = 24_000;
    let gain = si_sdr(&clean[s..], &y[s..]) - si_sdr(&clean[s..], &noisy[s..]);
    assert!(gain > 2.5, "SI-SDR gain {gain:.2} dB");
}

#[test]
fn every_pcm_and_float_format_rate_and_layout_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (noisy, _) = noisy_and_clean();
    let x: Vec<f32> = noisy[..48_000].iter().map(|v| v * 0.5).collect();
    let cases = [
        (48_000, SampleFormat::Int, 8, 1),
        (48_000, SampleFormat::Int, 16, 2),
        (44_100, SampleFormat::Int, 24, 1),
        (16_000, SampleFormat::Int, 32, 1),
        (96_000, SampleFormat::Float, 32, 2),
    ];
    for (rate, fmt, bits, ch) in cases {
        let spec = mono_spec(rate, fmt, bits, ch);
        let inter: Vec<f32> = x
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, ch as usize))
            .collect();
        let inp = dir.path().join(format!("in-{rate}-{bits}-{ch}.wav"));
        let out = dir.path().join(format!("out-{rate}-{bits}-{ch}.wav"));
        write_wav(&inp, spec, &inter);
        let st = krisp()
            .args(["denoise", "-q"])
            .arg(&inp)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{spec:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let (got_spec, y) = read_wav(&out);
        assert_eq!(got_spec, spec);
        assert_eq!(y.len(), inter.len(), "{spec:?}");
        assert!(
            y.iter().any(|&v| v.abs() > 0.01),
            "{spec:?}: output is silent"
        );
    }
}

#[test]
fn zero_strength_returns_the_input_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (noisy, _) = noisy_and_clean();
    let inp = dir.path().join("in.wav");
    let out = dir.path().join("out.wav");
    write_wav(
        &inp,
        mono_spec(48_000, SampleFormat::Int, 16, 1),
        &noisy[..96_000],
    );
    let st = krisp()
        .args(["denoise", "--strength", "0"])
        .arg(&inp)
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success());
    assert_eq!(read_wav(&inp).1, read_wav(&out).1);
}

fn fails_with(args: &[&std::ffi::OsStr], needle: &str) {
    let st = krisp().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "should fail: {args:?}");
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one-line error expected: {err:?}"
    );
}

#[test]
fn bad_inputs_give_one_line_errors_and_never_touch_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("precious.wav");
    std::fs::write(&out, b"keep me").unwrap();
    let d = |n: &str| dir.path().join(n).into_os_string();
    let o = out.clone().into_os_string();
    let den = std::ffi::OsStr::new("denoise");

    fails_with(&[den, &d("missing.wav"), &o], "does not exist");

    std::fs::write(dir.path().join("text.wav"), b"this is not audio at all").unwrap();
    fails_with(&[den, &d("text.wav"), &o], "not a WAV file");

    let good = dir.path().join("good.wav");
    write_wav(
        &good,
        mono_spec(48_000, SampleFormat::Int, 16, 1),
        &vec![0.1; 48_000],
    );
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.path().join("cut.wav"), &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&[den, &d("cut.wav"), &o], "truncated");

    write_wav(
        &dir.path().join("slow.wav"),
        mono_spec(4_000, SampleFormat::Int, 16, 1),
        &[0.1; 400],
    );
    fails_with(&[den, &d("slow.wav"), &o], "unsupported sample rate 4000");

    fails_with(
        &[
            den,
            &good.clone().into_os_string(),
            &good.clone().into_os_string(),
        ],
        "refusing to overwrite",
    );
    fails_with(
        &[
            den,
            std::ffi::OsStr::new("--model"),
            std::ffi::OsStr::new("nope"),
            &good.into_os_string(),
            &o,
        ],
        "unknown model 'nope'",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn the_shipped_sample_denoises() {
    let dir = tempfile::tempdir().unwrap();
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/samples/noisy-speech-5db.wav");
    let out = dir.path().join("out.wav");
    let st = krisp()
        .arg("denoise")
        .arg(&sample)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    let (_, a) = read_wav(&sample);
    let (_, b) = read_wav(&out);
    assert!(
        rms(&b) < rms(&a),
        "noise removed: rms {} -> {}",
        rms(&a),
        rms(&b)
    );
}
