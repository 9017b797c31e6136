//! The fixed, `repr(C)` layout of the ring's shared memory and the validation of its header.
//!
//! Everything here is plain data and arithmetic; the only memory access is through atomics in
//! [`RawHeader`], which may be shared with another process. The byte offsets are part of the
//! protocol (`drivers/PROTOCOL.md`, `drivers/common/krisp_ring.h`) and are pinned by
//! compile-time assertions below and by the C layout test.

use super::sync::{AtomicU32, AtomicU64, Ordering, fence};
use super::{Header, ShmError};

/// `"KRSPRING"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"KRSPRING");
/// The protocol version this crate writes and the only one it reads.
pub const VERSION: u32 = 1;
/// Bytes before the first sample: config block, writer block, reader block, reserved block.
pub const HEADER_BYTES: u32 = 512;
/// Sample format 1: interleaved IEEE-754 binary32, little-endian.
pub const FORMAT_F32_INTERLEAVED: u32 = 1;

/// The header is being (re)initialised by the writer: readers must not use the ring.
pub const STATE_INIT: u32 = 0;
/// The header is valid and the ring is live.
pub const STATE_READY: u32 = 1;
/// The writer abandoned this segment (e.g. recreated it with another geometry): reopen by name.
pub const STATE_RETIRED: u32 = 2;

/// Limits a reader enforces before trusting any geometry from shared memory.
pub const MIN_SAMPLE_RATE: u32 = 8_000;
/// Highest accepted sample rate.
pub const MAX_SAMPLE_RATE: u32 = 384_000;
/// Highest accepted channel count.
pub const MAX_CHANNELS: u32 = 8;
/// Smallest ring, in frames (a power of two).
pub const MIN_CAPACITY: u32 = 64;
/// Largest ring, in frames (a power of two).
pub const MAX_CAPACITY: u32 = 1 << 22;

/// The shared header. 512 bytes: three 128-byte blocks so that the config (read-mostly), the
/// writer-owned and the reader-owned fields never share a cache line (128 bytes covers Apple
/// silicon's line size and Intel's adjacent-line prefetch), then a reserved block.
///
/// Every field is an atomic because the other side is another process that may be writing it
/// at any moment (or may be garbage): plain reads would be data races.
#[repr(C, align(128))]
pub(crate) struct RawHeader {
    // ---- config block: written by the writer only while `state == STATE_INIT` ----
    pub magic: AtomicU64,              // 0
    pub version: AtomicU32,            // 8
    pub header_bytes: AtomicU32,       // 12
    pub sample_rate: AtomicU32,        // 16
    pub channels: AtomicU32,           // 20
    pub format: AtomicU32,             // 24
    pub capacity_frames: AtomicU32,    // 28
    pub target_fill_frames: AtomicU32, // 32
    pub max_fill_frames: AtomicU32,    // 36
    pub total_bytes: AtomicU64,        // 40
    pub generation: AtomicU64,         // 48
    pub state: AtomicU32,              // 56
    pub checksum: AtomicU32,           // 60
    _reserved0: [AtomicU64; 8],        // 64..128
    // ---- writer block (128): stored only by the writer ----
    pub write_index: AtomicU64,           // 128
    pub heartbeat: AtomicU64,             // 136
    pub writer_dropped_frames: AtomicU64, // 144
    pub anchor_seq: AtomicU64,            // 152
    pub anchor_frame: AtomicU64,          // 160
    pub anchor_host_ns: AtomicU64,        // 168
    pub writer_pid: AtomicU64,            // 176
    _reserved1: [AtomicU64; 9],           // 184..256
    // ---- reader block (256): stored only by the reader ----
    pub read_index: AtomicU64,       // 256
    pub reader_heartbeat: AtomicU64, // 264
    pub underrun_frames: AtomicU64,  // 272
    pub overrun_frames: AtomicU64,   // 280
    pub resyncs: AtomicU64,          // 288
    _reserved2: [AtomicU64; 11],     // 296..384
    // ---- reserved block (384..512) ----
    _reserved3: [AtomicU64; 16],
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<RawHeader>() == HEADER_BYTES as usize);
    assert!(align_of::<RawHeader>() == 128);
    assert!(offset_of!(RawHeader, magic) == 0);
    assert!(offset_of!(RawHeader, version) == 8);
    assert!(offset_of!(RawHeader, header_bytes) == 12);
    assert!(offset_of!(RawHeader, sample_rate) == 16);
    assert!(offset_of!(RawHeader, channels) == 20);
    assert!(offset_of!(RawHeader, format) == 24);
    assert!(offset_of!(RawHeader, capacity_frames) == 28);
    assert!(offset_of!(RawHeader, target_fill_frames) == 32);
    assert!(offset_of!(RawHeader, max_fill_frames) == 36);
    assert!(offset_of!(RawHeader, total_bytes) == 40);
    assert!(offset_of!(RawHeader, generation) == 48);
    assert!(offset_of!(RawHeader, state) == 56);
    assert!(offset_of!(RawHeader, checksum) == 60);
    assert!(offset_of!(RawHeader, write_index) == 128);
    assert!(offset_of!(RawHeader, heartbeat) == 136);
    assert!(offset_of!(RawHeader, writer_dropped_frames) == 144);
    assert!(offset_of!(RawHeader, anchor_seq) == 152);
    assert!(offset_of!(RawHeader, anchor_frame) == 160);
    assert!(offset_of!(RawHeader, anchor_host_ns) == 168);
    assert!(offset_of!(RawHeader, writer_pid) == 176);
    assert!(offset_of!(RawHeader, read_index) == 256);
    assert!(offset_of!(RawHeader, reader_heartbeat) == 264);
    assert!(offset_of!(RawHeader, underrun_frames) == 272);
    assert!(offset_of!(RawHeader, overrun_frames) == 280);
    assert!(offset_of!(RawHeader, resyncs) == 288);
    // The atomics must be plain integers in memory for the C side.
    assert!(size_of::<AtomicU64>() == 8 && size_of::<AtomicU32>() == 4);
};

