//! The CPU floor of any 10 ms live denoiser on this machine, without an audio server: a thread
//! that wakes on a timer every 10 ms (as an audio client wakes for each block) and, with
//! `model`, denoises one 480-sample frame at 48 kHz per wake-up through krisp-dsp, with caches
//! as cold as the live engine's. Prints the thread's CPU as % of one core (getrusage).
//!
//! Usage: krisp-floor [seconds=30] [wake|model|hot]
//!   wake:  the wake-ups alone (no work)
//!   model: a wake-up and one frame per 10 ms (the live engine's minimum)
//!   hot:   the same frames back to back, no sleeping (the model's cost with warm caches)
//!
//! Any live design with 10 ms blocks pays at least `model`: it is the reference the engine's
//! figures in docs/performance.md are read against.

use std::time::{Duration, Instant};

use krisp_benches::test_signal;
use krisp_dsp::{Config, Denoiser, Framing, Model};

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(30.0, |s| s.parse().expect("seconds"));
    let mode = args.next().unwrap_or_else(|| "model".into());
    if !["wake", "model", "hot"].contains(&mode.as_str()) {
        eprintln!("krisp-floor: mode must be wake, model or hot, not {mode:?}");
        std::process::exit(2);
    }
    let x = test_signal(48_000, 1.0);
    let mut cfg = Config::new(48_000, 1);
    cfg.framing = Framing::Chunked;
    let mut dn = Denoiser::new(&cfg, &Model::builtin()).expect("denoiser");
    let mut out = vec![0.0f32; 480];
    let frames = (secs * 100.0) as u64;
    let period = Duration::from_millis(10);
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let mut next = t0;
    for i in 0..frames {
        if mode != "hot" {
            next += period;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        if mode != "wake" {
            let s = (i as usize % 99) * 480;
            dn.process(&x[s..s + 480], &mut out).expect("process");
        }
    }
    let cpu = thread_cpu() - cpu0;
    let wall = t0.elapsed();
    let per_block = cpu.as_secs_f64() * 1e6 / frames as f64;
    // For `hot`, % of a core at 100 blocks/s (what the same work costs live if caches stayed warm).
    let pct = per_block * 100.0 / 1e6 * 100.0;
    println!(
        "{mode}: {frames} blocks in {:.1} s wall, {:.1} µs CPU per block = {pct:.2} % of one core at 100 blocks/s",
        wall.as_secs_f64(),
        per_block
    );
}
