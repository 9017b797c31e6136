//! The writer and reader ends of the ring.
//!
//! Realtime rules for [`RingWriter::write`], [`RingWriter::heartbeat`], [`RingWriter::fill`],
//! [`RingReader::read`]: no allocation, no locks, no system calls, no logging. They touch only
//! atomics, the local struct and the sample slots, and report trouble through counters and
//! [`ReaderState`]. Creating and opening rings (`create`, `open`) is not realtime-safe.
//!
//! Index protocol (see `drivers/PROTOCOL.md` for the full invariants):
//! * `write_index` (W) and `read_index` (R) count frames since the ring began and never wrap in
//!   practice (2^64 frames is millions of years); slot = index mod capacity.
//! * Only the writer stores W, only the reader stores R. Always `0 <= W - R <= capacity`.
//! * The writer fills slots `[W, R + capacity)` then publishes W with Release; the reader loads W
//!   with Acquire, copies `[R, W)`, then publishes R with Release; the writer loads R with
//!   Acquire before reusing those slots. So a slot is never accessed by both sides at once.
//! * The writer never overwrites unread frames. When the ring is full it drops the incoming
//!   frames and bumps `writer_dropped_frames`. The *reader* drops oldest: if the fill exceeds
//!   `max_fill` it advances R to leave `target_fill` frames (counted as overrun), and if the
//!   writer dropped frames it discards everything queued (the queue ends in a gap, so it is
//!   stale) and prefills again.

use super::layout::{RawHeader, STATE_READY, STATE_RETIRED};
#[cfg(loom)]
use super::loom_mem::Region;
#[cfg(not(loom))]
use super::region::Region;
use super::sync::{Ordering, fence};
use super::{Header, RingConfig, ShmError};
use std::sync::Arc;

/// What the reader did in one [`RingReader::read`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderState {
    /// Audio was played (possibly after skipping oldest frames to bound latency).
    Playing,
    /// Waiting for the ring to reach its target fill after a start, resync or underrun; silence.
    Prefilling,
    /// Played what there was and filled the rest with silence (counted).
    Underrun,
    /// The writer's heartbeat is stale (app quit or crashed); silence, the device stays.
    WriterGone,
    /// The header is being (re)initialised or failed validation; silence.
    NotReady,
    /// The segment was retired or changed geometry: the control thread should reopen it.
    NeedsReopen,
}

/// The result of one [`RingReader::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReport {
    /// Frames of real audio at the start of the output; the rest is silence.
    pub audio_frames: usize,
    /// Frames queued in the ring when the read started (after any skip or resync).
    pub fill_before: u64,
    /// What happened.
    pub state: ReaderState,
}

/// Counters kept by the reader (also mirrored into the shared reader block).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Frames of real audio played.
    pub played_frames: u64,
    /// Frames of silence played because the ring ran dry while playing.
    pub underrun_frames: u64,
    /// Oldest frames skipped to bound latency.
    pub overrun_frames: u64,
    /// Times the reader discarded the queue and started over (start, writer restart or return,
    /// writer drops, corrupt indices).
    pub resyncs: u64,
    /// Queued frames thrown away by resyncs (stale or ending in a gap).
    pub discarded_frames: u64,
    /// Times the writer's heartbeat went stale.
    pub writer_gone_events: u64,
    /// Frames of silence played for any reason (prefill, underrun, writer gone, not ready).
    pub silence_frames: u64,
}

/// Counters kept by the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Frames accepted into the ring.
    pub written_frames: u64,
    /// Frames dropped because the ring was full (reader stalled or absent).
    pub dropped_frames: u64,
}

/// Geometry both ends cache locally so that nothing in shared memory is re-trusted per call.
#[derive(Clone, Copy)]
struct Geometry {
    capacity: u64,
    channels: usize,
}

impl Geometry {
    fn of(h: &Header) -> Self {
        Self {
            capacity: u64::from(h.capacity_frames),
            channels: h.channels as usize,
        }
    }

    /// Sample offsets and lengths of the (up to two) contiguous runs for `frames` frames
    /// starting at ring index `index`.
    fn runs(&self, index: u64, frames: usize) -> [(usize, usize); 2] {
        let slot = (index & (self.capacity - 1)) as usize;
        let first = frames.min(self.capacity as usize - slot);
        [
            (slot * self.channels, first * self.channels),
            (0, (frames - first) * self.channels),
        ]
    }
}

/// The app's end: writes interleaved f32 frames into the ring.
pub struct RingWriter {
    region: Arc<Region>,
    geo: Geometry,
    header: Header,
    w: u64,
    heartbeat: u64,
    anchor_seq: u64,
    stats: WriterStats,
    name: Option<String>,
}