/// `(name, offset)` of every protocol field, printed by the `krisp-ring-layout` helper and
/// compared with the C header's `offsetof` in the layout test.
#[cfg(not(loom))]
pub const FIELD_OFFSETS: &[(&str, usize)] = {
    use core::mem::offset_of;
    &[
        ("magic", offset_of!(RawHeader, magic)),
        ("version", offset_of!(RawHeader, version)),
        ("header_bytes", offset_of!(RawHeader, header_bytes)),
        ("sample_rate", offset_of!(RawHeader, sample_rate)),
        ("channels", offset_of!(RawHeader, channels)),
        ("format", offset_of!(RawHeader, format)),
        ("capacity_frames", offset_of!(RawHeader, capacity_frames)),
        (
            "target_fill_frames",
            offset_of!(RawHeader, target_fill_frames),
        ),
        ("max_fill_frames", offset_of!(RawHeader, max_fill_frames)),
        ("total_bytes", offset_of!(RawHeader, total_bytes)),
        ("generation", offset_of!(RawHeader, generation)),
        ("state", offset_of!(RawHeader, state)),
        ("checksum", offset_of!(RawHeader, checksum)),
        ("write_index", offset_of!(RawHeader, write_index)),
        ("heartbeat", offset_of!(RawHeader, heartbeat)),
        (
            "writer_dropped_frames",
            offset_of!(RawHeader, writer_dropped_frames),
        ),
        ("anchor_seq", offset_of!(RawHeader, anchor_seq)),
        ("anchor_frame", offset_of!(RawHeader, anchor_frame)),
        ("anchor_host_ns", offset_of!(RawHeader, anchor_host_ns)),
        ("writer_pid", offset_of!(RawHeader, writer_pid)),
        ("read_index", offset_of!(RawHeader, read_index)),
        ("reader_heartbeat", offset_of!(RawHeader, reader_heartbeat)),
        ("underrun_frames", offset_of!(RawHeader, underrun_frames)),
        ("overrun_frames", offset_of!(RawHeader, overrun_frames)),
        ("resyncs", offset_of!(RawHeader, resyncs)),
        ("sizeof_header", core::mem::size_of::<RawHeader>()),
    ]
};

