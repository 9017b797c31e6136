//! Plays the "Krisp Microphone" driver in the two-process ring tests: the master of simulated
//! time, it reads one device period at a time at its own clock (`--ppm` away from nominal),
//! checks the signal it gets, and reports. See `tests/two_process.rs`.
//!
//! Options: `--ring NAME --ctl NAME [--channels N] [--period N] [--ppm F] [--seconds S]
//! [--check counter|sine|none] [--settle S] [--stop-io-at S --stop-io-for S]
//! [--report-every S] [--stop-writer]`. Prints `status ...` lines as it goes and one
//! `RESULT role=reader ...` line at the end.

mod common;

use common::{ACQUIRE, Args, Ctl, RELEASE, wait_until};
use krisp_vdev::shm::{ReaderState, RingReader};
use std::time::Duration;

#[derive(Default)]
struct Check {
    expect: Option<f32>,
    last: Option<f32>,
    last_generation: u64,
    discontinuities: u64,
    stale_replays: u64,
    channel_errors: u64,
    max_step: f32,
}

fn next_counter(v: f32) -> f32 {
    if v >= (1u32 << 23) as f32 {
        1.0
    } else {
        v + 1.0
    }
}

fn main() {
    let args = Args::parse();
    let ring_name = args.str("ring", "/krisp-sim-ring");
    let channels = args.u64("channels", 1) as usize;
    let period = args.u64("period", 512) as usize;
    let ppm = args.f64("ppm", 0.0);
    let seconds = args.f64("seconds", 10.0);
    let check = args.str("check", "counter");
    let settle = args.f64("settle", 0.0);
    let stop_io = (args.f64("stop-io-at", -1.0), args.f64("stop-io-for", 0.0));
    let report_every = args.f64("report-every", 1.0);
    let stale_ms = args.u64("stale-ms", 200);

    let ctl = Ctl::open(&args.str("ctl", "/krisp-sim-ctl"));
    let c = ctl.get();
    let start_ns = c.sim_now_ns.load(ACQUIRE);
    let rate = 48_000.0 * (1.0 + ppm * 1e-6);

    let mut reader: Option<RingReader> = None;
    let mut last_error = String::new();
    let mut refusals = 0u64;
    let mut out = vec![0.0f32; period * channels];
    let mut ck = Check::default();
    let (mut fill_min, mut fill_max) = (u64::MAX, 0u64);
    let mut state_counts = [0u64; 6];
    let mut next_report = report_every;
    let mut next_open_try = 0.0f64;
    let mut io_running = true;
    let mut first_audio_s = -1.0f64;
    let (mut prev_resyncs, mut prev_overrun) = (0u64, 0u64);

    let mut k = 0u64;
    loop {
        let t = k as f64 * period as f64 / rate;
        if t > seconds {
            break;
        }
        let t_ns = start_ns + (t * 1e9) as u64;
        c.sim_now_ns.store(t_ns, RELEASE);
        if c.writer_active.load(ACQUIRE) == 1 {
            let answered = wait_until(Duration::from_millis(300), || {
                c.writer_done_ns.load(ACQUIRE) >= t_ns || c.writer_active.load(ACQUIRE) == 0
            });
            if !answered {
                c.writer_active.store(0, RELEASE);
                println!("reader: writer stopped answering at t={t:.3}");
            }
        } else {
            // Nobody to wait for: run at ~10x real time so the test can act on our reports.
            std::thread::sleep(Duration::from_micros(1000));
        }
        k += 1;

        // Control-thread work (not realtime): open or reopen the ring now and then.
        if reader.as_ref().is_none_or(|r| r.needs_reopen()) && t >= next_open_try {
            next_open_try = t + 0.1;
            match RingReader::open(&ring_name) {
                Ok(mut r) => {
                    let h = r.header();
                    if h.channels as usize != channels || h.sample_rate != 48_000 {
                        let msg = format!(
                            "format {}ch {}Hz does not match the device",
                            h.channels, h.sample_rate
                        );
                        if msg != last_error {
                            println!("reader: refused: {msg}");
                            last_error = msg;
                        }
                        refusals += 1;
                    } else {
                        r.set_stale_after_frames(48 * stale_ms);
                        println!("reader: attached generation={} at t={t:.3}", h.generation);
                        last_error.clear();
                        prev_resyncs = 0;
                        prev_overrun = 0;
                        reader = Some(r);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        println!("reader: refused: {msg}");
                        last_error = msg;
                    }
                    refusals += 1;
                }
            }
        }

        let in_stop = stop_io.0 >= 0.0 && t >= stop_io.0 && t < stop_io.0 + stop_io.1;
        if in_stop {
            io_running = false;
            continue;
        }
        let Some(r) = reader.as_mut() else { continue };
        if !io_running {
            io_running = true;
            r.restart();
        }

        // ---- the realtime part a driver's IO callback would do ----
        let rep = r.read(&mut out);
        // ----

        let st = r.stats();
        let event = st.resyncs != prev_resyncs || st.overrun_frames != prev_overrun;
        let generation = r.header().generation;
        prev_resyncs = st.resyncs;
        prev_overrun = st.overrun_frames;
        state_counts[rep.state as usize] += 1;
        if rep.audio_frames > 0 && first_audio_s < 0.0 {
            first_audio_s = t;
        }
        if rep.state == ReaderState::Playing && t >= settle {
            fill_min = fill_min.min(rep.fill_before);
            fill_max = fill_max.max(rep.fill_before);
        }
        if event {
            ck.expect = None;
        }
        for f in 0..rep.audio_frames {
            let v = out[f * channels];
            if channels > 1 && check == "counter" && out[f * channels + 1] != -v {
                ck.channel_errors += 1;
            }
            match check.as_str() {
                "counter" => {
                    if let Some(e) = ck.expect {
                        if v != e {
                            ck.discontinuities += 1;
                            if ck.discontinuities <= 5 {
                                println!(
                                    "reader: discontinuity at t={t:.3}: got {v}, expected {e}"
                                );
                            }
                        }
                    } else if let Some(last) = ck.last {
                        // After a skip or resync within one writer session the stream may only
                        // move forward: anything at or before the last frame played is stale.
                        if ck.last_generation == generation && v <= last && last - v < 1_000_000.0 {
                            ck.stale_replays += 1;
                        }
                    }
                    ck.expect = Some(next_counter(v));
                    ck.last = Some(v);
                    ck.last_generation = generation;
                }
                "sine" => {
                    if let Some(prev) = ck.last {
                        let step = (v - prev).abs();
                        if ck.expect.is_some() {
                            ck.max_step = ck.max_step.max(step);
                            if step > 0.1 {
                                ck.discontinuities += 1;
                            }
                        }
                    }
                    ck.last = Some(v);
                    ck.expect = Some(v);
                }
                _ => {}
            }
        }
        if rep.audio_frames < period {
            ck.expect = None; // silence in between: continuity is judged per audio run
            if check == "sine" {
                ck.last = None;
            }
        }

        if t >= next_report {
            next_report += report_every;
            println!(
                "status t={t:.1} gen={generation} state={:?} played={} underrun={} overrun={} resyncs={} gone={} fill={}",
                rep.state,
                st.played_frames,
                st.underrun_frames,
                st.overrun_frames,
                st.resyncs,
                st.writer_gone_events,
                rep.fill_before
            );
        }
    }
    if args.flag("stop-writer") {
        c.stop.store(1, RELEASE);
    }
    let st = reader.as_ref().map(|r| r.stats()).unwrap_or_default();
    let period_ms = period as f64 / 48.0;
    println!(
        "RESULT role=reader sim_s={seconds} played={} discarded={} silence={} underrun={} overrun={} resyncs={} gone={} \
         discontinuities={} stale_replays={} channel_errors={} fill_min={} fill_max={} max_latency_ms={:.2} \
         refusals={refusals} first_audio_s={first_audio_s:.3} max_step={:.4} playing_reads={} prefill_reads={} \
         underrun_reads={} gone_reads={} notready_reads={} reopen_reads={}",
        st.played_frames,
        st.discarded_frames,
        st.silence_frames,
        st.underrun_frames,
        st.overrun_frames,
        st.resyncs,
        st.writer_gone_events,
        ck.discontinuities,
        ck.stale_replays,
        ck.channel_errors,
        if fill_min == u64::MAX { 0 } else { fill_min },
        fill_max,
        fill_max as f64 / 48.0 + period_ms,
        ck.max_step,
        state_counts[0],
        state_counts[1],
        state_counts[2],
        state_counts[3],
        state_counts[4],
        state_counts[5],
    );
}