impl RingWriter {
    /// Creates (or takes over) the POSIX shared-memory segment `config.name` and publishes a
    /// fresh header. An existing segment of the right size is reused in place, so a driver
    /// that has it mapped picks up the new writer; one of another size is retired, unlinked and
    /// recreated. The segment is not unlinked on drop (the driver keeps the device present);
    /// see [`RingWriter::remove`].
    #[cfg(all(unix, not(loom)))]
    pub fn create(config: &RingConfig) -> Result<Self, ShmError> {
        use super::region::os;
        let header = config.to_header()?;
        let total = super::layout::total_bytes(header.capacity_frames, header.channels);
        let name = config.name.as_str();
        let mut fd = os::open(name, true, false)?;
        let size = os::size(&fd, name)?;
        let mut fresh = size == 0;
        if size != 0 && size != total {
            let header_bytes = super::layout::HEADER_BYTES;
            if size >= u64::from(header_bytes)
                && let Ok(old) = os::map(&fd, name, header_bytes as usize)
                && old.header().magic.load(Ordering::Relaxed) == super::layout::MAGIC
            {
                old.header().retire();
            }
            drop(fd);
            match os::unlink(name) {
                Ok(()) | Err(ShmError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            fd = os::open(name, true, true)?;
            fresh = true;
        }
        if fresh {
            os::resize(&fd, name, total)?;
        }
        let region = os::map(&fd, name, total as usize)?;
        let mut w = Self::attach(Arc::new(region), header);
        w.name = Some(config.name.clone());
        Ok(w)
    }

    /// Removes the named segment (uninstall, tests). Mapped readers keep their memory; they see
    /// a stale heartbeat unless a new writer takes the name over.
    #[cfg(all(unix, not(loom)))]
    pub fn remove(name: &str) -> Result<(), ShmError> {
        super::region::os::unlink(name)
    }

    /// Takes over `region` and publishes `header` (new generation).
    pub(crate) fn attach(region: Arc<Region>, header: Header) -> Self {
        let geo = Geometry::of(&header);
        let hdr = region.header();
        let old_w = hdr.write_index.load(Ordering::Relaxed);
        let r = hdr.read_index.load(Ordering::Acquire);
        // Continue the old stream if the indices are consistent, so a reader that is mid-read
        // never sees W move backwards; otherwise start empty at R.
        let w = if old_w.wrapping_sub(r) <= geo.capacity {
            old_w
        } else {
            r
        };
        hdr.write_index.store(w, Ordering::Release);
        hdr.writer_pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        let dropped = hdr.writer_dropped_frames.load(Ordering::Relaxed);
        let heartbeat = hdr.heartbeat.load(Ordering::Relaxed).wrapping_add(1);
        hdr.heartbeat.store(heartbeat, Ordering::Release);
        let anchor_seq = hdr.anchor_seq.load(Ordering::Relaxed) & !1;
        let generation = hdr.publish(&header);
        Self {
            region,
            geo,
            header: Header {
                generation,
                ..header
            },
            w,
            heartbeat,
            anchor_seq,
            stats: WriterStats {
                written_frames: 0,
                dropped_frames: dropped,
            },
            name: None,
        }
    }

    fn hdr(&self) -> &RawHeader {
        self.region.header()
    }

    /// Writes interleaved frames (`frames.len()` must be a multiple of the channel count);
    /// returns how many frames were accepted. When the ring is full the remaining frames are
    /// dropped and counted — the writer never blocks and never overwrites unread audio.
    /// Also beats the heartbeat. Realtime-safe.
    pub fn write(&mut self, frames: &[f32]) -> usize {
        let n_frames = frames.len() / self.geo.channels;
        let r = self.hdr().read_index.load(Ordering::Acquire);
        let fill = self.w.wrapping_sub(r);
        let free = self.geo.capacity.saturating_sub(fill);
        let n = (n_frames as u64).min(free) as usize;
        if n > 0 {
            let mut src = &frames[..n * self.geo.channels];
            for (at, len) in self.geo.runs(self.w, n) {
                let (head, tail) = src.split_at(len);
                // SAFETY: `runs` keeps at+len within capacity*channels samples, which the
                // region holds (checked when the header was built). These slots are free:
                // `fill + n <= capacity`, and the reader released them with its Release store
                // of R that our Acquire load above observed.
                unsafe { self.region.copy_in(at, head) };
                src = tail;
            }
            self.w = self.w.wrapping_add(n as u64);
            self.hdr().write_index.store(self.w, Ordering::Release);
            self.stats.written_frames += n as u64;
        }
        if n < n_frames {
            self.stats.dropped_frames += (n_frames - n) as u64;
            self.hdr()
                .writer_dropped_frames
                .store(self.stats.dropped_frames, Ordering::Release);
        }
        self.heartbeat();
        n
    }

    /// Signals "still alive" without writing (e.g. while the app is muted). Realtime-safe.
    pub fn heartbeat(&mut self) {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        self.hdr()
            .heartbeat
            .store(self.heartbeat, Ordering::Release);
    }

    /// Frames currently queued (written, not yet read): the measurement the
    /// [`DriftController`](super::DriftController) steers on. Realtime-safe.
    pub fn fill(&self) -> u64 {
        let r = self.hdr().read_index.load(Ordering::Acquire);
        self.w.wrapping_sub(r).min(self.geo.capacity)
    }

    /// Publishes a clock anchor: ring frame `frame` was captured at `host_ns` on the writer's
    /// monotonic clock. Advisory (drivers may use it to report latency). Realtime-safe.
    pub fn publish_anchor(&mut self, frame: u64, host_ns: u64) {
        let hdr = self.region.header();
        self.anchor_seq = self.anchor_seq.wrapping_add(1); // odd: writing
        hdr.anchor_seq.store(self.anchor_seq, Ordering::Relaxed);
        fence(Ordering::Release);
        hdr.anchor_frame.store(frame, Ordering::Relaxed);
        hdr.anchor_host_ns.store(host_ns, Ordering::Relaxed);
        self.anchor_seq = self.anchor_seq.wrapping_add(1); // even: stable
        hdr.anchor_seq.store(self.anchor_seq, Ordering::Release);
    }

    /// The writer's counters.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// The counters the reader mirrors into shared memory: (underrun, overrun, resyncs).
    pub fn reader_counters(&self) -> (u64, u64, u64) {
        let h = self.hdr();
        (
            h.underrun_frames.load(Ordering::Relaxed),
            h.overrun_frames.load(Ordering::Relaxed),
            h.resyncs.load(Ordering::Relaxed),
        )
    }

    /// The published header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// Frames ever written (W): the ring frame index the next write starts at.
    pub fn write_index(&self) -> u64 {
        self.w
    }

    /// The segment name, for shared-memory rings.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// A read-only view of this ring's shared counters for a control thread (UI, status),
    /// while the writer itself lives on the realtime thread.
    pub fn monitor(&self) -> RingMonitor {
        RingMonitor {
            region: Arc::clone(&self.region),
            capacity: self.geo.capacity,
        }
    }

    /// The reader's clock in frames as it last mirrored it: it moves while a reader plays.
    /// Realtime-safe.
    pub fn reader_heartbeat(&self) -> u64 {
        self.hdr().reader_heartbeat.load(Ordering::Relaxed)
    }
}

/// What a control thread may watch of a ring written elsewhere: fill, whether a reader plays,
/// and the reader's mirrored counters. Only loads; cheap to clone.
#[derive(Clone)]
pub struct RingMonitor {
    region: Arc<Region>,
    capacity: u64,
}

/// The shared counters of a ring at one moment, as seen by [`RingMonitor::snapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Frames written and not yet read (`W - R`, at most the capacity).
    pub fill: u64,
    /// Frames ever written (W).
    pub write_index: u64,
    /// The reader's clock in frames; it moves while a reader plays.
    pub reader_heartbeat: u64,
    /// Silence frames the reader played because the ring ran dry.
    pub underrun_frames: u64,
    /// Oldest frames the reader skipped to keep latency bounded.
    pub overrun_frames: u64,
    /// Times the reader discarded the queue and started over.
    pub resyncs: u64,
    /// Frames the writer dropped because the ring was full (no reader, or a stalled one).
    pub writer_dropped_frames: u64,
}

impl RingMonitor {
    /// Loads the counters (each atomically; together they are only roughly simultaneous).
    pub fn snapshot(&self) -> RingCounters {
        let h = self.region.header();
        let w = h.write_index.load(Ordering::Acquire);
        let r = h.read_index.load(Ordering::Acquire);
        RingCounters {
            fill: w.wrapping_sub(r).min(self.capacity),
            write_index: w,
            reader_heartbeat: h.reader_heartbeat.load(Ordering::Relaxed),
            underrun_frames: h.underrun_frames.load(Ordering::Relaxed),
            overrun_frames: h.overrun_frames.load(Ordering::Relaxed),
            resyncs: h.resyncs.load(Ordering::Relaxed),
            writer_dropped_frames: h.writer_dropped_frames.load(Ordering::Relaxed),
        }
    }
}

/// The driver's end: reads frames at the device's own clock.
pub struct RingReader {
    region: Arc<Region>,
    geo: Geometry,
    header: Header,
    generation: u64,
    r: u64,
    clock: u64,
    last_heartbeat: u64,
    last_heartbeat_at: u64,
    stale_after: u64,
    last_dropped: u64,
    resync_pending: bool,
    prefilling: bool,
    writer_gone: bool,
    needs_reopen: bool,
    stats: ReaderStats,
}

impl RingReader {
    /// Opens the POSIX shared-memory segment `name` written by a [`RingWriter`] and validates
    /// its header. Fails (and logs nothing: the caller decides) if it is missing, garbage, of
    /// another protocol version, or being initialised.
    #[cfg(all(unix, not(loom)))]
    pub fn open(name: &str) -> Result<Self, ShmError> {
        use super::region::os;
        let fd = os::open(name, false, false)?;
        let size = os::size(&fd, name)?;
        let len = usize::try_from(size).map_err(|_| ShmError::InvalidConfig {
            what: "segment too large",
        })?;
        let region = os::map(&fd, name, len)?;
        Self::attach(Arc::new(region))
    }

