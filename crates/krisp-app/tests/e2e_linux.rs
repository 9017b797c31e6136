//! End to end, from the outside, the way a call app sees Krisp: a headless audio server with a
//! fake microphone playing real noisy speech, `krisp run --headless`, and recordings from
//! "Krisp Microphone". Runs on PulseAudio and on PipeWire (pipewire-pulse).

#[macro_use]
mod common;

use std::time::Duration;

use common::audio_server::{AudioServer, Kind};
use common::*;

/// SI-SDR gain the DSP guarantees at 5 dB SNR (krisp-dsp's tests establish it).
const SI_SDR_MARGIN_DB: f64 = 2.0;
/// SNR of the speech + noise the fake microphone plays.
const MIX_SNR_DB: f64 = 5.0;

/// Where second `w` of the mic recording sits in the Krisp Microphone recording: the lag in
/// samples (-50..+150 ms) and its correlation.
fn window_lag(mic: &[f32], out: &[f32], w: usize) -> (i64, f64) {
    let from = 48_000 * w;
    let (l, c) = find_lag_in(
        &mic[from..from + 48_000],
        &out[from - 2_400..from + 48_000 + 7_200],
        0,
        9_600,
    );
    (l - 2_400, c)
}

/// Records 20 s from the fake mic and "Krisp Microphone" (and with parecord), switching
/// noise removal off after 14 s, and checks latency, noise reduction, dropouts and the
/// click-free switch.
fn listen_and_check(
    server: &AudioServer,
    krisp: &Krisp,
    clean: &[f32],
    noisy: &[f32],
    run: &Run,
    dir: &std::path::Path,
    played_since: std::time::Instant,
) -> Result<(), Failure> {
    let kind = run.kind;
    // A plain recorder (like Zoom) gets audio from Krisp Microphone.
    let parec_path = dir.join("parecord.wav");
    let mut parec = server
        .cmd("parecord")
        .args([
            "-d",
            "krisp_mic",
            "--rate=48000",
            "--channels=1",
            "--format=float32le",
        ])
        .arg(&parec_path)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // 20 s from the fake mic and Krisp Microphone at once; `krisp off` after 14 s.
    let stats_before = krisp.status_json(server);
    let (_, steal0) = steal_share(None);
    let expected_off = (played_since.elapsed().as_secs_f64() * 48_000.0) as i64;
    let switch_at = 14.0;
    let rec = std::thread::scope(|sc| {
        let h = sc.spawn(|| record_pair(server, "fake_mic", "krisp_mic", 20.0));
        std::thread::sleep(Duration::from_secs_f32(switch_at));
        krisp.ctl(server, "off");
        h.join().unwrap()
    });
    let stats_after = krisp.status_json(server);
    let _ = parec.kill();
    let _ = parec.wait();
    let (mic, out, start_offset) = rec;
    eprintln!(
        "{kind:?}: stats before {}\n after {}",
        stats_before["stats"], stats_after["stats"]
    );
    if let Some(d) = std::env::var_os("KRISP_E2E_DUMP") {
        let d = std::path::PathBuf::from(d);
        let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
        write_f32_wav(&d.join(format!("{kind:?}-{n}-mic.wav")), 48_000, &mic);
        write_f32_wav(&d.join(format!("{kind:?}-{n}-out.wav")), 48_000, &out);
    }

    // Alignment, window by window: where each 1 s of the mic sits in the Krisp Microphone
    // recording (-50..+150 ms). Per window, because the engine's jitter buffer may grow after
    // an underrun on a starved machine and shrink again in a quiet moment: the delay is not
    // one constant over 18 s, and a single global lag would score those shifts as distortion.
    let lags: Vec<(i64, f64)> = (1..19).map(|w| window_lag(&mic, &out, w)).collect();
    let mut on_lags: Vec<i64> = lags[1..12].iter().map(|l| l.0).collect();
    on_lags.sort_unstable();
    let lag = on_lags[on_lags.len() / 2];
    let latency_ms = (lag + start_offset) as f64 / 48.0;
    let corr = lags[1..12].iter().map(|l| l.1).fold(f64::MAX, f64::min);
    eprintln!(
        "{kind:?}: added latency {latency_ms:.1} ms (median of 1 s windows; lowest corr {corr:.2}, \
         start offset {start_offset}); reported by the engine: {} ms, jitter buffer {} ms",
        stats_after["stats"]["added_latency_ms"], stats_after["stats"]["jitter_buffer_ms"]
    );
    // The bound is 40 ms (goal 20). With the pipe source (the default) the path
    // holds no buffer of ours: measured 12.7 ms on PulseAudio, 31.3 on PipeWire, bound 40.
    // With the null sink (`--device null-sink`) the jitter buffer grows (up to 40 ms) on a
    // machine whose hypervisor steals CPU, to stop the dropouts: measured 41-57 ms, so there
    // the test holds a 120 ms ceiling that still catches buffers that grow without bound;
    // docs/performance.md has the figures.
    // A model with more delay than RNNoise's 10 ms (DeepFilterNet3 live: 50 ms) moves the
    // bound by the difference.
    // The pipe source has no buffer of ours that could grow: there the 40 ms holds.
    let pipe = stats_after["stats"]["pipe"] == true;
    let bound = if pipe { 40.0 } else { 120.0 } + run.model_extra_ms;
    check!(
        latency_ms <= bound,
        "added latency {latency_ms:.1} ms exceeds {bound} ms"
    );

    // Noise reduction: find where the recording sits in the played file, then compare both
    // recordings with the clean speech at that place.
    let lo = (expected_off - 48_000 * 3).max(0);
    let (off, _) = find_lag_in(
        &mic[48_000..48_000 * 4],
        &noisy[lo as usize..],
        0,
        48_000 * 6,
    );
    let off = off + lo - 48_000;
    let seg = |x: &[f32], shift: i64, from: usize, to: usize| -> Vec<f32> {
        (from..to).map(|i| x[(i as i64 + shift) as usize]).collect()
    };
    // The Krisp Microphone recording aligned to the mic's samples `from..to` on its own
    // (-50..+150 ms): the delay may move between half-second windows (jitter buffer).
    let aligned = |from: usize, to: usize| -> Vec<f32> {
        let (l, _) = find_lag_in(&mic[from..to], &out[from - 2_400..to + 7_200], 0, 9_600);
        seg(&out, l - 2_400, from, to)
    };
    // Scored per half second, the median over 22 windows: a window hit by a gap or by a
    // jitter-buffer adjustment scores badly, and gaps are judged below on their own; the
    // median says how well the noise is removed.
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut befores, mut gains) = (Vec::new(), Vec::new());
    for w in 4..26 {
        let (from, to) = (24_000 * w, 24_000 * (w + 1));
        let clean_ref = seg(clean, off, from, to);
        let b = si_sdr(&clean_ref, &seg(&mic, 0, from, to));
        befores.push(b);
        gains.push(si_sdr(&clean_ref, &aligned(from, to)) - b);
    }
    let (before, gain) = (median(befores), median(gains));
    let after = before + gain;
    eprintln!(
        "{kind:?}: SI-SDR {before:.2} -> {after:.2} dB, median of 0.5 s windows (file offset {off})"
    );
    // The fake mic plays a 5 dB SNR mix; its recording scores about that. Far below, the
    // server itself dropped or mangled the test's audio before Krisp saw it.
    if before < MIX_SNR_DB - 3.0 {
        return Err(Failure::Environment(format!(
            "the fake mic itself arrived mangled: SI-SDR {before:.1} dB for a {MIX_SNR_DB} dB mix"
        )));
    }
    check!(
        gain >= SI_SDR_MARGIN_DB,
        "noise reduced by only {gain:.2} dB SI-SDR"
    );

    // Dropouts: runs of digital silence while speech + noise is playing.
    let xr = |v: &serde_json::Value, k: &str| v["stats"][k].as_u64().unwrap_or(0);
    let underruns = xr(&stats_after, "underruns") - xr(&stats_before, "underruns");
    let live = &out[48_000..48_000 * 19];
    let gaps = zero_runs(live, 48);
    let lost: usize = gaps.iter().map(|g| g.1).sum();
    let longest = gaps.iter().map(|g| g.1).max().unwrap_or(0);
    let (steal, _) = steal_share(Some(steal0));
    eprintln!(
        "{kind:?}: {} gaps, {lost} samples lost, longest {longest}; engine underruns {underruns}; \
         CPU stolen by the hypervisor meanwhile {:.0} %",
        gaps.len(),
        steal * 100.0
    );
    // A gap is audible, but a shared virtual machine stalls now and then (the hypervisor
    // steals CPU in bursts; pw-top shows every node of the graph missing deadlines then, the
    // player's included). The engine answers an underrun by growing its jitter buffer, so
    // the test bounds the damage: no gap longer than 21 ms (1024 samples) and under 1 % of
    // the audio lost. A broken feeder (priming, pacing, rate) loses far more.
    check!(
        longest <= 1024,
        "dropout: {longest} zero samples in a row (engine underruns meanwhile: {underruns}, \
         {:.0} % CPU stolen)",
        steal * 100.0
    );
    check!(
        lost * 100 <= live.len(),
        "{lost} samples lost in {} gaps (engine underruns meanwhile: {underruns}, \
         {:.0} % CPU stolen)",
        gaps.len(),
        steal * 100.0
    );

    // `krisp off` turned the output into pass-through, without a click.
    let sw = ((switch_at as f64 + 1.0) * 48_000.0) as usize;
    // After the switch the output is the input (median of eight half-second windows).
    let pass_sdr = median(
        (0..8)
            .map(|k| {
                let from = sw + 24_000 * k;
                si_sdr(
                    &seg(&mic, 0, from, from + 24_000),
                    &aligned(from, from + 24_000),
                )
            })
            .collect(),
    );
    eprintln!("{kind:?}: pass-through SI-SDR vs mic {pass_sdr:.1} dB");
    check!(
        pass_sdr > 20.0,
        "after `krisp off` output is not the input: {pass_sdr:.1} dB"
    );
    // Largest sample-to-sample step, not counting the edges of gaps (judged above).
    let step = |s: &[f32]| {
        s.windows(2)
            .filter(|w| w[0] != 0.0 && w[1] != 0.0)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0f32, f32::max)
    };
    let around = &out[sw - 48_000 * 2..sw];
    check!(
        step(around) <= step(&mic[48_000..48_000 * 19]) * 1.1,
        "click at the switch: step {} vs signal's largest {}",
        step(around),
        step(&mic[48_000..48_000 * 19])
    );
    let parec_len = std::fs::metadata(&parec_path).map(|m| m.len()).unwrap_or(0);
    check!(
        parec_len > 48_000 * 4 * 10,
        "parecord got only {parec_len} bytes"
    );

    Ok(())
}