/// FNV-1a (32-bit) over the config fields as little-endian bytes, in field order; `generation`
/// is included so that a header torn between two initialisations fails the check.
pub fn checksum(h: &Header, total_bytes: u64, generation: u64) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&MAGIC.to_le_bytes());
    feed(&h.version.to_le_bytes());
    feed(&HEADER_BYTES.to_le_bytes());
    feed(&h.sample_rate.to_le_bytes());
    feed(&h.channels.to_le_bytes());
    feed(&FORMAT_F32_INTERLEAVED.to_le_bytes());
    feed(&h.capacity_frames.to_le_bytes());
    feed(&h.target_fill_frames.to_le_bytes());
    feed(&h.max_fill_frames.to_le_bytes());
    feed(&total_bytes.to_le_bytes());
    feed(&generation.to_le_bytes());
    hash
}

/// Bytes a segment of this geometry needs: header plus `capacity * channels` f32 samples.
pub fn total_bytes(capacity_frames: u32, channels: u32) -> u64 {
    u64::from(HEADER_BYTES) + u64::from(capacity_frames) * u64::from(channels) * 4
}

/// Checks a geometry for consistency; used for both a writer's config and a header read back.
pub fn check_geometry(h: &Header) -> Result<(), ShmError> {
    let bad = |what: &'static str| Err(ShmError::BadGeometry { what, header: *h });
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&h.sample_rate) {
        return bad("sample rate out of range");
    }
    if h.channels == 0 || h.channels > MAX_CHANNELS {
        return bad("channel count out of range");
    }
    if !h.capacity_frames.is_power_of_two()
        || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&h.capacity_frames)
    {
        return bad("capacity is not a power of two in range");
    }
    if h.target_fill_frames == 0
        || h.max_fill_frames <= h.target_fill_frames
        || h.max_fill_frames > h.capacity_frames
    {
        return bad("fill bounds must satisfy 0 < target < max_fill <= capacity");
    }
    Ok(())
}

impl RawHeader {
    /// Reads and validates the header as a reader must before trusting anything in it.
    ///
    /// `mapped_len` is the size of the mapping actually held: the header's own size claim is
    /// never trusted for memory bounds. `generation` is a sequence lock: odd while the writer
    /// rewrites the config block, even (and bumped) once it is published. Reading it before and
    /// after the config fields means a concurrent re-initialisation is reported as
    /// [`ShmError::NotReady`] instead of yielding a mix of two headers.
    pub fn validate(&self, mapped_len: usize) -> Result<(Header, u64), ShmError> {
        let generation = self.generation.load(Ordering::Acquire);
        let state = self.state.load(Ordering::Relaxed);
        let magic = self.magic.load(Ordering::Relaxed);
        let version = self.version.load(Ordering::Relaxed);
        let header_bytes = self.header_bytes.load(Ordering::Relaxed);
        let format = self.format.load(Ordering::Relaxed);
        let h = Header {
            version,
            sample_rate: self.sample_rate.load(Ordering::Relaxed),
            channels: self.channels.load(Ordering::Relaxed),
            capacity_frames: self.capacity_frames.load(Ordering::Relaxed),
            target_fill_frames: self.target_fill_frames.load(Ordering::Relaxed),
            max_fill_frames: self.max_fill_frames.load(Ordering::Relaxed),
            generation,
        };
        let total = self.total_bytes.load(Ordering::Relaxed);
        let sum = self.checksum.load(Ordering::Relaxed);
        // Order the loads above before the re-check below (seqlock read side).
        fence(Ordering::Acquire);
        let generation2 = self.generation.load(Ordering::Relaxed);

        if magic == 0 && state == STATE_INIT {
            // A fresh, zero-filled segment the writer has not initialised yet.
            return Err(ShmError::NotReady);
        }
        if magic != MAGIC {
            return Err(ShmError::BadMagic { found: magic });
        }
        if version != VERSION {
            return Err(ShmError::VersionMismatch {
                found: version,
                supported: VERSION,
            });
        }
        if !generation.is_multiple_of(2) || generation2 != generation {
            return Err(ShmError::NotReady);
        }
        match state {
            STATE_READY => {}
            STATE_RETIRED => return Err(ShmError::Retired),
            STATE_INIT => return Err(ShmError::NotReady),
            other => return Err(ShmError::BadState { found: other }),
        }
        if header_bytes != HEADER_BYTES {
            return Err(ShmError::BadGeometry {
                what: "header size",
                header: h,
            });
        }
        if format != FORMAT_F32_INTERLEAVED {
            return Err(ShmError::UnsupportedFormat { found: format });
        }
        let expected = checksum(&h, total, generation);
        if sum != expected {
            return Err(ShmError::ChecksumMismatch {
                found: sum,
                expected,
            });
        }
        check_geometry(&h)?;
        if total != total_bytes(h.capacity_frames, h.channels) {
            return Err(ShmError::BadGeometry {
                what: "total size",
                header: h,
            });
        }
        if total > mapped_len as u64 {
            return Err(ShmError::SegmentTooSmall {
                needed: total,
                actual: mapped_len as u64,
            });
        }
        Ok((h, generation))
    }

