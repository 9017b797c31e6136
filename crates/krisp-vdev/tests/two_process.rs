//! Two processes, real POSIX shared memory: `krisp-ring-sim-writer` plays the app and
//! `krisp-ring-sim-reader` plays the driver with its own clock. Time is simulated (the reader
//! is the clock master), so ten minutes of audio take a few seconds.
//!
//! The helpers spin on two cores, so these tests take a process-wide lock and run one at a
//! time. Every segment a test creates is unlinked and every child killed when its guard drops,
//! even if the test fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const READER: &str = env!("CARGO_BIN_EXE_krisp-ring-sim-reader");
const WRITER: &str = env!("CARGO_BIN_EXE_krisp-ring-sim-writer");

static SERIAL: Mutex<()> = Mutex::new(());

/// One test's segment names, children and output; cleans up on drop.
struct Rig {
    ring: String,
    ctl: String,
    children: Vec<Child>,
    _serial: MutexGuard<'static, ()>,
}

impl Rig {
    fn new(test: &str) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("krisp-test-{}-{test}", std::process::id());
        let rig = Self {
            ring: format!("/{id}-ring"),
            ctl: format!("/{id}-ctl"),
            children: vec![],
            _serial: serial,
        };
        rig.unlink();
        rig
    }

    fn unlink(&self) {
        for n in [&self.ring, &self.ctl] {
            let _ = std::fs::remove_file(format!("/dev/shm{n}"));
        }
    }

    fn spawn(&mut self, exe: &str, args: &[&str]) -> Lines {
        let mut child = Command::new(exe)
            .args(["--ring", &self.ring, "--ctl", &self.ctl])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn helper");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.children.push(child);
        Lines {
            rx,
            seen: vec![],
            pid: self.children.len() - 1,
        }
    }

    fn kill9(&mut self, lines: &Lines) {
        let child = &mut self.children[lines.pid];
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        child.wait().expect("reap");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.unlink();
    }
}

/// A helper's stdout, line by line.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    pid: usize,
}

impl Lines {
    /// Waits (real time) for a line satisfying `pred` and returns it.
    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "timed out waiting for {what}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the `RESULT` line and parses its `key=value` pairs.
    fn result(&mut self) -> Result_ {
        let line = self.wait_for("RESULT", Duration::from_secs(60), |l| {
            l.starts_with("RESULT")
        });
        Result_ {
            map: kv(&line),
            all: self.seen.join("\n"),
        }
    }
}