/// `krisp model NAME` while a program records from Krisp Microphone: the engine crossfades
/// from one model to the other, so the recording has no gap and the voice goes on.
fn switch_model_while_recording(server: &AudioServer, krisp: &Krisp, to: &str) {
    krisp.ctl(server, "on");
    let (mic, out, _) = std::thread::scope(|sc| {
        let h = sc.spawn(|| record_pair(server, "fake_mic", "krisp_mic", 6.0));
        std::thread::sleep(Duration::from_secs(3));
        krisp.ctl(server, &format!("model {to}"));
        h.join().unwrap()
    });
    let st = krisp.status_json(server);
    assert_eq!(st["model"], to, "{st}");
    let gaps = zero_runs(&out[48_000..], 48);
    let longest = gaps.iter().map(|g| g.1).max().unwrap_or(0);
    eprintln!(
        "switch to {to}: {} gaps, longest {longest}; late model frames {}",
        gaps.len(),
        st["stats"]["late_model_frames"]
    );
    assert!(
        longest <= 1024,
        "a gap of {longest} samples around the model switch"
    );
    // The voice continues after the switch (at the new model's delay).
    for k in [1usize, 4] {
        let w = 48_000 * k..48_000 * (k + 1);
        // From 50 ms early: the Krisp Microphone recording may start later than the mic's by
        // more than the path's delay (a pipe source delivers from the first written chunk).
        let (_, c) = find_lag_in(&mic[w.clone()], &out[w.start - 2_400..], 0, 12_000);
        eprintln!("switch to {to}: second {k} correlation with the mic {c:.2}");
        assert!(c > 0.5, "second {k}: voice lost around the switch ({c:.2})");
    }
}