    /// Writes a fresh config block and publishes it; returns the new (even) generation.
    /// Called only by the single writer.
    pub fn publish(&self, h: &Header) -> u64 {
        let old = self.generation.load(Ordering::Relaxed);
        let odd = old.wrapping_add(if old.is_multiple_of(2) { 1 } else { 2 });
        let generation = odd.wrapping_add(1);
        self.generation.store(odd, Ordering::Relaxed);
        self.state.store(STATE_INIT, Ordering::Relaxed);
        // A reader that observes any config store below also observes the odd generation or a
        // later value on its re-check (seqlock write side).
        fence(Ordering::Release);
        let total = total_bytes(h.capacity_frames, h.channels);
        self.magic.store(MAGIC, Ordering::Relaxed);
        self.version.store(VERSION, Ordering::Relaxed);
        self.header_bytes.store(HEADER_BYTES, Ordering::Relaxed);
        self.sample_rate.store(h.sample_rate, Ordering::Relaxed);
        self.channels.store(h.channels, Ordering::Relaxed);
        self.format.store(FORMAT_F32_INTERLEAVED, Ordering::Relaxed);
        self.capacity_frames
            .store(h.capacity_frames, Ordering::Relaxed);
        self.target_fill_frames
            .store(h.target_fill_frames, Ordering::Relaxed);
        self.max_fill_frames
            .store(h.max_fill_frames, Ordering::Relaxed);
        self.total_bytes.store(total, Ordering::Relaxed);
        self.checksum
            .store(checksum(h, total, generation), Ordering::Relaxed);
        self.state.store(STATE_READY, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// Tells readers that this segment is abandoned and they should reopen the name.
    #[cfg_attr(loom, allow(dead_code))]
    pub fn retire(&self) {
        self.state.store(STATE_RETIRED, Ordering::Release);
    }
}

#[cfg(loom)]
impl RawHeader {
    /// A zeroed header built from loom atomics (loom cannot reinterpret raw memory).
    pub fn new_zeroed() -> Self {
        let z64 = || AtomicU64::new(0);
        let z32 = || AtomicU32::new(0);
        Self {
            magic: z64(),
            version: z32(),
            header_bytes: z32(),
            sample_rate: z32(),
            channels: z32(),
            format: z32(),
            capacity_frames: z32(),
            target_fill_frames: z32(),
            max_fill_frames: z32(),
            total_bytes: z64(),
            generation: z64(),
            state: z32(),
            checksum: z32(),
            _reserved0: std::array::from_fn(|_| z64()),
            write_index: z64(),
            heartbeat: z64(),
            writer_dropped_frames: z64(),
            anchor_seq: z64(),
            anchor_frame: z64(),
            anchor_host_ns: z64(),
            writer_pid: z64(),
            _reserved1: std::array::from_fn(|_| z64()),
            read_index: z64(),
            reader_heartbeat: z64(),
            underrun_frames: z64(),
            overrun_frames: z64(),
            resyncs: z64(),
            _reserved2: std::array::from_fn(|_| z64()),
            _reserved3: std::array::from_fn(|_| z64()),
        }
    }
}
