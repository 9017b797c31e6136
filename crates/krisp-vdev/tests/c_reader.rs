//! The C drivers and the Rust app must agree on the ring byte for byte. This compiles a small C
//! reader (`drivers/common/test/c_reader.c`) against `drivers/common/krisp_ring.h` with the
//! system C compiler and checks it against the Rust writer over real POSIX shared memory:
//! field offsets, checksum/validation, index publication, and a streaming run through the C
//! `krisp_ring_read` that the drivers call from their IO paths. The C side runs under
//! AddressSanitizer and UndefinedBehaviorSanitizer when the compiler can build with them.

use krisp_vdev::shm::{RingConfig, RingWriter};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

fn drivers_common() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../drivers/common")
}

/// AddressSanitizer and UndefinedBehaviorSanitizer on the C reader: `krisp_ring_read` writing
/// past the caller's period buffer, or undefined arithmetic in the header's index and checksum
/// code, aborts the C process and fails the test. (The ring itself is an `mmap`, which ASan does
/// not guard; TSan cannot see across the two processes: `tests/ring_threads.rs` covers that.)
const SANITIZE: &[&str] = &[
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
];

/// Builds the C reader once; `None` (with a loud message) if no C compiler is installed.
fn c_reader() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("krisp_c_reader");
        let dir = drivers_common();
        let compile = |extra: &[&str]| {
            Command::new(&cc)
                .args([
                    "-std=c11",
                    "-O2",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-pedantic",
                    "-I",
                ])
                .arg(&dir)
                .args(extra)
                .arg(dir.join("test/c_reader.c"))
                .arg("-o")
                .arg(&out)
                .status()
        };
        match compile(SANITIZE) {
            Ok(s) if s.success() => return Some(out),
            Ok(_) => eprintln!(
                "\n*** C reader NOT under ASan/UBSan: '{cc}' cannot build with {SANITIZE:?} \
                 (no libasan/libubsan?); building it without ***\n"
            ),
            Err(e) => {
                eprintln!("\n*** SKIPPING C layout tests: no C compiler '{cc}' ({e}) ***\n");
                return None;
            }
        }
        match compile(&[]) {
            Ok(s) if s.success() => Some(out),
            Ok(s) => panic!("compiling the C reader against krisp_ring.h failed: {s}"),
            Err(e) => panic!("running '{cc}' failed the second time: {e}"),
        }
    })
    .as_deref()
}

fn run(args: &[&str]) -> String {
    let bin = c_reader().expect("checked by caller");
    let out = Command::new(bin).args(args).output().expect("run C reader");
    assert!(
        out.status.success(),
        "C reader {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

struct Segment(String);

impl Segment {
    fn new(tag: &str) -> Self {
        let name = format!("/krisp-ctest-{}-{tag}", std::process::id());
        let _ = RingWriter::remove(&name);
        Self(name)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = RingWriter::remove(&self.0);
    }
}

#[test]
fn c_header_offsets_match_the_rust_layout() {
    if c_reader().is_none() {
        return;
    }
    let c = run(&["offsets"]);
    let rust: String = krisp_vdev::shm::field_offsets()
        .iter()
        .map(|(n, o)| format!("{n} {o}\n"))
        .collect();
    assert_eq!(c, rust);
}

#[test]
fn c_reader_drains_exactly_what_the_rust_writer_wrote_and_publishes_its_index() {
    if c_reader().is_none() {
        return;
    }
    let seg = Segment::new("drain");
    let cfg = RingConfig::new(&seg.0).channels(2).fill(1024, 256, 768);
    let mut w = RingWriter::create(&cfg).unwrap();
    // 1000 frames, written in pieces so the ring wraps on the second round.
    let frames: Vec<f32> = (1..=1000)
        .flat_map(|v| [v as f32, -(v as f32) * 0.5])
        .collect();
    assert_eq!(w.write(&frames[..1200]), 600);
    let first = run(&["drain", &seg.0]);
    assert!(
        first.starts_with("rate=48000 channels=2 capacity=1024 frames=600 "),
        "{first}"
    );
    assert_eq!(
        w.fill(),
        0,
        "the C reader's read_index store landed where Rust reads it"
    );
    assert_eq!(w.write(&frames[1200..]), 400);
    let second = run(&["drain", &seg.0]);
    let got: Vec<f32> = [first, second]
        .iter()
        .flat_map(|l| {
            let s = l.split("samples=").nth(1).unwrap().trim().to_owned();
            s.split(',')
                .map(|x| x.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, frames);
}

#[test]
fn c_validation_agrees_on_checksum_version_and_garbage() {
    if c_reader().is_none() {
        return;
    }
    let seg = Segment::new("validate");
    let _w = RingWriter::create(&RingConfig::new(&seg.0)).unwrap();
    assert!(
        run(&["validate", &seg.0]).starts_with("status=0 "),
        "the C checksum equals Rust's"
    );
    let path = format!("/dev/shm{}", seg.0);
    let patch = |offset: usize, bytes: &[u8]| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(bytes, offset as u64).unwrap();
    };
    patch(28, &4096u32.to_le_bytes()); // capacity changed behind the checksum's back
    assert!(run(&["validate", &seg.0]).starts_with("status=7 "));
    patch(28, &8192u32.to_le_bytes());
    assert!(run(&["validate", &seg.0]).starts_with("status=0 "));
    patch(8, &2u32.to_le_bytes());
    let v = run(&["validate", &seg.0]);
    assert!(v.starts_with("status=3 ") && v.contains("version=2"), "{v}");
    patch(0, b"garbage!");
    assert!(run(&["validate", &seg.0]).starts_with("status=2 "));
}

#[test]
fn c_driver_read_path_streams_a_rust_written_counter_without_a_gap() {
    if c_reader().is_none() {
        return;
    }
    let seg = Segment::new("play");
    let cfg = RingConfig::new(&seg.0).channels(2);
    let mut w = RingWriter::create(&cfg).unwrap();
    static STOP: AtomicBool = AtomicBool::new(false);
    let writer = std::thread::spawn(move || {
        let mut k = 0u32;
        let mut block = vec![0.0f32; 480 * 2];
        while !STOP.load(Ordering::Relaxed) {
            if w.fill() < 2048 {
                for f in 0..480 {
                    k += 1;
                    let v = (k % (1 << 23)) as f32;
                    block[2 * f] = v;
                    block[2 * f + 1] = -v;
                }
                w.write(&block);
            } else {
                std::thread::yield_now();
            }
        }
    });
    let out = run(&["play", &seg.0, "480000", "512"]);
    STOP.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let result = out
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .expect("summary");
    assert!(
        result.contains("discontinuities=0 channel_errors=0"),
        "{out}"
    );
    assert!(result.contains("overrun=0"), "{out}");
}