fn kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn status_f(line: &str, key: &str) -> f64 {
    kv(line)
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[allow(non_camel_case_types)]
struct Result_ {
    map: HashMap<String, String>,
    all: String,
}

impl Result_ {
    fn f(&self, key: &str) -> f64 {
        self.map
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in result:\n{}", self.all))
    }
    fn eq(&self, key: &str, v: f64) {
        assert_eq!(self.f(key), v, "{key}; full output:\n{}", self.all);
    }
}

/// Runs reader and writer to completion with the reader stopping the writer at the end.
fn run_pair(test: &str, reader: &[&str], writer: &[&str]) -> (Result_, Result_) {
    let mut rig = Rig::new(test);
    let mut r = rig.spawn(READER, &[reader, &["--stop-writer"]].concat());
    let mut w = rig.spawn(WRITER, writer);
    let rr = r.result();
    let wr = w.result();
    eprintln!(
        "{test}:\n  {}\n  {}",
        rr.all.lines().last().unwrap_or(""),
        wr.all.lines().last().unwrap_or("")
    );
    (rr, wr)
}

#[test]
fn counting_signal_arrives_sample_exact_for_ten_simulated_minutes() {
    let (r, w) = run_pair(
        "exact",
        &[
            "--channels",
            "2",
            "--seconds",
            "600",
            "--report-every",
            "60",
        ],
        &["--channels", "2"],
    );
    for key in [
        "discontinuities",
        "channel_errors",
        "stale_replays",
        "underrun",
        "overrun",
        "gone",
    ] {
        r.eq(key, 0.0);
    }
    r.eq("resyncs", 1.0); // the attach
    w.eq("dropped", 0.0);
    // Everything written was played, except what the attach discarded and what is still
    // queued at the end (at most the latency bound).
    let queued = w.f("written") - r.f("played") - r.f("discarded");
    assert!((0.0..=3072.0).contains(&queued), "queued at end {queued}");
    assert!(r.f("played") > 599.0 * 48_000.0);
}

fn drift_run(ppm: &str) {
    let (r, w) = run_pair(
        &format!("drift{ppm}"),
        &[
            "--ppm",
            ppm,
            "--seconds",
            "600",
            "--check",
            "sine",
            "--settle",
            "60",
            "--report-every",
            "60",
        ],
        &["--signal", "sine", "--steer"],
    );
    for key in ["discontinuities", "underrun", "overrun", "gone"] {
        r.eq(key, 0.0);
    }
    w.eq("dropped", 0.0);
    // Target 1024; the reader sees it plus up to one writer block and minus its own period.
    let (lo, hi) = (r.f("fill_min"), r.f("fill_max"));
    assert!(lo >= 512.0 && hi <= 2048.0, "fill {lo}..{hi} frames");
    assert!(
        r.f("max_step") < 0.08,
        "sine continuity: max step {}",
        r.f("max_step")
    );
    let expected = 1.0 + ppm.parse::<f64>().unwrap() * 1e-6;
    let ratio = w.f("final_ratio");
    assert!(
        (ratio - expected).abs() < 150e-6,
        "ratio {ratio} vs {expected}"
    );
}

#[test]
fn drift_of_plus_200_ppm_keeps_fill_bounded_for_ten_simulated_minutes() {
    drift_run("200");
}

#[test]
fn drift_of_minus_200_ppm_keeps_fill_bounded_for_ten_simulated_minutes() {
    drift_run("-200");
}

#[test]
fn without_steering_200_ppm_drift_runs_the_ring_dry() {
    // The control experiment: the same mismatch with the controller off underruns within
    // minutes (1024 frames of margin / 9.6 frames per second ≈ 107 s).
    let (r, _w) = run_pair("nosteer", &["--ppm", "200", "--seconds", "300"], &[]);
    assert!(r.f("underrun") > 0.0, "{}", r.all);
    r.eq("discontinuities", 0.0);
}

#[test]
fn writer_stall_underruns_with_silence_and_the_stream_continues_without_loss() {
    let (r, w) = run_pair(
        "stall",
        &["--seconds", "10"],
        &["--stall-at", "4", "--stall-for", "0.15"],
    );
    assert!(
        r.f("underrun") > 0.0 && r.f("underrun_reads") > 0.0,
        "{}",
        r.all
    );
    r.eq("gone", 0.0); // heartbeat kept going
    r.eq("discontinuities", 0.0);
    r.eq("overrun", 0.0);
    w.eq("dropped", 0.0);
}

#[test]
fn burst_beyond_latency_bound_drops_oldest_and_latency_recovers() {
    let (r, w) = run_pair(
        "burst",
        &["--seconds", "10", "--settle", "6"],
        &["--burst-at", "5", "--burst-frames", "4000"],
    );
    assert!(r.f("overrun") >= 2000.0, "{}", r.all);
    r.eq("stale_replays", 0.0);
    r.eq("discontinuities", 0.0);
    r.eq("underrun", 0.0);
    w.eq("dropped", 0.0);
    assert!(
        r.f("fill_max") <= 2048.0,
        "latency recovered: fill_max {}",
        r.f("fill_max")
    );
}

#[test]
fn stopped_device_fills_the_ring_writer_drops_and_no_stale_audio_is_replayed() {
    let (r, w) = run_pair(
        "stopio",
        &["--seconds", "10", "--stop-io-at", "3", "--stop-io-for", "2"],
        &[],
    );
    assert!(w.f("dropped") > 0.0, "{}", w.all);
    assert!(r.f("resyncs") >= 2.0);
    r.eq("stale_replays", 0.0);
    r.eq("discontinuities", 0.0);
    r.eq("overrun", 0.0);
}

#[test]
fn hung_writer_goes_silent_and_the_device_stays() {
    let (r, _w) = run_pair("hang", &["--seconds", "6"], &["--hang-at", "3"]);
    r.eq("gone", 1.0);
    assert!(r.f("gone_reads") > 200.0, "silence while gone: {}", r.all);
    r.eq("discontinuities", 0.0);
}

#[test]
fn writer_killed_and_restarted_is_picked_up_by_the_running_reader() {
    let mut rig = Rig::new("killw");
    let mut r = rig.spawn(
        READER,
        &["--seconds", "40", "--report-every", "0.5", "--stop-writer"],
    );
    let mut w1 = rig.spawn(WRITER, &[]);
    w1.wait_for("writer ready", Duration::from_secs(10), |l| {
        l.starts_with("writer: ready")
    });
    let first = r.wait_for("audio", Duration::from_secs(20), |l| {
        l.starts_with("status") && status_f(l, "played") > 48_000.0
    });
    let gen1 = status_f(&first, "gen");
    rig.kill9(&w1);
    r.wait_for("writer gone", Duration::from_secs(20), |l| {
        l.starts_with("status") && status_f(l, "gone") >= 1.0
    });
    let mut w2 = rig.spawn(WRITER, &[]);
    r.wait_for("new generation playing", Duration::from_secs(20), |l| {
        l.starts_with("status") && status_f(l, "gen") > gen1 && l.contains("state=Playing")
    });
    let res = r.result();
    let _ = w2.result();
    eprintln!("killw: {}", res.all.lines().last().unwrap_or(""));
    res.eq("gone", 1.0);
    res.eq("discontinuities", 0.0);
    res.eq("stale_replays", 0.0);
    assert!(res.f("resyncs") >= 2.0);
}

#[test]
fn reader_killed_and_restarted_resumes_with_fresh_audio() {
    let mut rig = Rig::new("killr");
    let mut r1 = rig.spawn(READER, &["--seconds", "60", "--report-every", "0.5"]);
    let mut w = rig.spawn(WRITER, &[]);
    r1.wait_for("audio", Duration::from_secs(20), |l| {
        l.starts_with("status") && status_f(l, "played") > 96_000.0
    });
    rig.kill9(&r1);
    let mut r2 = rig.spawn(READER, &["--seconds", "5", "--stop-writer"]);
    let res = r2.result();
    let wres = w.result();
    eprintln!("killr: {}", res.all.lines().last().unwrap_or(""));
    assert!(res.f("played") > 4.0 * 48_000.0, "{}", res.all);
    res.eq("resyncs", 1.0);
    res.eq("discontinuities", 0.0);
    res.eq("underrun", 0.0);
    wres.eq("dropped", 0.0);
}

#[test]
fn garbage_and_foreign_version_segments_are_refused_until_a_writer_takes_over() {
    let mut rig = Rig::new("garbage");
    let path = format!("/dev/shm{}", rig.ring);
    // 1. Random bytes: bad magic.
    let mut x = 0x1234_5678_u32;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(&path, &junk).unwrap();
    let mut r = rig.spawn(READER, &["--seconds", "1"]);
    let res = r.result();
    res.eq("played", 0.0);
    assert!(res.all.contains("bad magic"), "{}", res.all);

    // 2. A header from a future protocol version, the size of a real ring: refused by name.
    let mut seg = vec![0u8; 512 + 8192 * 4];
    seg[..8].copy_from_slice(b"KRSPRING");
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, &seg).unwrap();
    let mut r = rig.spawn(
        READER,
        &["--seconds", "4", "--report-every", "0.5", "--stop-writer"],
    );
    r.wait_for("version refusal", Duration::from_secs(10), |l| {
        l.contains("protocol version 2")
    });
    // 3. The app starts: it takes the segment over in place and the reader plays.
    let mut w = rig.spawn(WRITER, &[]);
    let res = r.result();
    let _ = w.result();
    assert!(res.f("played") > 48_000.0, "{}", res.all);
    res.eq("discontinuities", 0.0);
}