    pub(crate) fn attach(region: Arc<Region>) -> Result<Self, ShmError> {
        let (header, generation) = region.header().validate(region.len())?;
        let geo = Geometry::of(&header);
        let hdr = region.header();
        let r = hdr.read_index.load(Ordering::Relaxed);
        let last_heartbeat = hdr.heartbeat.load(Ordering::Acquire);
        let last_dropped = hdr.writer_dropped_frames.load(Ordering::Acquire);
        let stale_after = u64::from(header.sample_rate) / 5;
        Ok(Self {
            region,
            geo,
            header,
            generation,
            r,
            clock: 0,
            last_heartbeat,
            last_heartbeat_at: 0,
            stale_after,
            last_dropped,
            resync_pending: true,
            prefilling: true,
            writer_gone: false,
            needs_reopen: false,
            stats: ReaderStats::default(),
        })
    }

    /// How long (in frames of the reader's own clock) the writer's heartbeat may stand still
    /// before the writer counts as gone. Default: 200 ms.
    pub fn set_stale_after_frames(&mut self, frames: u64) {
        self.stale_after = frames.max(1);
    }

    /// Call when the device (re)starts IO: drops whatever is queued (it would be stale) and
    /// prefills afresh.
    pub fn restart(&mut self) {
        self.resync_pending = true;
    }