/// The two end-to-end runs share the machine's two cores; running them one at a time keeps
/// the audio servers' timing honest.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What one end-to-end run covers: the engine's arguments, and whether the server restart,
/// SIGKILL and clean-exit phases follow the recording (they do not depend on the model).
struct Run<'a> {
    kind: Kind,
    args: &'a [&'a str],
    faults: bool,
    /// After the recording: switch to this model with `krisp model` while recording.
    switch_to: Option<&'a str>,
    /// The model's live delay beyond RNNoise's, in ms.
    model_extra_ms: f64,
}

fn end_to_end(kind: Kind) {
    end_to_end_with(Run {
        kind,
        args: &[],
        faults: true,
        switch_to: None,
        model_extra_ms: 0.0,
    })
}

fn end_to_end_with(run: Run) {
    let kind = run.kind;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut server) = AudioServer::start(kind, 48_000, 1) else {
        return;
    };
    let dir = server.runtime_dir().to_path_buf();
    let (clean, noisy) = speech_and_noisy(130.0, MIX_SNR_DB);
    let wav = dir.join("noisy.wav");
    write_f32_wav(&wav, 48_000, &noisy);
    let _player = Player::start(&server, &wav);
    let played_since = std::time::Instant::now();

    let mut args = vec!["--input", "fake_mic"];
    args.extend_from_slice(run.args);
    let mut krisp = Krisp::start(&server, &args);
    assert!(
        server.wait_for(Duration::from_secs(10), |s| s.source_count("krisp_mic")
            == 1),
        "Krisp Microphone did not appear; logs in {}",
        dir.display()
    );
    let desc = server.pactl(&["list", "sources"]).unwrap();
    assert!(desc.contains("Description: Krisp Microphone"), "{desc}");
    assert!(
        server.wait_for(Duration::from_secs(15), |_| {
            krisp.status_json(&server)["stats"]["captured_frames"]
                .as_u64()
                .unwrap_or(0)
                > 48_000
        }),
        "the microphone never started; logs in {}",
        dir.display()
    );

    // The recording phase is tried at most three times: a failure is printed loudly and a third
    // failure fails the test (the machines are shared; CI runs this alone).
    let mut result = Ok(());
    for attempt in 1..=3 {
        krisp.ctl(&server, "on");
        std::thread::sleep(Duration::from_millis(500));
        result = listen_and_check(&server, &krisp, &clean, &noisy, &run, &dir, played_since);
        match &result {
            Ok(()) => break,
            Err(e) => eprintln!("\n!!!!! {kind:?}: recording attempt {attempt} failed: {e:?}\n"),
        }
    }
    match result {
        Ok(()) => {}
        Err(Failure::Krisp(e)) => panic!("{kind:?}: {e}"),
        // PulseAudio carries the fake mic cleanly on every machine seen so far: if it cannot,
        // something is wrong with the test itself.
        Err(Failure::Environment(e)) if kind == Kind::PulseAudio => panic!("{kind:?}: {e}"),
        // PipeWire at the small quanta these low-latency clients pull it to drops the test's
        // own fake-mic audio on a virtual machine whose CPU is stolen in bursts. Then the
        // audio quality of Krisp cannot be judged here; the rest (device, restart, crash,
        // clean exit) still is, below.
        Err(Failure::Environment(e)) => eprintln!(
            "\n!!!!! {kind:?}: AUDIO QUALITY NOT MEASURED on this machine: {e} in every attempt \
             (CPU stolen by the hypervisor). Device, restart, crash and exit are still checked.\n"
        ),
    }

    if let Some(to) = run.switch_to {
        switch_model_while_recording(&server, &krisp, to);
    }
    if !run.faults {
        return;
    }
    // The audio server crashes and restarts: Krisp Microphone comes back by itself.
    server.restart();
    assert!(
        server.wait_for(Duration::from_secs(10), |s| s.source_count("krisp_mic")
            == 1),
        "Krisp Microphone did not come back after the server restarted; logs in {}",
        dir.display()
    );

    // krisp is SIGKILLed and started again: exactly one Krisp Microphone.
    krisp.sigkill();
    let krisp2 = Krisp::start(&server, &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        server.source_count("krisp_mic"),
        1,
        "duplicate or missing Krisp Microphone"
    );
    let mods = server.pactl(&["list", "short", "modules"]).unwrap();
    // The remembered input is used on the second start.
    let st = krisp2.status_json(&server);
    // No module for our own PipeWire node (it goes with the killed process's connection),
    // one for a pipe source, a null sink and its remap source otherwise.
    let (node, pipe) = (st["stats"]["node"] == true, st["stats"]["pipe"] == true);
    assert_eq!(
        mods.matches("krisp.owner=krisp_mic").count(),
        if node {
            0
        } else if pipe {
            1
        } else {
            2
        },
        "{mods}"
    );
    assert_eq!(st["input"], "fake_mic", "{st}");

    // Clean exit removes the device.
    let mut krisp2 = krisp2;
    assert!(krisp2.interrupt(), "krisp did not exit cleanly on Ctrl-C");
    assert_eq!(
        server.source_count("krisp_mic"),
        0,
        "Krisp Microphone left behind"
    );
    let fifo = server.runtime_dir().join("krisp").join("krisp_mic.fifo");
    assert!(!fifo.exists(), "{} left behind", fifo.display());
}

