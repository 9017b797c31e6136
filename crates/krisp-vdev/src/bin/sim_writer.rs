//! Plays the Krisp app in the two-process ring tests: writes a test signal into the shared
//! ring at its own (simulated) capture clock, optionally steering a rubato resampler with the
//! drift controller. See `tests/two_process.rs`.
//!
//! Options: `--ring NAME --ctl NAME [--channels N] [--ppm F] [--signal counter|sine]
//! [--steer] [--stall-at S --stall-for S] [--hang-at S] [--burst-at S --burst-frames N]
//! [--capacity N --target N --max-fill N]`. Times are simulated seconds since the writer
//! started. `--stall` keeps the heartbeat but writes nothing (app hiccup), `--hang` stops
//! everything including the heartbeat (hung app), `--burst` writes extra frames at once.

mod common;

use common::{ACQUIRE, Args, Ctl, RELAXED, RELEASE, counter_value, sine_value, wait_until};
use krisp_vdev::shm::{DriftController, RingConfig, RingWriter};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Adjustable, Async, FixedAsync, PolynomialDegree, Resampler};
use std::time::Duration;

const BLOCK: usize = 480;

fn main() {
    let args = Args::parse();
    let channels = args.u64("channels", 1) as usize;
    let cfg = RingConfig::new(args.str("ring", "/krisp-sim-ring"))
        .channels(channels as u32)
        .fill(
            args.u64("capacity", 8192) as u32,
            args.u64("target", 1024) as u32,
            args.u64("max-fill", 3072) as u32,
        );
    let ppm = args.f64("ppm", 0.0);
    let steer = args.flag("steer");
    let sine = args.str("signal", "counter") == "sine";
    let stall = (args.f64("stall-at", -1.0), args.f64("stall-for", 0.0));
    let hang_at = args.f64("hang-at", -1.0);
    let mut burst = (
        args.f64("burst-at", -1.0),
        args.u64("burst-frames", 0) as usize,
    );

    let mut ring = match RingWriter::create(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("writer: cannot create ring: {e}");
            std::process::exit(2);
        }
    };
    let ctl = Ctl::open(&args.str("ctl", "/krisp-sim-ctl"));
    let c = ctl.get();
    let t0 = c.sim_now_ns.load(ACQUIRE);
    c.writer_done_ns.store(t0, RELEASE);
    c.writer_active.store(1, RELEASE);
    println!(
        "writer: ready generation={} t0_ns={t0}",
        ring.header().generation
    );

    let rate = f64::from(cfg.sample_rate);
    let app_rate = rate * (1.0 + ppm * 1e-6);
    let mut drift = DriftController::new(cfg.sample_rate, cfg.target_fill_frames);
    let mut resampler = Async::<f32>::new_poly(
        1.0,
        1.0 + 2.0 * drift.max_deviation(),
        PolynomialDegree::Cubic,
        BLOCK,
        channels,
        FixedAsync::Input,
    )
    .expect("resampler parameters are valid");
    let mut input = vec![0.0f32; BLOCK * channels];
    let mut output = vec![0.0f32; resampler.output_frames_max() * channels];
    let mut burst_buf = Vec::new();
    let mut blocks = 0u64;
    let mut k = 0u64; // input frames generated
    let (mut ratio_min, mut ratio_max) = (f64::MAX, f64::MIN);

    loop {
        if c.stop.load(ACQUIRE) != 0 {
            break;
        }
        let now = c.sim_now_ns.load(ACQUIRE);
        loop {
            // Block `blocks` is complete at the end of its 480 frames on the app's clock.
            let due = t0 as f64 + (blocks + 1) as f64 * BLOCK as f64 / app_rate * 1e9;
            if due > now as f64 {
                break;
            }
            let t = (due - t0 as f64) / 1e9;
            blocks += 1;
            if hang_at >= 0.0 && t >= hang_at {
                continue; // hung: no audio, no heartbeat
            }
            if stall.0 >= 0.0 && t >= stall.0 && t < stall.0 + stall.1 {
                // A capture hiccup: nothing captured, but the app is alive.
                ring.heartbeat();
                continue;
            }
            for f in 0..BLOCK {
                let v = if sine {
                    sine_value(k, rate)
                } else {
                    counter_value(k)
                };
                for ch in 0..channels {
                    input[f * channels + ch] = if ch % 2 == 1 { -v } else { v };
                }
                k += 1;
            }
            let frames = if steer {
                let ratio = drift.update(ring.fill(), BLOCK as u32);
                ratio_min = ratio_min.min(ratio);
                ratio_max = ratio_max.max(ratio);
                resampler
                    .set_resample_ratio_relative(ratio, true)
                    .expect("ratio within bounds");
                let inp = InterleavedSlice::new(&input, channels, BLOCK).expect("input shape");
                let out_frames = output.len() / channels;
                let mut out = InterleavedSlice::new_mut(&mut output, channels, out_frames)
                    .expect("output shape");
                let (_, produced) = resampler
                    .process_into_buffer(&inp, &mut out, None)
                    .expect("resample");
                produced
            } else {
                output[..BLOCK * channels].copy_from_slice(&input);
                BLOCK
            };
            if burst.0 >= 0.0 && t >= burst.0 && burst.1 > 0 {
                // An app catching up after a hiccup: a pile of extra frames at once.
                burst_buf.clear();
                for _ in 0..burst.1 {
                    let v = if sine {
                        sine_value(k, rate)
                    } else {
                        counter_value(k)
                    };
                    for ch in 0..channels {
                        burst_buf.push(if ch % 2 == 1 { -v } else { v });
                    }
                    k += 1;
                }
                ring.write(&output[..frames * channels]);
                ring.write(&burst_buf);
                burst.0 = -1.0;
                continue;
            }
            ring.write(&output[..frames * channels]);
        }
        c.writer_done_ns.store(now, RELEASE);
        // Wait for the device clock to move on (or for the stop flag).
        while !wait_until(Duration::from_millis(200), || {
            c.sim_now_ns.load(ACQUIRE) != now || c.stop.load(RELAXED) != 0
        }) {
            c.writer_active.store(1, RELEASE); // still here: re-announce after a reader restart
        }
    }
    let s = ring.stats();
    println!(
        "RESULT role=writer written={} dropped={} blocks={blocks} ratio_min={:.6} ratio_max={:.6} final_ratio={:.6}",
        s.written_frames,
        s.dropped_frames,
        if ratio_min == f64::MAX {
            1.0
        } else {
            ratio_min
        },
        if ratio_max == f64::MIN {
            1.0
        } else {
            ratio_max
        },
        drift.ratio()
    );
}
