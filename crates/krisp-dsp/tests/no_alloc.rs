//! The realtime path never allocates: `process` runs under assert_no_alloc, which aborts the
//! test process on any allocation or deallocation (in release builds too).

use assert_no_alloc::{AllocDisabler, assert_no_alloc};
use krisp_dsp::{Config, Denoiser, Framing, Model};

#[global_allocator]
static ALLOC: AllocDisabler = AllocDisabler;

#[test]
fn process_never_allocates_at_any_rate_block_size_or_setting() {
    let model = Model::builtin();
    for rate in [8000, 16_000, 44_100, 48_000, 96_000, 192_000] {
        for channels in [1, 2] {
            let mut dn = Denoiser::new(&Config::new(rate, channels), &model).unwrap();
            let h = dn.handle();
            let input: Vec<f32> = (0..rate as usize / 2 * channels)
                .map(|i| ((i as f32) * 0.013).sin() * 0.3)
                .collect();
            let mut output = vec![0.0f32; input.len()];
            let mut bad = input.clone();
            bad[100] = f32::NAN;
            assert_no_alloc(|| {
                let mut pos = 0;
                for (i, n) in [1usize, 7, 480, 1023, 33, 2048].iter().cycle().enumerate() {
                    let n = (n * channels).min(input.len() - pos);
                    if n == 0 {
                        break;
                    }
                    if i == 3 {
                        h.set_bypass(true);
                    }
                    if i == 5 {
                        h.set_strength_db(12.0);
                    }
                    dn.process(&input[pos..pos + n], &mut output[pos..pos + n])
                        .unwrap();
                    pos += n;
                }
                dn.process(&bad, &mut output).unwrap();
                let _ = dn.process(&input[..3], &mut output[..2]); // error path too
            });
        }
    }
    let mut cfg = Config::new(48_000, 1);
    cfg.framing = Framing::Chunked;
    let mut dn = Denoiser::new(&cfg, &model).unwrap();
    let input = vec![0.1f32; 960];
    let mut output = vec![0.0f32; 960];
    assert_no_alloc(|| {
        dn.process(&input, &mut output).unwrap();
        let _ = dn.process(&input[..100], &mut output[..100]);
    });
}

#[test]
fn a_new_sample_rate_is_swapped_in_without_allocating_on_the_realtime_thread() {
    use krisp_dsp::swap_channel;
    let model = Model::builtin();
    let first = Denoiser::new(&Config::new(48_000, 1), &model).unwrap();
    let handle = first.handle();
    let (mut ctl, mut rt) = swap_channel(first);
    // Off the realtime thread: build the 44.1 kHz processor sharing the same controls.
    let next = Denoiser::with_handle(&Config::new(44_100, 1), &model, handle.clone()).unwrap();
    assert!(ctl.offer(next).is_ok());
    let input = vec![0.1f32; 441];
    let mut output = vec![0.0f32; 441];
    assert_no_alloc(|| {
        rt.poll();
        rt.denoiser().process(&input, &mut output).unwrap();
        rt.poll(); // nothing pending: no-op
    });
    assert_eq!(rt.denoiser().sample_rate(), 44_100);
    handle.set_bypass(true);
    assert!(rt.denoiser().handle().bypass(), "controls carried over");
    assert!(
        ctl.collect(),
        "the old 48 kHz denoiser came back to be freed here"
    );
}

/// DeepFilterNet3's inference (tract) allocates, so live use runs it on a worker thread
/// (`Config::model_thread`); the realtime thread only exchanges frames with it.
#[test]
fn dfn3_on_its_model_thread_never_allocates_on_the_realtime_thread() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let model = krisp_dsp::Manifest::load(&dir)
        .unwrap()
        .load_model("dfn3")
        .unwrap();
    for (rate, channels) in [(48_000, 1), (16_000, 2)] {
        let mut cfg = Config::new(rate, channels);
        cfg.model_thread = true;
        let mut dn = Denoiser::new(&cfg, &model).unwrap();
        let mut inline = Config::new(rate, channels);
        inline.model_thread = false;
        let sync_latency = Denoiser::new(&inline, &model).unwrap().latency();
        assert_eq!(
            dn.latency(),
            sync_latency + (2 * 480 * rate as usize / 48_000),
            "two model frames of hand-off"
        );
        let h = dn.handle();
        let input: Vec<f32> = (0..rate as usize / 2 * channels)
            .map(|i| ((i as f32) * 0.013).sin() * 0.3)
            .collect();
        let mut output = vec![0.0f32; input.len()];
        assert_no_alloc(|| {
            let mut pos = 0;
            for (i, n) in [1usize, 7, 480, 1023, 33, 2048].iter().cycle().enumerate() {
                let n = (n * channels).min(input.len() - pos);
                if n == 0 {
                    break;
                }
                if i == 3 {
                    h.set_strength_db(12.0);
                }
                dn.process(&input[pos..pos + n], &mut output[pos..pos + n])
                    .unwrap();
                pos += n;
            }
        });
        assert!(h.frames_processed() > 0);
        drop(dn); // joins the worker (off the realtime thread)
    }
}

/// A model change while audio flows: the realtime thread runs both models through the
/// crossfade and hands the old one back, all without allocating (DeepFilterNet3 on its model
/// thread, as live).
#[test]
fn switching_model_with_a_crossfade_never_allocates_on_the_realtime_thread() {
    use krisp_dsp::swap_channel;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let dfn3 = krisp_dsp::Manifest::load(&dir)
        .unwrap()
        .load_model("dfn3")
        .unwrap();
    let mut cfg = Config::new(48_000, 1);
    cfg.framing = Framing::Chunked;
    cfg.model_thread = true;
    let first = Denoiser::new(&cfg, &Model::builtin()).unwrap();
    let handle = first.handle();
    let (mut ctl, mut rt) = swap_channel(first);
    let input: Vec<f32> = (0..48_000)
        .map(|i| ((i as f32) * 0.013).sin() * 0.3)
        .collect();
    let mut output = vec![0.0f32; 480];
    for (to, name) in [(&dfn3, "dfn3"), (&Model::builtin(), "rnnoise")] {
        let next = Denoiser::with_handle(&cfg, to, handle.clone()).unwrap();
        assert!(ctl.offer(next).is_ok(), "{name}");
        assert_no_alloc(|| {
            for block in input.chunks(480) {
                rt.process(block, &mut output).unwrap();
                // The realtime thread keeps its 10 ms pace, as live.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        assert!(
            !rt.switching(),
            "{name}: the switch finished within a second"
        );
        assert!(
            ctl.collect(),
            "{name}: the old denoiser came back to be freed"
        );
    }
}
