//! The shared-memory ring between the Krisp app (writer) and the "Krisp Microphone" driver
//! (reader) on macOS and Windows.
//!
//! One segment holds a 512-byte versioned header and a single-producer/single-consumer ring of
//! interleaved f32 frames. The wire format, the index invariants and the fault rules are in
//! `drivers/PROTOCOL.md`; `drivers/common/krisp_ring.h` is the C mirror the drivers use.
//!
//! * [`RingWriter`]: the app's end. [`RingWriter::write`] never blocks or allocates; when the
//!   ring is full it drops and counts.
//! * [`RingReader`]: the driver's end (here for tests and for a Rust driver host).
//!   [`RingReader::read`] always fills its buffer: audio when there is some, silence otherwise
//!   (underrun, writer gone, header not ready), with counters for each case.
//! * [`DriftController`]: measures the ring's fill on the writer side and returns the small
//!   resampling-ratio correction that keeps it at the target despite the two clocks drifting.
//!
//! ```
//! use krisp_vdev::shm::{heap_pair, DriftController, RingConfig};
//!
//! let cfg = RingConfig::new("/krisp-doc").channels(1);
//! let (mut writer, mut reader) = heap_pair(&cfg).unwrap();
//! let mut drift = DriftController::new(cfg.sample_rate, cfg.target_fill_frames);
//! let block = [0.1f32; 480];
//! let mut out = [0.0f32; 512];
//! for _ in 0..100 {
//!     // App side: steer the resampler (rubato `set_resample_ratio_relative`) with `ratio`.
//!     let _ratio = drift.update(writer.fill(), 480);
//!     writer.write(&block);
//!     // Driver side, on its own clock.
//!     reader.read(&mut out);
//! }
//! assert_eq!(reader.stats().overrun_frames, 0);
//! ```
//!
//! Realtime use: `write`, `heartbeat`, `fill`, `read` and `DriftController::update` do not
//! allocate, lock, log or make system calls. Creating or opening a ring does.

mod drift;
mod error;
#[cfg(not(loom))]
mod feed;
mod layout;
#[cfg(not(loom))]
mod location;
#[cfg(loom)]
mod loom_mem;
#[cfg(not(loom))]
mod macos;
#[cfg(not(loom))]
mod region;
mod ring;
mod sync;
#[cfg(not(loom))]
mod windows;

pub use drift::DriftController;
pub use error::ShmError;
#[cfg(not(loom))]
pub use feed::RingFeed;
pub use layout::{HEADER_BYTES, MAGIC, VERSION};
#[cfg(not(loom))]
pub use location::{MACOS_RING_SERVICE, RingLocation, WINDOWS_RING_SECTION};
pub use ring::{
    ReadReport, ReaderState, ReaderStats, RingCounters, RingMonitor, RingReader, RingWriter,
    WriterStats, heap_pair,
};

/// Byte offsets of every header field by name, for cross-language layout checks (the C header
/// `drivers/common/krisp_ring.h` must agree).
#[cfg(not(loom))]
pub fn field_offsets() -> &'static [(&'static str, usize)] {
    layout::FIELD_OFFSETS
}

/// The name of a user's ring: `/krisp-mic-<uid>` (one per logged-in user).
#[cfg(unix)]
pub fn default_ring_name() -> String {
    format!("/krisp-mic-{}", uid())
}

/// The writer's monotonic clock in nanoseconds, as published in the clock anchor
/// (`CLOCK_MONOTONIC`; read through the vDSO, so no system call). Realtime-safe.
#[cfg(unix)]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on the platforms we
    // build for, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(unix)]
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The immutable part of a ring's header, as published by the writer and validated by readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version ([`VERSION`]).
    pub version: u32,
    /// Frames per second of the ring's audio.
    pub sample_rate: u32,
    /// Interleaved channels per frame.
    pub channels: u32,
    /// Ring size in frames (a power of two).
    pub capacity_frames: u32,
    /// Fill the writer steers towards and the reader prefills to.
    pub target_fill_frames: u32,
    /// Latency bound: above this fill the reader drops the oldest frames back to the target.
    pub max_fill_frames: u32,
    /// Bumped (by two) every time a writer (re)publishes the header.
    pub generation: u64,
}

/// What a writer creates: the segment name and the audio geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// POSIX shared-memory name, e.g. `/krisp-mic-1000`.
    pub name: String,
    /// Frames per second (default 48 000).
    pub sample_rate: u32,
    /// Interleaved channels (default 1).
    pub channels: u32,
    /// Ring size in frames, a power of two (default 8192 ≈ 170 ms at 48 kHz).
    pub capacity_frames: u32,
    /// Fill to steer towards (default 1024 ≈ 21 ms: two 512-frame device periods).
    pub target_fill_frames: u32,
    /// Latency bound (default 3072 ≈ 64 ms).
    pub max_fill_frames: u32,
}

impl RingConfig {
    /// 48 kHz mono with the defaults above.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            sample_rate: 48_000,
            channels: 1,
            capacity_frames: 8192,
            target_fill_frames: 1024,
            max_fill_frames: 3072,
        }
    }

    /// Sets the channel count.
    pub fn channels(mut self, channels: u32) -> Self {
        self.channels = channels;
        self
    }

    /// Sets the sample rate.
    pub fn sample_rate(mut self, rate: u32) -> Self {
        self.sample_rate = rate;
        self
    }

    /// Sets capacity, target fill and latency bound, in frames.
    pub fn fill(mut self, capacity: u32, target: u32, max_fill: u32) -> Self {
        self.capacity_frames = capacity;
        self.target_fill_frames = target;
        self.max_fill_frames = max_fill;
        self
    }

    pub(crate) fn to_header(&self) -> Result<Header, ShmError> {
        let h = Header {
            version: VERSION,
            sample_rate: self.sample_rate,
            channels: self.channels,
            capacity_frames: self.capacity_frames,
            target_fill_frames: self.target_fill_frames,
            max_fill_frames: self.max_fill_frames,
            generation: 0,
        };
        layout::check_geometry(&h).map_err(|e| match e {
            ShmError::BadGeometry { what, .. } => ShmError::InvalidConfig { what },
            other => other,
        })?;
        Ok(h)
    }
}
