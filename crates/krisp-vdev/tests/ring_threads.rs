//! A writer thread and a reader thread over one ring, with no synchronisation between them but
//! the ring's own atomics. A plain `main` (harness = false) so that the only other
//! cross-thread traffic is `pthread_create`/`pthread_join`: this is the program `.ci/run` runs
//! under ThreadSanitizer, where libtest's own channels (uninstrumented std) would be reported
//! as races that are not ours. It also runs, uninstrumented, with `cargo test`.
//!
//! TSan: `RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer"
//! cargo +nightly test -p krisp-vdev --test ring_threads --target x86_64-unknown-linux-gnu`.

use krisp_vdev::shm::{ReaderState, RingConfig, heap_pair};
use std::thread;

/// Stereo frame `k` of the test stream: (v, -v) with v = k mod 2^23 + 1, exact in f32.
fn frame(k: u64) -> (f32, f32) {
    let v = (k % (1 << 23) + 1) as f32;
    (v, -v)
}

/// The writer offers only what fits, so every frame must arrive once and in order.
fn lossless_stream(frames: u64) {
    let c = RingConfig::new("/threads").channels(2).fill(256, 64, 256);
    let (mut w, mut r) = heap_pair(&c).expect("valid config");
    r.set_stale_after_frames(u64::MAX / 2);
    let mut out = [0.0f32; 2 * 29];
    r.read(&mut out); // start IO before the writer runs, so nothing is discarded
    let writer = thread::spawn(move || {
        let mut k = 0u64;
        let mut block = [0.0f32; 2 * 37];
        // 64 frames past the end so the reader's last prefill (target 64) completes.
        while k < frames + 64 {
            let free = 256 - w.fill() as usize;
            let n = 37.min((frames + 64 - k) as usize).min(free);
            for i in 0..n {
                (block[2 * i], block[2 * i + 1]) = frame(k + i as u64);
            }
            let done = w.write(&block[..2 * n]);
            k += done as u64;
            if done == 0 {
                thread::yield_now();
            }
        }
        w.stats()
    });
    let mut got = 0u64;
    while got < frames {
        let rep = r.read(&mut out);
        for f in 0..rep.audio_frames.min((frames - got) as usize) {
            assert_eq!((out[2 * f], out[2 * f + 1]), frame(got), "frame {got}");
            got += 1;
        }
        if rep.audio_frames == 0 {
            thread::yield_now();
        }
    }
    let ws = writer.join().expect("writer thread");
    assert_eq!(ws.dropped_frames, 0);
    assert_eq!(r.stats().overrun_frames, 0);
    assert_eq!(r.stats().resyncs, 1);
    println!("lossless stream: {got} frames in order");
}

/// The writer writes regardless (drops when full), the reader plays fixed periods: the fault
/// paths (writer drops, reader resyncs, latency-bound skips, underruns) run concurrently.
/// Whatever is played is whole frames of the stream in increasing order.
fn free_running(blocks: u64) {
    let c = RingConfig::new("/threads").channels(2).fill(128, 32, 96);
    let (mut w, mut r) = heap_pair(&c).expect("valid config");
    r.set_stale_after_frames(u64::MAX / 2);
    let writer = thread::spawn(move || {
        let mut block = [0.0f32; 2 * 24];
        for b in 0..blocks {
            for i in 0..24 {
                (block[2 * i], block[2 * i + 1]) = frame(b * 24 + i as u64);
            }
            w.write(&block);
            w.publish_anchor(b * 24, b);
            if b % 3 == 0 {
                thread::yield_now();
            }
        }
        w.stats()
    });
    let mut out = [0.0f32; 2 * 20];
    let mut last = 0.0f32;
    let mut played = 0u64;
    let mut states = [0u64; 6];
    while !writer.is_finished() {
        let rep = r.read(&mut out);
        states[rep.state as usize] += 1;
        for f in 0..rep.audio_frames {
            let (a, b) = (out[2 * f], out[2 * f + 1]);
            assert_eq!(a, -b, "torn frame");
            assert!(a > last, "{a} after {last}: out of order or replayed");
            last = a;
            played += 1;
        }
        if let Some((frame_index, block)) = r.anchor() {
            assert_eq!(frame_index, block * 24, "torn anchor");
        }
        if rep.state != ReaderState::Playing {
            thread::yield_now();
        }
    }
    let ws = writer.join().expect("writer thread");
    let rs = r.stats();
    println!(
        "free running: {played} frames played, writer dropped {}, reader resyncs {}, \
         overrun {}, underrun {}; states [playing, prefilling, underrun, ...] {states:?}",
        ws.dropped_frames, rs.resyncs, rs.overrun_frames, rs.underrun_frames
    );
}

fn main() {
    // RING_THREADS_SCALE sets the length of the run. A sanitizer judges only the interleavings
    // that happen: with `write_index` stored Relaxed, TSan reported the race in 11 of 20 runs
    // (the heartbeat's Release store just after W hides it unless the reader loads W in
    // between), and longer runs or repeating the scenarios within one process did not raise
    // that; separate processes do, so .ci/run runs this program several times.
    let scale = std::env::var("RING_THREADS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u64);
    lossless_stream(20_000 * scale);
    free_running(2_000 * scale);
    println!("ring_threads: ok");
}