#[test]
fn end_to_end_on_pulseaudio() {
    end_to_end(Kind::PulseAudio);
}

#[test]
fn end_to_end_on_pipewire() {
    end_to_end(Kind::PipeWire);
}

/// The high-quality model live: `krisp run --model dfn3` (DeepFilterNet3 on its worker
/// thread), the same recording and checks as with RNNoise.
#[test]
fn end_to_end_with_deepfilternet3_on_pulseaudio() {
    end_to_end_with(Run {
        kind: Kind::PulseAudio,
        args: &["--model", "dfn3"],
        faults: false,
        switch_to: Some("rnnoise"),
        // 30 ms algorithmic + 20 ms worker hand-off, vs RNNoise's 10 ms.
        model_extra_ms: 40.0,
    })
}

/// Microphones at other rates, and a mono microphone the server reports as stereo: the
/// server converts to the engine's 48 kHz mono, and voice comes through denoised — not
/// silent, not robotic.
#[test]
fn microphones_at_other_rates_and_layouts_come_through() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (rate, channels) in [
        (16_000, 1),
        (44_100, 1),
        (96_000, 1),
        (192_000, 1),
        (48_000, 2),
    ] {
        let Some(server) = AudioServer::start(Kind::PulseAudio, rate, channels) else {
            return;
        };
        let (_clean, noisy) = speech_and_noisy(30.0, 10.0);
        let wav = server.runtime_dir().join("noisy.wav");
        write_f32_wav(&wav, 48_000, &noisy);
        let _player = Player::start(&server, &wav);
        let krisp = Krisp::start(&server, &["--input", "fake_mic"]);
        assert!(
            server.wait_for(Duration::from_secs(15), |s| {
                krisp.status_json(s)["stats"]["captured_frames"]
                    .as_u64()
                    .unwrap_or(0)
                    > 48_000
            }),
            "{rate} Hz x{channels}: the microphone never started"
        );
        // Let the start-up trims of the jitter buffer settle, then judge 1 s windows (each
        // aligned on its own) so a trim inside a window cannot blur the measure.
        std::thread::sleep(Duration::from_secs(2));
        let (mic, out, _) = record_pair(&server, "fake_mic", "krisp_mic", 6.0);
        let (mut corr, mut lag) = (f64::MIN, 0);
        for k in 1..5 {
            let w = 48_000 * k..48_000 * (k + 1);
            // From 50 ms early, as in `switch_model_while_recording`.
            let (l, c) = find_lag_in(&mic[w.clone()], &out[w.start - 2_400..], 0, 12_000);
            if c > corr {
                (corr, lag) = (c, l - 2_400);
            }
        }
        let seg_out = &out[(48_000 + lag) as usize..(48_000 * 5 + lag) as usize];
        let ratio = energy(seg_out) / energy(&mic[48_000..48_000 * 5]);
        eprintln!("{rate} Hz x{channels}: correlation {corr:.2}, energy ratio {ratio:.2}");
        assert!(
            corr > 0.6,
            "{rate} Hz x{channels}: voice lost or garbled ({corr:.2})"
        );
        assert!(
            ratio > 0.2 && ratio < 1.2,
            "{rate} Hz x{channels}: output level off ({ratio:.2})"
        );
        // Dropouts are judged by end_to_end_on_* (with its one retry on a starved machine);
        // here they are reported, since this test is about format conversion.
        eprintln!(
            "{rate} Hz x{channels}: longest run of zeros {}",
            longest_zero_run(seg_out)
        );
    }
}

/// Without a license the engine does not denoise: "Krisp Microphone" carries the microphone
/// untouched (not silence), and `krisp status` says why.
#[test]
fn without_a_license_the_microphone_passes_through_untouched() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = AudioServer::start(Kind::PulseAudio, 48_000, 1) else {
        return;
    };
    let (_clean, noisy) = speech_and_noisy(40.0, MIX_SNR_DB);
    let wav = server.runtime_dir().join("noisy.wav");
    write_f32_wav(&wav, 48_000, &noisy);
    let _player = Player::start(&server, &wav);
    let krisp = Krisp::start_with(&server, &["--input", "fake_mic"], false);
    assert!(
        server.wait_for(Duration::from_secs(15), |s| {
            krisp.status_json(s)["stats"]["captured_frames"]
                .as_u64()
                .unwrap_or(0)
                > 48_000
        }),
        "the microphone never started"
    );
    let st = krisp.status_json(&server);
    assert_eq!(st["enabled"], true, "{st}");
    assert_eq!(st["denoising"], false, "unlicensed must not denoise: {st}");
    let extra = st["extra"].to_string();
    assert!(
        extra.contains("unlicensed") && extra.contains("sign in"),
        "{st}"
    );
    let (mic, out, _) = record_pair(&server, "fake_mic", "krisp_mic", 8.0);
    let mut best = f64::MIN;
    for w in 2..7 {
        let from = 48_000 * w;
        let (l, _) = window_lag(&mic, &out, w);
        let start = (from as i64 + l) as usize;
        best = best.max(si_sdr(
            &mic[from..from + 48_000],
            &out[start..start + 48_000],
        ));
    }
    assert!(
        best > 20.0,
        "Krisp Microphone is not the microphone passed through: {best:.1} dB"
    );
}