    /// Fills `out` (interleaved, a multiple of the channel count) with the next frames, or with
    /// silence where there are none, advancing the reader's clock by the frames requested.
    /// Never fails, never blocks. Realtime-safe.
    pub fn read(&mut self, out: &mut [f32]) -> ReadReport {
        let n = out.len() / self.geo.channels;
        self.clock = self.clock.wrapping_add(n as u64);
        let report = self.read_inner(out, n);
        let silent = n - report.audio_frames;
        out[report.audio_frames * self.geo.channels..].fill(0.0);
        self.stats.played_frames += report.audio_frames as u64;
        self.stats.silence_frames += silent as u64;
        let hdr = self.region.header();
        hdr.reader_heartbeat.store(self.clock, Ordering::Relaxed);
        report
    }

    fn read_inner(&mut self, out: &mut [f32], n: usize) -> ReadReport {
        let silence = |state, fill_before| ReadReport {
            audio_frames: 0,
            fill_before,
            state,
        };
        if self.needs_reopen {
            return silence(ReaderState::NeedsReopen, 0);
        }
        let region = &*self.region;
        let hdr = region.header();

        // 1. Header: same generation and still live? Otherwise re-validate in place (atomics
        //    and arithmetic only, so this stays realtime-safe).
        let generation = hdr.generation.load(Ordering::Acquire);
        let state = hdr.state.load(Ordering::Acquire);
        if state == STATE_RETIRED {
            self.needs_reopen = true;
            return silence(ReaderState::NeedsReopen, 0);
        }
        if generation != self.generation || state != STATE_READY {
            match hdr.validate(region.len()) {
                Ok((h, g)) => {
                    if h.capacity_frames != self.header.capacity_frames
                        || h.channels != self.header.channels
                        || h.sample_rate != self.header.sample_rate
                    {
                        self.needs_reopen = true;
                        return silence(ReaderState::NeedsReopen, 0);
                    }
                    self.header = h;
                    self.generation = g;
                    self.resync_pending = true;
                }
                Err(_) => return silence(ReaderState::NotReady, 0),
            }
        }

        // 2. Heartbeat, judged on the reader's own clock so the two clocks never need to agree.
        let beat = hdr.heartbeat.load(Ordering::Acquire);
        if beat != self.last_heartbeat {
            self.last_heartbeat = beat;
            self.last_heartbeat_at = self.clock;
            if self.writer_gone {
                self.writer_gone = false;
                self.resync_pending = true;
            }
        } else if self.clock.wrapping_sub(self.last_heartbeat_at) > self.stale_after {
            if !self.writer_gone {
                self.writer_gone = true;
                self.stats.writer_gone_events += 1;
            }
            return silence(ReaderState::WriterGone, 0);
        }

        // 3. Indices.
        let w = hdr.write_index.load(Ordering::Acquire);
        let dropped = hdr.writer_dropped_frames.load(Ordering::Acquire);
        let mut fill = w.wrapping_sub(self.r);
        if self.resync_pending || fill > self.geo.capacity || dropped != self.last_dropped {
            // Start over at the newest frame: whatever is queued is stale, ends in a gap, or
            // the indices are not trustworthy.
            self.last_dropped = dropped;
            if fill <= self.geo.capacity {
                self.stats.discarded_frames += fill;
            }
            self.r = w;
            fill = 0;
            self.resync_pending = false;
            self.prefilling = true;
            self.stats.resyncs += 1;
            hdr.resyncs.store(self.stats.resyncs, Ordering::Relaxed);
        }
        let target = u64::from(self.header.target_fill_frames);
        if fill > u64::from(self.header.max_fill_frames) {
            // Latency bound exceeded: drop the oldest frames, keep `target`.
            let skip = fill - target;
            self.r = self.r.wrapping_add(skip);
            fill = target;
            self.stats.overrun_frames += skip;
            hdr.overrun_frames
                .store(self.stats.overrun_frames, Ordering::Relaxed);
        }
        if self.prefilling {
            if fill >= target {
                self.prefilling = false;
            } else {
                hdr.read_index.store(self.r, Ordering::Release);
                return silence(ReaderState::Prefilling, fill);
            }
        }

        // 4. Copy.
        let avail = fill.min(n as u64) as usize;
        let mut dst = &mut out[..avail * self.geo.channels];
        for (at, len) in self.geo.runs(self.r, avail) {
            let (head, tail) = dst.split_at_mut(len);
            // SAFETY: `runs` keeps at+len within capacity*channels samples, which the mapping
            // holds (validated against its real length). These slots hold published frames:
            // `avail <= W - R` with W loaded with Acquire above, pairing with the writer's
            // Release store; the writer will not reuse them until it sees our R store below.
            unsafe { region.copy_out(at, head) };
            dst = tail;
        }
        // The other side is another process: never pass on NaN or infinity.
        for s in &mut out[..avail * self.geo.channels] {
            if !s.is_finite() {
                *s = 0.0;
            }
        }
        self.r = self.r.wrapping_add(avail as u64);
        hdr.read_index.store(self.r, Ordering::Release);
        if avail < n {
            self.stats.underrun_frames += (n - avail) as u64;
            hdr.underrun_frames
                .store(self.stats.underrun_frames, Ordering::Relaxed);
            self.prefilling = true;
            return ReadReport {
                audio_frames: avail,
                fill_before: fill,
                state: ReaderState::Underrun,
            };
        }
        ReadReport {
            audio_frames: avail,
            fill_before: fill,
            state: ReaderState::Playing,
        }
    }

