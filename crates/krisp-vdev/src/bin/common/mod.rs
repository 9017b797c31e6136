//! Shared by the two simulation helpers: a tiny argument parser and the simulated-time control
//! block (a second shared-memory segment, not part of the protocol).
//!
//! Time is simulated so minutes of audio run in seconds: the reader (the "device") is the time
//! master. Before each device period it publishes the simulated time it has reached and waits
//! until the writer (the "app") acknowledges that it has produced everything its own clock
//! would have produced by then. A writer that does not answer (killed) is stopped being waited
//! for until it attaches again.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};

/// `--key value` and `--flag` arguments.
pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse() -> Self {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            let key = a.trim_start_matches("--").to_owned();
            let value = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next().unwrap_or_default(),
                _ => "true".to_owned(),
            };
            map.insert(key, value);
        }
        Self(map)
    }

    pub fn str(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    pub fn f64(&self, key: &str, default: f64) -> f64 {
        self.0.get(key).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{key} {v}: not a number"))
        })
    }

    pub fn u64(&self, key: &str, default: u64) -> u64 {
        self.0.get(key).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{key} {v}: not an integer"))
        })
    }

    pub fn flag(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// The control block, laid out as consecutive u64 atomics.
#[repr(C)]
pub struct CtlBlock {
    /// Simulated nanoseconds the device has reached (published before each period).
    pub sim_now_ns: AtomicU64,
    /// Simulated time up to which the writer has produced its audio.
    pub writer_done_ns: AtomicU64,
    /// 1 while a writer follows the clock; the reader clears it when the writer stops answering.
    pub writer_active: AtomicU64,
    /// Set to 1 to make the writer exit.
    pub stop: AtomicU64,
}

pub struct Ctl {
    ptr: *mut CtlBlock,
}

impl Ctl {
    /// Opens (creating if needed, zero-filled) the control segment `name`.
    pub fn open(name: &str) -> Self {
        let c = CtlName::new(name);
        let len = std::mem::size_of::<CtlBlock>();
        // SAFETY: valid NUL-terminated name; flags and mode are plain integers.
        let fd = unsafe { libc::shm_open(c.0.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
        assert!(
            fd >= 0,
            "shm_open {name}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is open. Growing a zero-length segment zero-fills it; an existing one of
        // this size is left as is.
        let rc = unsafe { libc::ftruncate(fd, len as libc::off_t) };
        assert_eq!(rc, 0, "ftruncate {name}");
        // SAFETY: a fresh shared mapping of `len` bytes of an open descriptor.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {name}");
        // SAFETY: we own fd; the mapping stays valid after close.
        unsafe { libc::close(fd) };
        Self { ptr: p.cast() }
    }

    pub fn get(&self) -> &CtlBlock {
        // SAFETY: the mapping is page-aligned, large enough, never unmapped while the process
        // runs, and holds only atomics (valid for any bits, shareable through `&`).
        unsafe { &*self.ptr }
    }
}

struct CtlName(CString);

impl CtlName {
    fn new(name: &str) -> Self {
        Self(CString::new(name).expect("control segment name has no NUL"))
    }
}

/// Waits (spinning politely) until `cond` holds or `timeout` of real time passes.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else if spins < 4096 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

pub const RELAXED: Ordering = Ordering::Relaxed;
pub const ACQUIRE: Ordering = Ordering::Acquire;
pub const RELEASE: Ordering = Ordering::Release;

/// Counting test signal: frame k carries `(k mod 2^23) + 1` on channel 0 and its negation on
/// channel 1 (exact in f32; 0 is reserved for silence).
pub fn counter_value(k: u64) -> f32 {
    ((k % (1 << 23)) + 1) as f32
}

/// Sine test signal for the resampled runs.
pub fn sine_value(k: u64, rate: f64) -> f32 {
    let phase = (k as f64 * 997.0 / rate).fract();
    (0.5 * (2.0 * std::f64::consts::PI * phase).sin()) as f32
}