/// The machine suspends and resumes (simulated as the issue suggests: the microphone and the
/// virtual device (the pipe source, or the null sink behind it) are suspended with pactl, then
/// resumed): audio comes back through
/// "Krisp Microphone" without anyone doing anything, and there is still exactly one.
#[test]
fn audio_comes_back_after_the_devices_are_suspended_and_resumed() {
    // PulseAudio only: pipewire-pulse's suspend-source does not stop a source that is in use
    // (measured: the microphone went on delivering, 97,440 frames in 2 s), so there the test
    // would prove nothing; PipeWire's restart is covered by the end-to-end test.
    suspend_and_resume(Kind::PulseAudio);
}

/// A server of `kind` whose fake microphone plays 40 s of noisy speech, and Krisp capturing
/// it (asserted: a second of it captured); `None` where the server is not installed.
fn krisp_on_a_playing_mic(kind: Kind) -> Option<(AudioServer, Player, Krisp)> {
    let server = AudioServer::start(kind, 48_000, 1)?;
    let (_clean, noisy) = speech_and_noisy(40.0, MIX_SNR_DB);
    let wav = server.runtime_dir().join("noisy.wav");
    write_f32_wav(&wav, 48_000, &noisy);
    let player = Player::start(&server, &wav);
    let krisp = Krisp::start(&server, &["--input", "fake_mic"]);
    assert!(
        server.wait_for(Duration::from_secs(15), |_| captured(&server, &krisp)
            > 48_000),
        "{kind:?}: the microphone never started"
    );
    Some((server, player, krisp))
}

/// Frames Krisp has captured from the microphone so far.
fn captured(server: &AudioServer, krisp: &Krisp) -> u64 {
    krisp.status_json(server)["stats"]["captured_frames"]
        .as_u64()
        .unwrap_or(0)
}