    /// The last clock anchor the writer published, as `(ring frame, writer host ns)`.
    pub fn anchor(&self) -> Option<(u64, u64)> {
        let hdr = self.region.header();
        for _ in 0..4 {
            let s1 = hdr.anchor_seq.load(Ordering::Acquire);
            if !s1.is_multiple_of(2) {
                continue;
            }
            let frame = hdr.anchor_frame.load(Ordering::Relaxed);
            let ns = hdr.anchor_host_ns.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if hdr.anchor_seq.load(Ordering::Relaxed) == s1 && s1 != 0 {
                return Some((frame, ns));
            }
        }
        None
    }

    /// True once the segment was retired or changed geometry: drop this reader and open the
    /// name again from a non-realtime thread.
    pub fn needs_reopen(&self) -> bool {
        self.needs_reopen
    }

    /// The reader's counters.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// The header as last validated.
    pub fn header(&self) -> Header {
        self.header
    }
}

/// A writer and a reader over one heap-allocated ring, for in-process use and tests.
pub fn heap_pair(config: &RingConfig) -> Result<(RingWriter, RingReader), ShmError> {
    let header = config.to_header()?;
    let total = super::layout::total_bytes(header.capacity_frames, header.channels);
    let len = usize::try_from(total).map_err(|_| ShmError::InvalidConfig {
        what: "ring too large",
    })?;
    let region = Arc::new(Region::heap(len)?);
    debug_assert!(region.sample_count() >= (header.capacity_frames * header.channels) as usize);
    let writer = RingWriter::attach(Arc::clone(&region), header);
    let reader = RingReader::attach(region)?;
    Ok((writer, reader))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::shm::layout::{STATE_INIT, VERSION};

    fn cfg() -> RingConfig {
        RingConfig::new("/unit").fill(1024, 256, 768)
    }

    /// A counting signal: frame k of the stream carries k+1 (0 is reserved for silence).
    fn counting(start: u64, frames: usize) -> Vec<f32> {
        (0..frames as u64).map(|k| (start + k + 1) as f32).collect()
    }

    #[test]
    fn delivers_every_frame_in_order_with_odd_block_sizes() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        let mut next_in = 0u64;
        let mut expect = 1.0f32;
        let mut out = vec![0.0; 700];
        r.read(&mut out[..1]); // start IO: the reader resyncs to the (empty) stream head
        let mut seed = 12345u32;
        let mut started = false;
        for _ in 0..5_000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = 1 + (seed >> 24) as usize % 200;
            if w.fill() + n as u64 <= 700 {
                assert_eq!(w.write(&counting(next_in, n)), n);
                next_in += n as u64;
            }
            let m = 1 + (seed >> 16) as usize % 180;
            let rep = r.read(&mut out[..m]);
            if rep.audio_frames > 0 {
                started = true;
            }
            for &s in &out[..rep.audio_frames] {
                assert_eq!(s, expect);
                expect += 1.0;
            }
            if started && rep.state == ReaderState::Underrun {
                // Underruns are allowed with random sizes, but must not lose or repeat frames.
                assert!(rep.audio_frames < m);
            }
        }
        assert!(expect > 100_000.0);
        assert_eq!(r.stats().overrun_frames, 0);
        assert_eq!(w.stats().dropped_frames, 0);
    }

    #[test]
    fn underrun_plays_silence_counts_it_and_resumes_without_loss() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        let mut out = vec![1.0; 128];
        assert_eq!(r.read(&mut out).state, ReaderState::Prefilling);
        assert!(out.iter().all(|&s| s == 0.0));
        w.write(&counting(0, 300));
        assert_eq!(r.read(&mut out).state, ReaderState::Playing);
        assert_eq!(r.read(&mut out).state, ReaderState::Playing);
        let rep = r.read(&mut out);
        assert_eq!((rep.state, rep.audio_frames), (ReaderState::Underrun, 44));
        assert_eq!(out[43], 300.0);
        assert!(out[44..].iter().all(|&s| s == 0.0));
        assert_eq!(r.stats().underrun_frames, 84);
        // Back to prefill; the stream continues exactly where it stopped.
        w.write(&counting(300, 256));
        let rep = r.read(&mut out);
        assert_eq!(rep.state, ReaderState::Playing);
        assert_eq!(out[0], 301.0);
    }

    #[test]
    fn latency_bound_drops_oldest_and_counts_overrun() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        let mut out = vec![0.0; 64];
        r.read(&mut out);
        w.write(&counting(0, 300));
        r.read(&mut out);
        w.write(&counting(300, 700)); // fill 236 + 700 = 936 > 768
        let rep = r.read(&mut out);
        assert_eq!(rep.fill_before, 256);
        assert_eq!(r.stats().overrun_frames, 936 - 256);
        // The newest 256 frames are kept: 745..=1000.
        assert_eq!(out[0], 745.0);
        assert_eq!(w.stats().dropped_frames, 0);
    }

    #[test]
    fn full_ring_drops_newest_at_writer_and_reader_discards_the_stale_queue() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        let mut out = vec![0.0; 64];
        r.read(&mut out); // attach + resync
        assert_eq!(w.write(&counting(0, 1000)), 1000);
        assert_eq!(w.write(&counting(1000, 100)), 24); // full at 1024
        assert_eq!(w.stats().dropped_frames, 76);
        // The queue ends in a gap, so all of it is stale: discard and prefill with fresh audio.
        let rep = r.read(&mut out);
        assert_eq!(rep.state, ReaderState::Prefilling);
        assert_eq!(r.stats().resyncs, 2);
        w.write(&counting(5000, 256));
        r.read(&mut out);
        assert_eq!(out[0], 5001.0);
    }

    #[test]
    fn stale_heartbeat_means_silence_and_a_returning_writer_is_resynced() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        r.set_stale_after_frames(1000);
        let mut out = vec![0.0; 100];
        r.read(&mut out);
        w.write(&counting(0, 600));
        for _ in 0..6 {
            assert_eq!(r.read(&mut out).state, ReaderState::Playing);
        }
        // Writer stops beating: 1000 frames later it is gone, even though frames remain... none here.
        let mut states = vec![];
        for _ in 0..12 {
            states.push(r.read(&mut out).state);
        }
        assert_eq!(states.last(), Some(&ReaderState::WriterGone));
        assert_eq!(r.stats().writer_gone_events, 1);
        w.write(&counting(10_000, 300));
        assert_eq!(r.read(&mut out).state, ReaderState::Prefilling); // resynced: R := W
        w.write(&counting(20_000, 300));
        r.read(&mut out);
        assert_eq!(out[0], 20_001.0, "no audio from before the gap is replayed");
    }

    #[test]
    fn republished_header_is_picked_up_with_a_resync() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        let mut out = vec![0.0; 64];
        w.write(&counting(0, 300));
        r.read(&mut out);
        let g1 = r.header().generation;
        let region = Arc::clone(&w.region);
        let mut w2 = RingWriter::attach(region, cfg().to_header().unwrap());
        assert!(w2.header().generation > g1);
        w2.write(&counting(100_000, 300));
        assert_eq!(r.read(&mut out).state, ReaderState::Prefilling);
        assert_eq!(r.header().generation, w2.header().generation);
        w2.write(&counting(200_000, 300));
        r.read(&mut out);
        assert_eq!(out[0], 200_001.0);
    }

    #[test]
    fn torn_garbage_and_foreign_headers_are_refused() {
        let (w, _r) = heap_pair(&cfg()).unwrap();
        let region = Arc::clone(&w.region);
        let h = region.header();
        let len = region.len();
        // Writer mid-initialisation: odd generation.
        let g = h.generation.load(Ordering::Relaxed);
        h.generation.store(g + 1, Ordering::Relaxed);
        assert!(matches!(
            RingReader::attach(Arc::clone(&region)),
            Err(ShmError::NotReady)
        ));
        h.generation.store(g, Ordering::Relaxed);
        assert!(RingReader::attach(Arc::clone(&region)).is_ok());
        // A field changed without republishing: checksum catches it.
        h.capacity_frames.store(2048, Ordering::Relaxed);
        assert!(matches!(
            RingReader::attach(Arc::clone(&region)),
            Err(ShmError::ChecksumMismatch { .. })
        ));
        h.capacity_frames.store(1024, Ordering::Relaxed);
        h.version.store(VERSION + 1, Ordering::Relaxed);
        let e = RingReader::attach(Arc::clone(&region)).err().unwrap();
        assert!(matches!(e, ShmError::VersionMismatch { found, .. } if found == VERSION + 1));
        assert!(e.to_string().contains("protocol version 2"), "{e}");
        h.version.store(VERSION, Ordering::Relaxed);
        h.magic.store(0xdead_beef, Ordering::Relaxed);
        assert!(matches!(
            RingReader::attach(Arc::clone(&region)),
            Err(ShmError::BadMagic { .. })
        ));
        h.magic.store(crate::shm::MAGIC, Ordering::Relaxed);
        h.state.store(STATE_INIT, Ordering::Relaxed);
        assert!(matches!(
            RingReader::attach(Arc::clone(&region)),
            Err(ShmError::NotReady)
        ));
        h.state.store(STATE_READY, Ordering::Relaxed);
        // The header claims more memory than is mapped: refused before any sample is touched.
        assert!(matches!(
            h.validate(len - 4),
            Err(ShmError::SegmentTooSmall { .. })
        ));
        assert!(RingReader::attach(region).is_ok());
    }

    #[test]
    fn a_live_reader_goes_silent_on_a_corrupted_header_and_recovers() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        let mut out = vec![0.0; 64];
        w.write(&counting(0, 300));
        r.read(&mut out);
        let region = Arc::clone(&w.region);
        let h = region.header();
        let g = h.generation.load(Ordering::Relaxed);
        h.generation.store(g + 2, Ordering::Relaxed); // new generation, checksum now wrong
        assert_eq!(r.read(&mut out).state, ReaderState::NotReady);
        assert!(out.iter().all(|&s| s == 0.0));
        let mut w2 = RingWriter::attach(region, cfg().to_header().unwrap());
        w2.write(&counting(0, 300));
        r.read(&mut out);
        w2.write(&counting(0, 300));
        assert_eq!(r.read(&mut out).state, ReaderState::Playing);
    }

    #[test]
    fn non_finite_samples_never_reach_the_device() {
        let (mut w, mut r) = heap_pair(&cfg()).unwrap();
        let mut block = vec![0.5f32; 256];
        block[3] = f32::NAN;
        block[7] = f32::INFINITY;
        let mut out = vec![0.0; 16];
        r.read(&mut out);
        w.write(&block);
        r.read(&mut out);
        assert_eq!((out[2], out[3], out[7]), (0.5, 0.0, 0.0));
    }

    #[test]
    fn anchor_round_trips() {
        let (mut w, r) = heap_pair(&cfg()).unwrap();
        assert_eq!(r.anchor(), None);
        w.publish_anchor(4800, 123_456_789);
        assert_eq!(r.anchor(), Some((4800, 123_456_789)));
    }

    #[test]
    fn bad_configs_are_rejected() {
        for c in [
            RingConfig::new("/x").fill(1000, 256, 768),
            RingConfig::new("/x").fill(1024, 768, 768),
            RingConfig::new("/x").fill(1024, 256, 2048),
            RingConfig::new("/x").channels(0),
            RingConfig::new("/x").channels(9),
            RingConfig::new("/x").sample_rate(1000),
        ] {
            assert!(
                matches!(heap_pair(&c), Err(ShmError::InvalidConfig { .. })),
                "{c:?}"
            );
        }
    }

    /// Two threads, one heap ring, no pacing: every frame arrives once and in order, whatever
    /// the interleaving. (Cheap and catches ordering bugs on weakly ordered CPUs too.)
    #[test]
    fn two_thread_stress_preserves_the_stream() {
        let c = RingConfig::new("/stress").channels(2).fill(256, 64, 256);
        let (mut w, mut r) = heap_pair(&c).unwrap();
        r.set_stale_after_frames(u64::MAX / 2);
        let mut out = [0.0f32; 2 * 29];
        r.read(&mut out); // start IO before the writer runs, so nothing is discarded
        const FRAMES: u64 = 2_000_000;
        let writer = std::thread::spawn(move || {
            let mut k = 0u64;
            let mut block = [0.0f32; 2 * 37];
            // 64 frames past the end so the reader's final prefill (target 64) completes.
            while k < FRAMES + 64 {
                let n = 37.min((FRAMES + 64 - k) as usize);
                for i in 0..n {
                    let v = ((k + i as u64) % (1 << 23) + 1) as f32;
                    block[2 * i] = v;
                    block[2 * i + 1] = -v;
                }
                // Only write what fits, so nothing is ever dropped in this test.
                let free = 256 - w.fill() as usize;
                let n = n.min(free);
                let done = w.write(&block[..2 * n]);
                k += done as u64;
                if done == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = 0u64;
        while got < FRAMES {
            let rep = r.read(&mut out);
            for f in 0..rep.audio_frames.min((FRAMES - got) as usize) {
                let v = (got % (1 << 23) + 1) as f32;
                assert_eq!((out[2 * f], out[2 * f + 1]), (v, -v), "frame {got}");
                got += 1;
            }
            if rep.audio_frames == 0 {
                std::thread::yield_now();
            }
        }
        writer.join().unwrap();
        assert_eq!(r.stats().overrun_frames, 0);
        assert_eq!(r.stats().resyncs, 1);
    }
}

/// Model checks under loom (`RUSTFLAGS="--cfg loom" cargo test -p krisp-vdev --lib --release
/// loom`, run by `.ci/run`). Sample slots are loom cells, so an access to a slot that the index
/// orderings do not order against the other side's access is reported as a data race; the
/// asserts check what each side may observe. Each model prints how many interleavings it
/// explored (`-- --nocapture`), so a model that silently stopped exploring shows up.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};

    /// Runs `f` under loom with at most `preemptions` preemptions and reports the executions
    /// explored.
    fn check(name: &str, preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&runs);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(preemptions);
        builder.check(move || {
            counter.fetch_add(1, StdOrdering::Relaxed);
            f()
        });
        println!(
            "{name}: {} executions, preemption bound {preemptions}",
            runs.load(StdOrdering::Relaxed)
        );
    }

    /// Read-after-write: the reader sees published frames complete (writer's Release store of
    /// W, reader's Acquire load).
    #[test]
    fn loom_spsc_ring_has_no_data_race_and_keeps_order() {
        check("publish (W release/acquire)", 3, || {
            let c = RingConfig::new("/loom").fill(64, 1, 64);
            let (mut w, mut r) = heap_pair(&c).unwrap();
            r.set_stale_after_frames(u64::MAX / 2);
            // Pre-fill so the ring wraps: 63 + 2 + 2 frames through a 64-frame ring.
            let pre: Vec<f32> = (1..=63).map(|v| v as f32).collect();
            w.write(&pre);
            let mut out = vec![0.0; 64];
            let rep = r.read(&mut out[..1]);
            assert_eq!(rep.state, ReaderState::Prefilling); // attach resync: R := W
            let t = loom::thread::spawn(move || {
                w.write(&[100.0, 101.0]);
                w.write(&[102.0, 103.0]);
                w
            });
            let mut seen = vec![];
            for _ in 0..3 {
                let rep = r.read(&mut out[..2]);
                seen.extend_from_slice(&out[..rep.audio_frames]);
            }
            let _w = t.join().unwrap();
            // Whatever arrived is a prefix of the stream, in order, never torn.
            let expected = [100.0, 101.0, 102.0, 103.0];
            assert_eq!(&seen[..], &expected[..seen.len()]);
        });
    }

    /// Write-after-read: the writer reuses a slot only after the reader has finished copying
    /// it out (reader's Release store of R, writer's Acquire load). The model above never
    /// reuses a slot the reader read, so it cannot see this direction.
    #[test]
    fn loom_writer_reuses_a_slot_only_after_the_reader_copied_it() {
        check("slot reuse (R release/acquire)", 3, || {
            let c = RingConfig::new("/loom").fill(64, 1, 64);
            let (mut w, mut r) = heap_pair(&c).unwrap();
            r.set_stale_after_frames(u64::MAX / 2);
            w.write(&[0.0; 62]);
            let mut out = vec![0.0; 2];
            assert_eq!(r.read(&mut out[..1]).state, ReaderState::Prefilling); // R := W = 62
            let t = loom::thread::spawn(move || {
                // Fill the ring completely: frames 1..=64 in slots 62, 63, 0..=61.
                let full: Vec<f32> = (1..=64).map(|v| v as f32).collect();
                assert_eq!(w.write(&full), 64);
                // Two more: accepted only if the reader has freed slots 62 and 63, which it
                // may be copying out right now; otherwise dropped (and the reader resyncs).
                w.write(&[65.0, 66.0]);
            });
            let mut seen = vec![];
            for _ in 0..2 {
                let rep = r.read(&mut out);
                seen.extend_from_slice(&out[..rep.audio_frames]);
            }
            t.join().unwrap();
            let expected = [1.0, 2.0, 3.0, 4.0];
            assert_eq!(&seen[..], &expected[..seen.len()]);
        });
    }

    /// The header seqlock: a reader validating while a writer republishes another geometry
    /// gets the old header, the new one, or "not ready"; never a mix of the two.
    #[test]
    fn loom_header_seqlock_never_yields_a_mixed_header() {
        check("header seqlock", 2, || {
            let old = RingConfig::new("/loom").fill(64, 8, 32);
            let new = RingConfig::new("/loom").fill(64, 16, 48);
            let (w, r) = heap_pair(&old).unwrap();
            let region = Arc::clone(&w.region);
            let len = region.len();
            let new_header = new.to_header().unwrap();
            let t = loom::thread::spawn(move || {
                RingWriter::attach(region, new_header);
            });
            match w.region.header().validate(len) {
                Ok((h, _)) => {
                    let fills = (h.target_fill_frames, h.max_fill_frames);
                    assert!(fills == (8, 32) || fills == (16, 48), "mixed header {h:?}");
                }
                Err(ShmError::NotReady) => {}
                Err(e) => panic!("validation failed with {e}"),
            }
            t.join().unwrap();
            drop(r);
        });
    }

    /// The clock-anchor seqlock: a reader gets no anchor or a pair the writer published
    /// together.
    #[test]
    fn loom_anchor_seqlock_never_yields_a_torn_pair() {
        check("anchor seqlock", 3, || {
            let c = RingConfig::new("/loom").fill(64, 1, 64);
            let (mut w, r) = heap_pair(&c).unwrap();
            w.publish_anchor(1, 10);
            let t = loom::thread::spawn(move || w.publish_anchor(2, 20));
            if let Some((frame, ns)) = r.anchor() {
                assert_eq!(ns, frame * 10, "torn anchor ({frame}, {ns})");
            }
            t.join().unwrap();
        });
    }
}