fn suspend_and_resume(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((server, _player, krisp)) = krisp_on_a_playing_mic(kind) else {
        return;
    };
    let captured = |k: &Krisp| captured(&server, k);
    // The virtual device: the pipe source itself, or the null sink behind the remap source.
    let device = if krisp.status_json(&server)["stats"]["pipe"] == true {
        ("source", "krisp_mic")
    } else {
        ("sink", "krisp_mic_sink")
    };
    for (kind, name) in [("source", "fake_mic"), device] {
        server
            .pactl(&[&format!("suspend-{kind}"), name, "1"])
            .unwrap_or_else(|| panic!("cannot suspend {name}"));
    }
    let at_suspend = captured(&krisp);
    std::thread::sleep(Duration::from_secs(2));
    let during = captured(&krisp) - at_suspend;
    assert!(
        during < 24_000,
        "the suspend did not stop the microphone ({during} frames in 2 s): the test proves nothing"
    );
    for (kind, name) in [("source", "fake_mic"), device] {
        server
            .pactl(&[&format!("suspend-{kind}"), name, "0"])
            .unwrap_or_else(|| panic!("cannot resume {name}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = captured(&krisp);
    let (mic, out, _) = record_pair(&server, "fake_mic", "krisp_mic", 4.0);
    let after = captured(&krisp);
    assert!(
        after - before >= 3 * 48_000,
        "capture did not resume: {} frames in 4 s",
        after - before
    );
    let (e_mic, e_out) = (energy(&mic[48_000..]), energy(&out[48_000..]));
    assert!(
        e_out > e_mic * 0.01,
        "Krisp Microphone stayed (nearly) silent after resume: {e_out:.3e} vs mic {e_mic:.3e}"
    );
    assert!(
        longest_zero_run(&out[48_000..]) < 4_800,
        "a gap of {} samples after resume",
        longest_zero_run(&out[48_000..])
    );
    assert_eq!(server.source_count("krisp_mic"), 1);
}

/// The microphone goes away while a program records from "Krisp Microphone", then comes back:
/// the recording never stalls (silence meanwhile, at the device's pace), and the voice returns
/// by itself. On PulseAudio (the pipe source) and PipeWire (our node),
/// where the control thread, then the capture thread, feed the silence.
#[test]
fn recorders_keep_receiving_while_the_microphone_is_gone_and_hear_it_again() {
    for kind in [Kind::PulseAudio, Kind::PipeWire] {
        microphone_gone_and_back(kind);
    }
}

fn microphone_gone_and_back(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((server, _player, krisp)) = krisp_on_a_playing_mic(kind) else {
        return;
    };
    let module = |s: &AudioServer| {
        s.pactl(&["list", "short", "modules"])
            .unwrap()
            .lines()
            .find(|l| l.contains("source_name=fake_mic"))
            .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>())
            .expect("the fake mic's module")
    };
    // Krisp Microphone as the default source, as many users set it: with the real microphone
    // as the configured default, PulseAudio 16 itself moves recorders of another source to it
    // when it comes back (reproduced with two remap sources and parecord, no Krisp involved).
    server.pactl(&["set-default-source", "krisp_mic"]).unwrap();
    let line = module(&server);
    let addr = format!("unix:{}/pulse/native", server.runtime_dir().display());
    let t0 = std::time::Instant::now();
    let rec = std::thread::spawn(move || record_one(&addr, "krisp_mic", 9.0, t0));
    std::thread::sleep(Duration::from_millis(2_500));
    server.pactl(&["unload-module", &line[0]]).unwrap();
    let gone = server.wait_for(Duration::from_secs(3), |_| {
        krisp.status_json(&server)["status"]
            .as_str()
            .is_some_and(|t| t.contains("gone") || t.contains("no microphone"))
    });
    assert!(
        gone,
        "{kind:?}: the status did not say the microphone is gone"
    );
    std::thread::sleep(Duration::from_millis(5_500).saturating_sub(t0.elapsed()));
    let mut load = vec!["load-module"];
    load.extend(
        line[1..]
            .iter()
            .map(String::as_str)
            .filter(|a| !a.is_empty()),
    );
    server.pactl(&load).unwrap();
    let r = rec.join().unwrap();
    let took = r.reads.last().unwrap().1;
    let (stall, stall_at) = r
        .reads
        .windows(2)
        .map(|w| (w[1].1 - w[0].1, w[0].1))
        .fold((0.0f64, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    let rms = |a: f32, b: f32| {
        let w = &r.samples[(a * 48_000.0) as usize..(b * 48_000.0) as usize];
        (energy(w) / w.len() as f64).sqrt()
    };
    let (before, during, after) = (rms(0.5, 2.0), rms(3.5, 5.0), rms(7.5, 9.0));
    eprintln!(
        "{kind:?}: microphone gone 2.5-5.5 s: RMS before {before:.4}, meanwhile {during:.6}, \
         after {after:.4}; 9 s recorded in {took:.2} s, longest wait for a read {:.0} ms at \
         {stall_at:.2} s",
        stall * 1e3
    );
    assert!(stall < 0.5, "{kind:?}: the recording stalled {stall:.2} s");
    assert!(took < 10.5, "{kind:?}: 9 s of audio took {took:.2} s");
    assert!(before > 0.003, "{kind:?}: no voice before ({before:.4})");
    assert!(
        during < before * 0.01,
        "{kind:?}: not silent while gone ({during:.5})"
    );
    assert!(
        after > 0.003,
        "{kind:?}: the voice did not come back ({after:.4})"
    );
    assert_eq!(server.source_count("krisp_mic"), 1);
}

/// Clock drift over a long run (a measured run, not part of CI: 10 minutes by default):
/// the microphone is a pipe source fed by this test at 48 kHz × (1 + `KRISP_DRIFT_PPM`/10⁶)
/// of the wall clock (default +200 ppm: a USB microphone's crystal against the audio
/// server's). A null-sink "Krisp Microphone" plays at the server's clock: without a bound the
/// engine's buffer would gain or lose 120 ms in 10 minutes. A pipe source (the default) runs
/// at the microphone's clock, so nothing can accumulate. The test knows when each input sample was
/// written and when each output sample arrived, so it measures the added latency from the
/// outside, second by second, and asserts that at the end it is within 5 ms of the start.
/// `cargo test -p krisp-app --test e2e_linux drift -- --ignored --nocapture`
/// (`KRISP_DRIFT_SECS`, `KRISP_DRIFT_PPM` to change the run; `KRISP_DRIFT_STEERING=1` turns on
/// the experimental `--drift-steering`).
#[test]
#[ignore = "a 10-minute measured run; see docs/performance.md"]
fn added_latency_stays_put_while_the_microphone_clock_drifts() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("KRISP_DRIFT_SECS", 600.0);
    let ppm = env("KRISP_DRIFT_PPM", 200.0);
    let Some(server) = AudioServer::start(Kind::PulseAudio, 48_000, 1) else {
        return;
    };
    let (_clean, noisy) = speech_and_noisy(60.0, MIX_SNR_DB);
    let fifo = server.runtime_dir().join("drift-mic.fifo");
    server
        .pactl(&[
            "load-module",
            "module-pipe-source",
            "source_name=drift_mic",
            &format!("file={}", fifo.display()),
            "format=float32le",
            "rate=48000",
            "channels=1",
        ])
        .expect("cannot load module-pipe-source");
    let mic_rate = 48_000.0 * (1.0 + ppm / 1e6);
    let t0 = std::time::Instant::now();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, noisy, fifo) = (stop.clone(), noisy.clone(), fifo.clone());
        std::thread::spawn(move || {
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let mut written = 0usize;
            let mut bytes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let due = (t0.elapsed().as_secs_f64() * mic_rate) as usize;
                bytes.clear();
                for k in written..due {
                    bytes.extend_from_slice(&noisy[k % noisy.len()].to_le_bytes());
                }
                if pipe.write_all(&bytes).is_err() {
                    return;
                }
                written = due;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut args = vec!["--input", "drift_mic"];
    if std::env::var_os("KRISP_DRIFT_STEERING").is_some() {
        args.push("--drift-steering");
    }
    let krisp = Krisp::start(&server, &args);
    assert!(
        server.wait_for(Duration::from_secs(15), |s| s.source_count("krisp_mic")
            == 1),
        "Krisp Microphone did not appear"
    );
    // Record Krisp Microphone, noting when each read returned (as `record_pair` does).
    let addr = format!("unix:{}/pulse/native", server.runtime_dir().display());
    let common::Recording {
        samples: out,
        reads,
    } = common::record_one(&addr, "krisp_mic", secs as f32, t0);
    let stats = krisp.status_json(&server);
    stop.store(true, Ordering::Relaxed);
    let _ = feeder.join();
    eprintln!(
        "drift {ppm:+} ppm, {secs} s: engine stats {}",
        stats["stats"]
    );

    // The input sample an output sample carries was written at
    // k / mic_rate. Per 1 s window every 10 s: find k near the arrival (0..200 ms earlier).
    let input_at = |k: usize| noisy[k % noisy.len()];
    let mut series = vec![];
    // When output sample j arrived: the earliest of the next 5 s of reads, each taken back by
    // what it had received after j. (Local, not one origin for the whole run: a pipe-source
    // Krisp Microphone runs at the microphone's clock, not at 48 kHz of the wall clock.)
    let arrived = |j: usize| -> f64 {
        reads
            .iter()
            .skip_while(|r| r.0 < j)
            .take_while(|r| r.0 <= j + 5 * 48_000)
            .map(|&(len, t)| t - (len - j) as f64 / 48_000.0)
            .fold(f64::MAX, f64::min)
    };
    let mut w = 5usize;
    while (w + 1) * 48_000 <= out.len() {
        let j = w * 48_000;
        let arrival = arrived(j);
        let k0 = ((arrival - 0.2) * mic_rate).max(0.0) as usize;
        let input: Vec<f32> = (k0..k0 + 48_000 + 9_600).map(input_at).collect();
        let (lag, corr) = find_lag_in(&out[j..j + 48_000], &input, 0, 9_600);
        // lag: out[j] matches input[k0 + lag]... find_lag_in(x, y) aligns x[i] with y[i + lag].
        let k = k0 as f64 + lag as f64;
        let latency_ms = (arrival - k / mic_rate) * 1000.0;
        if corr > 0.5 {
            series.push((w, latency_ms, corr));
        }
        w += 10;
    }
    for (w, l, c) in &series {
        eprintln!("  t={w:>4} s  added latency {l:6.1} ms  (corr {c:.2})");
    }
    assert!(series.len() >= 4, "too few windows matched: {series:?}");
    let median = |s: &[(usize, f64, f64)]| {
        let mut v: Vec<f64> = s.iter().map(|x| x.1).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let q = (series.len() / 4).max(1);
    let (start, end) = (median(&series[..q]), median(&series[series.len() - q..]));
    eprintln!(
        "drift {ppm:+} ppm over {secs} s: added latency {start:.1} ms at the start, {end:.1} ms \
         at the end (medians of the first and last quarter's windows)"
    );
    assert!(
        (end - start).abs() <= 5.0,
        "added latency moved from {start:.1} ms to {end:.1} ms"
    );
}

/// A second microphone comes and goes, as a USB headset does: chosen by name, Krisp falls
/// back to the default microphone while it is unplugged and goes back to it when it returns;
/// with no choice, Krisp follows the system's default input (a headset plugged in, a pick in
/// the system settings) but stays put when Krisp Microphone itself becomes the default. Heard
/// from the outside: the headset plays a 1 kHz tone, the default microphone noisy speech, and
/// noise removal is off so the tone comes through untouched.
#[test]
fn the_capture_goes_back_to_the_chosen_microphone_and_follows_the_default() {
    for kind in [Kind::PulseAudio, Kind::PipeWire] {
        capture_follows_the_choice(kind);
    }
}

/// Loads the second fake microphone, "headset" (a null sink and a remap source, as the fake
/// mic); returns its module ids.
fn plug_headset(server: &AudioServer) -> Vec<String> {
    let sink = server
        .pactl(&[
            "load-module",
            "module-null-sink",
            "sink_name=headset_sink rate=48000 channels=1 channel_map=mono \
             sink_properties=device.description=HeadsetSink",
        ])
        .expect("load the headset's sink");
    let source = server
        .pactl(&[
            "load-module",
            "module-remap-source",
            "master=headset_sink.monitor source_name=headset channels=1 channel_map=mono \
             source_properties=device.description=Headset",
        ])
        .expect("load the headset's source");
    vec![source.trim().to_owned(), sink.trim().to_owned()]
}

/// Share of a 1 s recording of Krisp Microphone that is the headset's 1 kHz tone (Goertzel
/// power over total power), and its RMS.
fn tone_share(server: &AudioServer) -> (f64, f64) {
    let addr = format!("unix:{}/pulse/native", server.runtime_dir().display());
    let r = record_one(&addr, "krisp_mic", 1.5, std::time::Instant::now());
    let x = &r.samples[24_000..];
    let w = 2.0 * std::f64::consts::PI * 1_000.0 / 48_000.0;
    let (re, im) = x.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, &s)| {
        let p = w * n as f64;
        (re + s as f64 * p.cos(), im - s as f64 * p.sin())
    });
    let total = energy(x);
    let tone = 2.0 * (re * re + im * im) / x.len() as f64;
    (tone / total.max(1e-12), (total / x.len() as f64).sqrt())
}

fn capture_follows_the_choice(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = AudioServer::start(kind, 48_000, 1) else {
        return;
    };
    let (_clean, noisy) = speech_and_noisy(40.0, MIX_SNR_DB);
    let speech_wav = server.runtime_dir().join("noisy.wav");
    write_f32_wav(&speech_wav, 48_000, &noisy);
    let tone: Vec<f32> = (0..40 * 48_000)
        .map(|n| 0.3 * (2.0 * std::f32::consts::PI * 1_000.0 * n as f32 / 48_000.0).sin())
        .collect();
    let tone_wav = server.runtime_dir().join("tone.wav");
    write_f32_wav(&tone_wav, 48_000, &tone);
    let _speech = Player::start(&server, &speech_wav);
    let modules = plug_headset(&server);
    let mut headset = Some(Player::start_on(&server, &tone_wav, "headset_sink"));
    let krisp = Krisp::start(&server, &["--input", "headset"]);
    let on = |what: &str| {
        let what = format!("running: {what} ->");
        server.wait_for(Duration::from_secs(8), |s| {
            krisp.status_json(s)["status"]
                .as_str()
                .is_some_and(|t| t.starts_with(&what))
        })
    };
    assert!(
        on("headset"),
        "{kind:?}: Krisp did not start on the headset"
    );
    krisp.ctl(&server, "off");
    // Up to 6 recordings of 1.5 s until the expected microphone is heard (a source that was
    // just loaded, and its player, take a moment to start).
    let hears = |when: &str, tone: bool| {
        let mut last = (0.0, 0.0);
        for _ in 0..6 {
            last = tone_share(&server);
            let (share, rms) = last;
            if (tone && share > 0.9) || (!tone && share < 0.1 && rms > 0.003) {
                eprintln!("{kind:?}: {when}: tone share {share:.3}, RMS {rms:.4}");
                return;
            }
        }
        panic!(
            "{kind:?}: {when}: not the {} (tone share {:.3}, RMS {:.4})",
            if tone {
                "headset"
            } else {
                "default microphone"
            },
            last.0,
            last.1
        );
    };
    let hears_tone = |when: &str| hears(when, true);
    let hears_speech = |when: &str| hears(when, false);
    hears_tone("chosen headset");

    // Unplugged: the default microphone carries on.
    drop(headset.take());
    for m in &modules {
        server.pactl(&["unload-module", m]).unwrap();
    }
    assert!(
        on("fake_mic"),
        "{kind:?}: no fallback to the default microphone"
    );
    hears_speech("headset unplugged");

    // Plugged in again: back to the chosen headset by itself.
    let _replugged = plug_headset(&server);
    headset = Some(Player::start_on(&server, &tone_wav, "headset_sink"));
    let t = std::time::Instant::now();
    assert!(
        on("headset"),
        "{kind:?}: Krisp stayed on the default microphone after the headset came back"
    );
    eprintln!(
        "{kind:?}: back on the headset {:.2} s after it returned",
        t.elapsed().as_secs_f64()
    );
    hears_tone("headset plugged in again");

    // No choice: the system default, wherever it goes, but never Krisp Microphone.
    krisp.ctl(&server, "input");
    assert!(on("fake_mic"), "{kind:?}: not on the default microphone");
    hears_speech("following the default");
    server.pactl(&["set-default-source", "headset"]).unwrap();
    assert!(on("headset"), "{kind:?}: did not follow the new default");
    hears_tone("the headset became the default");
    server.pactl(&["set-default-source", "krisp_mic"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(on("headset"), "{kind:?}: left the headset for its own mic");
    hears_tone("Krisp Microphone became the default");
    assert_eq!(server.source_count("krisp_mic"), 1);
    drop(headset);

    // `krisp status | head -1`: a reader that goes away ends the command quietly (it
    // panicked on the broken pipe).
    let mut status = server
        .cmd(krisp_bin())
        .arg("status")
        .env("KRISP_SOCKET", server.runtime_dir().join("krisp-test.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(status.stdout.take());
    let out = status.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "krisp status: {err}");
}

/// Added latency from the fake microphone to Krisp Microphone, from `secs` of both recorded at
/// once: the median over 1 s windows of where each window of the mic sits in the output, and
/// the lowest correlation among them.
fn pair_latency_ms(server: &AudioServer, secs: usize) -> (f64, f64) {
    let (mic, out, start_offset) = record_pair(server, "fake_mic", "krisp_mic", secs as f32);
    let mut lags: Vec<(i64, f64)> = (1..secs - 1)
        .map(|w| window_lag(&mic, &out, w))
        .filter(|l| l.1 > 0.5)
        .collect();
    assert!(lags.len() >= secs / 2, "too few windows matched: {lags:?}");
    let corr = lags.iter().map(|l| l.1).fold(f64::MAX, f64::min);
    lags.sort_unstable_by_key(|l| l.0);
    ((lags[lags.len() / 2].0 + start_offset) as f64 / 48.0, corr)
}

/// The PipeWire node over a long run (a measured run, not part of CI: 10 minutes by default,
/// `KRISP_SOAK_SECS`): with a call app recording all along, the added latency measured every
/// minute from the outside stays within 5 ms of where it started. The node delivers each block
/// in the cycle that the microphone's delivery triggers, so no buffer of ours sits between
/// two clocks; this run shows that nothing else creeps either (the ring's accounting, the
/// capture's fragments, the recorders' buffers). Runs on whichever PipeWire is installed
/// (`benches/live/pipewire-backports.sh` for 1.4.2).
/// `cargo test -p krisp-app --test e2e_linux soak -- --ignored --nocapture`
#[test]
#[ignore = "a 10-minute measured run; see docs/performance.md"]
fn soak_added_latency_stays_put_on_the_pipewire_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let secs: u64 = std::env::var("KRISP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let Some(server) = AudioServer::start(Kind::PipeWire, 48_000, 1) else {
        return;
    };
    let (_clean, noisy) = speech_and_noisy(60.0, MIX_SNR_DB);
    let wav = server.runtime_dir().join("noisy.wav");
    write_f32_wav(&wav, 48_000, &noisy);
    let _player = Player::start(&server, &wav);
    let krisp = Krisp::start(&server, &["--input", "fake_mic", "--device", "node"]);
    assert!(
        server.wait_for(Duration::from_secs(15), |s| s.source_count("krisp_mic")
            == 1),
        "Krisp Microphone did not appear"
    );
    // The call app, recording for the whole run.
    let mut call = server
        .cmd("parecord")
        .args(["-d", "krisp_mic", "--latency-msec=20", "/dev/null"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    let mut series = vec![];
    loop {
        let at = t0.elapsed().as_secs();
        // (A recorder of a source that is gone gets the default source on PipeWire.)
        assert_eq!(server.source_count("krisp_mic"), 1, "t={at} s");
        let (ms, corr) = pair_latency_ms(&server, 10);
        eprintln!("  t={at:>4} s  added latency {ms:6.1} ms  (lowest corr {corr:.2})");
        series.push(ms);
        if at >= secs {
            break;
        }
        let next = Duration::from_secs((at / 60 + 1) * 60);
        std::thread::sleep(
            next.saturating_sub(t0.elapsed())
                .min(Duration::from_secs(60)),
        );
    }
    let stats = krisp.status_json(&server);
    let _ = call.kill();
    let _ = call.wait();
    eprintln!("soak, {secs} s: engine stats {}", stats["stats"]);
    let (start, end) = (series[0], *series.last().unwrap());
    eprintln!(
        "soak over {secs} s: added latency {start:.1} ms at the start, {end:.1} ms at the end"
    );
    assert!(
        (end - start).abs() <= 5.0,
        "added latency moved from {start:.1} ms to {end:.1} ms"
    );
    assert_eq!(stats["stats"]["underruns"], 0, "{}", stats["stats"]);
}
