//! The virtual device's feeder: an I/O thread that takes denoised audio from the ring and
//! writes it into the virtual sink whenever the server asks for more, which paces it at the
//! device clock. It blocks in its own libpulse main loop's poll (see `pa.rs`).
//!
//! It plays the part a driver plays on macOS/Windows: when the ring runs dry it writes silence
//! (the virtual mic never stalls recorders) and counts an underrun; when the ring fills past
//! its bound because the microphone's clock runs faster than the device's, it drops the excess
//! so latency cannot creep.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::mpsc;
use std::thread::JoinHandle;

use libpulse_binding::def::BufferAttr;
use libpulse_binding::sample::{Format, Spec};
use libpulse_binding::stream::{FlagSet, SeekMode, Stream};
use ringbuf::HeapCons;
use ringbuf::traits::{Consumer, Observer};

use crate::pa::{ANSWER_TIMEOUT, Conn};
use crate::stats::StatsInner;

/// Frames per write by default: one model frame (10 ms), the size the capture side produces.
/// Writes of 128 frames woke this thread and libpulse's 375 times a second.
pub(crate) const PERIOD: usize = crate::rt::CHUNK;
/// Largest write.
pub(crate) const MAX_PERIOD: usize = 4_800;
/// Frames per latency-trim window (about 0.7 s).
const TRIM_WINDOW: usize = 32_768;
/// Windows without an underrun after which the jitter buffer shrinks by one period (~20 s);
/// doubled by every underrun, up to 16 times, so that a machine that stalls regularly is not
/// probed with a dropout every 20 s.
const CALM_WINDOWS: u32 = 30;
/// Most samples dropped by one trim.
const MAX_TRIM: usize = 960;
/// Level below which samples may be dropped unheard (-46 dBFS).
const QUIET: f32 = 0.005;
/// How far past its target the ring may fill before the excess is dropped outright (100 ms):
/// late audio arriving in a burst after the machine stalled is kept and played, not cut.
const HARD_EXCESS: usize = 4_800;

/// The jitter buffer's policy, separate from the I/O so it can be tested on its own: how full
/// the ring should be before playing, when to grow (after an underrun) and when to shrink
/// (after a calm spell, by dropping quiet samples only).
#[derive(Debug, Clone)]
pub(crate) struct JitterBuffer {
    /// Fill to reach before playing; grows after underruns, shrinks back when calm.
    pub target: usize,
    /// Smallest target (the configured buffer).
    pub min_target: usize,
    /// Largest target.
    pub max_target: usize,
    /// Frames per write.
    pub period: usize,
    primed: bool,
    /// Times it primed (see `StatsInner::prime_epoch`).
    pub primes: u64,
    window_min: usize,
    window_len: usize,
    calm_windows: u32,
    calm_needed: u32,
}

/// What the writer does before one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Not primed: write silence.
    Wait,
    /// Drop this many samples from the ring (quiet excess or hard overflow), then play.
    Drop(usize),
    /// Play from the ring.
    Play,
}

impl JitterBuffer {
    pub fn new(min_target: usize, max_target: usize, period: usize) -> JitterBuffer {
        JitterBuffer {
            target: min_target,
            min_target,
            max_target: max_target.max(min_target),
            period,
            primed: false,
            primes: 0,
            window_min: usize::MAX,
            window_len: 0,
            calm_windows: 0,
            calm_needed: CALM_WINDOWS,
        }
    }

    /// Decides what to do with the ring at `fill`; `quiet(n)` says whether its first `n`
    /// samples can be dropped unheard.
    pub fn step(&mut self, fill: usize, quiet: impl FnOnce(usize) -> bool) -> Step {
        if !self.primed {
            if fill < self.target {
                return Step::Wait;
            }
            self.primed = true;
            self.primes += 1;
            self.window_min = usize::MAX;
            self.window_len = 0;
        }
        if fill > self.target + HARD_EXCESS {
            return Step::Drop(fill - self.target);
        }
        self.window_min = self.window_min.min(fill);
        self.window_len += self.period;
        if self.window_len < TRIM_WINDOW {
            return Step::Play;
        }
        // A window without an underrun: what the ring held beyond the target all along was
        // never needed; cut it where it cannot be heard, so latency cannot creep with clock
        // drift. After a calm spell, lower the target itself one period at a time.
        let min = self.window_min;
        self.window_min = usize::MAX;
        self.window_len = 0;
        self.calm_windows += 1;
        if self.calm_windows >= self.calm_needed && self.target > self.min_target {
            self.calm_windows = 0;
            self.target = (self.target - self.period).max(self.min_target);
        }
        if min > self.target + self.period {
            let excess = (min - self.target).min(MAX_TRIM);
            if quiet(excess) {
                return Step::Drop(excess);
            }
        }
        Step::Play
    }

    /// Prime again from the current target (a recorder attached after an idle spell); not an
    /// underrun.
    pub fn restart(&mut self) {
        self.primed = false;
        self.window_min = usize::MAX;
        self.window_len = 0;
    }

    /// The ring ran dry while playing: grow the target by one model frame and re-prime.
    /// Returns whether this counts as an underrun (it was playing).
    pub fn ran_dry(&mut self) -> bool {
        let was = self.primed;
        if was {
            self.primed = false;
            self.calm_windows = 0;
            self.calm_needed = (self.calm_needed * 2).min(CALM_WINDOWS * 16);
            self.target = (self.target + crate::rt::CHUNK).min(self.max_target);
        }
        was
    }
}

/// The server-side buffer of the virtual device's stream, adaptive like the jitter buffer:
/// it starts small (latency) and grows by one model frame each time the server reports that
/// it ran out of our audio (an underflow: the recorder heard a gap), up to `max`. It does not
/// shrink within a stream's life: a machine that stalled once tends to stall again, and a
/// 10 ms step back would be probed with an audible gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceBuffer {
    /// Frames asked of the server now.
    pub frames: usize,
    /// Largest it grows to.
    pub max: usize,
}

/// Growth per server underflow (one model frame, 10 ms).
const DEVICE_STEP: usize = crate::rt::CHUNK;
/// Underflows within this long of opening, flushing or re-sizing the buffer are the server
/// noticing an empty buffer we had not filled yet, not a late write.
const UNDERFLOW_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

impl DeviceBuffer {
    pub fn new(frames: usize, max: usize) -> DeviceBuffer {
        DeviceBuffer {
            frames,
            max: max.max(frames),
        }
    }

    /// The server ran dry: the new size, if it can grow.
    pub fn underflow(&mut self) -> Option<usize> {
        if self.frames >= self.max {
            return None;
        }
        self.frames = (self.frames + DEVICE_STEP).min(self.max);
        Some(self.frames)
    }
}

pub(crate) struct Writer {
    pub cons: HeapCons<f32>,
    pub stats: Arc<StatsInner>,
    pub stop: Arc<AtomicBool>,
    pub failed: Arc<AtomicBool>,
    pub jitter: JitterBuffer,
    /// Largest server-side buffer (frames) the device buffer may grow to after underflows.
    pub max_device_buffer: usize,
}

/// Longest wait in poll before looking at the stop flag (the server normally asks for more
/// every period).
const POLL_US: u64 = 100_000;

/// An open playback stream with its connection.
struct Playback {
    // Field order is drop order: the stream before its connection.
    stream: Stream,
    conn: Conn,
    /// The buffer asked for at open (restored when a recorder attaches).
    attr: BufferAttr,
}

/// While nobody records from Krisp Microphone, the server holds this much silence for it
/// (100 ms) and asks for more this much at a time (50 ms): about 20 wake-ups a second instead
/// of 100-170, and nobody hears the latency. When a recorder attaches, the queued silence is
/// flushed and the normal buffer is back within one idle poll (50 ms).
const IDLE_TLENGTH: u32 = 4_800;
const IDLE_MINREQ: u32 = 2_400;
const IDLE_POLL_US: u64 = 50_000;

/// Opens a playback stream on `sink`, 48 kHz mono float, asking the server to hold
/// `buffer_frames` (its own jitter margin: the time our refill may take without a gap) and to
/// ask for more `period` frames at a time.
fn open(sink: &str, rate: u32, buffer_frames: usize, period: usize) -> Result<Playback, String> {
    let spec = Spec {
        format: Format::F32le,
        channels: 1,
        rate,
    };
    let bytes = (period * 4) as u32;
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: (buffer_frames.max(2 * period) * 4) as u32,
        // No re-buffering after a server-side underrun: the server plays silence and drops
        // what arrives late, so a stall costs a gap but never adds to the latency.
        prebuf: 0,
        minreq: bytes,
        fragsize: u32::MAX,
    };
    let mut conn = Conn::connect("Krisp")?;
    let mut stream = Stream::new(&mut conn.context, "Krisp Microphone feed", &spec, None)
        .ok_or("cannot create a playback stream")?;
    // DONT_MOVE: if our sink goes away the stream ends (and the path is rebuilt) instead of
    // playing into some other sink.
    stream
        .connect_playback(
            Some(sink),
            Some(&attr),
            FlagSet::ADJUST_LATENCY | FlagSet::DONT_MOVE,
            None,
            None,
        )
        .map_err(|e| format!("cannot open the virtual device: {e}"))?;
    conn.wait_ready(&stream, "the virtual device")?;
    let attr = stream.get_buffer_attr().copied().unwrap_or(attr);
    tracing::debug!(attr = ?stream.get_buffer_attr(), "virtual device stream open");
    Ok(Playback { stream, conn, attr })
}

/// Opens the playback stream on `sink` and starts the feeder thread; returns once the stream
/// is open.
pub(crate) fn start(
    sink: String,
    rate: u32,
    buffer_frames: usize,
    writer: Writer,
) -> Result<JoinHandle<()>, String> {
    let (tx, rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let stop = writer.stop.clone();
    let period = writer.jitter.period;
    let thread = std::thread::Builder::new()
        .name("krisp-vdev-writer".into())
        .spawn(move || match open(&sink, rate, buffer_frames, period) {
            Ok(pb) => {
                let _ = tx.send(Ok(()));
                writer.run(pb);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| format!("cannot start the feeder thread: {e}"))?;
    match rx.recv_timeout(ANSWER_TIMEOUT * 2) {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            Err("the audio server did not open the virtual device".into())
        }
    }
}

impl Writer {
    fn run(mut self, mut pb: Playback) {
        promote_to_realtime();
        // Sized once, before the first write.
        let period = self.jitter.period;
        let mut buf = vec![0.0f32; period];
        let mut bytes = vec![0u8; period * 4];
        let silence = vec![0u8; IDLE_TLENGTH as usize * 4];
        let idle_attr = BufferAttr {
            tlength: IDLE_TLENGTH * 4,
            minreq: IDLE_MINREQ * 4,
            ..pb.attr
        };
        let mut idle = false;
        // Standing by while the capture thread writes the device directly (`direct.rs`):
        // corked, so the server neither plays nor asks us for anything.
        let mut standby = false;
        // Server underflows, counted by libpulse's callback (it runs inside `conn.wait`, on
        // this thread). The box is made here, once.
        let underflows = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let seen = underflows.clone();
        pb.stream
            .set_underflow_callback(Some(Box::new(move || seen.set(seen.get() + 1))));
        let mut handled = 0u64;
        let mut settled = std::time::Instant::now();
        let mut device = DeviceBuffer::new((pb.attr.tlength / 4) as usize, self.max_device_buffer);
        self.stats
            .device_buffer
            .store(device.frames as u64, Ordering::Relaxed);
        while !self.stop.load(Ordering::Relaxed) {
            // Nobody records: large blocks of silence. A recorder attached: the queued
            // silence is dropped and the jitter buffer primes again, as at start. (The
            // buffer-attribute requests allocate in libpulse; they happen only at these
            // switches, never per block.)
            let direct = self.stats.direct.load(Ordering::Relaxed);
            if direct != standby {
                standby = direct;
                let _ = pb.stream.flush(None);
                if standby {
                    let _ = pb.stream.cork(None);
                } else {
                    let _ = pb.stream.uncork(None);
                    self.jitter.restart();
                }
                settled = std::time::Instant::now();
            }
            if standby {
                // The queue gets nothing meanwhile; what it held before is stale.
                self.cons.skip(self.cons.occupied_len());
                handled = underflows.get();
                if pb.conn.wait(IDLE_POLL_US).is_err()
                    || !pb.conn.good()
                    || !pb.stream.get_state().is_good()
                {
                    self.failed.store(true, Ordering::Relaxed);
                    return;
                }
                continue;
            }
            let listening = self.stats.listeners.load(Ordering::Relaxed);
            if listening == idle {
                idle = !listening;
                if idle {
                    let _ = pb.stream.set_buffer_attr(&idle_attr, |_| {});
                } else {
                    let _ = pb.stream.set_buffer_attr(&pb.attr, |_| {});
                    let _ = pb.stream.flush(None);
                    self.jitter.restart();
                }
                settled = std::time::Instant::now();
            }
            if underflows.get() != handled {
                handled = underflows.get();
                if !idle && settled.elapsed() > UNDERFLOW_GRACE {
                    self.stats.device_underflows.fetch_add(1, Ordering::Relaxed);
                    let before = device.frames;
                    if let Some(frames) = device.underflow() {
                        // Rare (a stall the recorder heard); libpulse allocates for the
                        // request, as at the idle switches.
                        pb.attr.tlength = (frames * 4) as u32;
                        let _ = pb.stream.set_buffer_attr(&pb.attr, |_| {});
                        self.stats
                            .device_buffer
                            .store(frames as u64, Ordering::Relaxed);
                        self.stats
                            .latency_samples
                            .fetch_add((frames - before) as u64, Ordering::Relaxed);
                        settled = std::time::Instant::now();
                    }
                }
            }
            let timeout = if idle { IDLE_POLL_US } else { POLL_US };
            if pb.conn.wait(timeout).is_err() || !pb.conn.good() || !pb.stream.get_state().is_good()
            {
                self.failed.store(true, Ordering::Relaxed);
                return;
            }
            let mut room = pb.stream.writable_size().unwrap_or(0) / 4;
            if idle {
                // The realtime side passes silence while nobody records: drop it unplayed.
                self.cons.skip(self.cons.occupied_len());
                self.stats.ring_fill.store(0, Ordering::Relaxed);
                if room >= IDLE_MINREQ as usize {
                    let n = room.min(IDLE_TLENGTH as usize);
                    if pb
                        .stream
                        .write(&silence[..n * 4], None, 0, SeekMode::Relative)
                        .is_err()
                    {
                        self.failed.store(true, Ordering::Relaxed);
                        return;
                    }
                }
                continue;
            }
            while room >= period
                && !self.stop.load(Ordering::Relaxed)
                && !self.stats.direct.load(Ordering::Relaxed)
            {
                room -= period;
                if self
                    .write_one(&mut pb.stream, &mut buf, &mut bytes)
                    .is_err()
                {
                    self.failed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// One period from the ring (or silence) into the stream.
    fn write_one(
        &mut self,
        stream: &mut Stream,
        buf: &mut [f32],
        bytes: &mut [u8],
    ) -> Result<(), libpulse_binding::error::PAErr> {
        self.next_period(buf, bytes);
        stream.write(bytes, None, 0, SeekMode::Relative)
    }

    /// The next period to play, from the ring or silence, as the server's bytes: the jitter
    /// buffer's decision, drops, underrun counting. Allocation- and syscall-free.
    pub(crate) fn next_period(&mut self, buf: &mut [f32], bytes: &mut [u8]) {
        let period = buf.len();
        {
            let fill = self.cons.occupied_len();
            let cons = &self.cons;
            let step = self.jitter.step(fill, |n| {
                let (a, b) = cons.as_slices();
                a.iter()
                    .chain(b.iter())
                    .take(n + 16)
                    .all(|s| s.abs() < QUIET)
            });
            let got = match step {
                Step::Wait => 0,
                Step::Drop(n) => {
                    let dropped = self.cons.skip(n);
                    self.stats
                        .drift_dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    self.cons.pop_slice(buf)
                }
                Step::Play => self.cons.pop_slice(buf),
            };
            if got < period {
                buf[got..].fill(0.0);
                if step != Step::Wait
                    && self.jitter.ran_dry()
                    && self.stats.input_running.load(Ordering::Relaxed)
                    && !self.stats.direct.load(Ordering::Relaxed)
                {
                    self.stats.underruns.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.stats
                .ring_fill
                .store(self.cons.occupied_len() as u64, Ordering::Relaxed);
            self.stats
                .jitter_target
                .store(self.jitter.target as u64, Ordering::Relaxed);
            self.stats
                .prime_epoch
                .store(self.jitter.primes, Ordering::Relaxed);
            self.stats
                .last_pop_ns
                .store(krisp_vdev::shm::monotonic_ns(), Ordering::Relaxed);
            for (b, s) in bytes.chunks_exact_mut(4).zip(buf.iter()) {
                b.copy_from_slice(&s.to_le_bytes());
            }
        }
    }
}

/// Asks for SCHED_FIFO so the feeder keeps its 5 ms pace under CPU load. Best effort: without
/// the privilege (no rtkit, not root) it stays a normal thread and xruns are counted.
pub(crate) fn promote_to_realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid, initialised param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::debug!(
            "realtime scheduling not granted; this audio thread runs at normal priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::CHUNK;

    #[test]
    fn the_device_buffer_grows_one_frame_per_underflow_up_to_its_bound() {
        let mut d = DeviceBuffer::new(768, 2_304);
        let sizes: Vec<_> = std::iter::from_fn(|| d.underflow()).collect();
        assert_eq!(sizes, vec![1_248, 1_728, 2_208, 2_304]);
        assert_eq!(d.underflow(), None, "stays at its bound");
        // A starting size above the bound is kept, never shrunk.
        let mut big = DeviceBuffer::new(4_800, 2_304);
        assert_eq!((big.frames, big.underflow()), (4_800, None));
    }

    /// The writes of 128 frames the policy was first tuned with (the default is now 480).
    const W: usize = 128;

    /// Plays `cycles` writes against a producer that delivers `burst(i)` samples before write
    /// `i`, the ring holding `fill`; returns (underruns, samples dropped, final target).
    fn simulate_from(
        jb: &mut JitterBuffer,
        fill: &mut usize,
        cycles: usize,
        mut burst: impl FnMut(usize) -> usize,
    ) -> (usize, usize, usize) {
        let (mut underruns, mut dropped) = (0, 0);
        for i in 0..cycles {
            *fill += burst(i);
            let step = jb.step(*fill, |_| true);
            let mut avail = *fill;
            if let Step::Drop(n) = step {
                dropped += n.min(avail);
                avail -= n.min(avail);
            }
            let got = if step == Step::Wait {
                0
            } else {
                avail.min(jb.period)
            };
            *fill = avail - got;
            if got < jb.period && step != Step::Wait && jb.ran_dry() {
                underruns += 1;
            }
        }
        (underruns, dropped, jb.target)
    }

    fn simulate(
        jb: &mut JitterBuffer,
        cycles: usize,
        burst: impl FnMut(usize) -> usize,
    ) -> (usize, usize, usize) {
        simulate_from(jb, &mut 0, cycles, burst)
    }

    /// The capture side delivers 480-sample chunks at the rate the writer consumes them.
    fn steady(i: usize) -> usize {
        // 15 writes of 128 = 1920 = 4 chunks.
        if i % 15 < 4 { CHUNK } else { 0 }
    }

    #[test]
    fn a_steady_stream_never_underruns_and_keeps_the_configured_target() {
        let mut jb = JitterBuffer::new(600, 4_800, W);
        let (u, d, t) = simulate(&mut jb, 100_000, steady);
        assert_eq!(u, 0);
        assert_eq!(t, 600);
        assert!(d < 2_000, "dropped {d}");
    }

    #[test]
    fn model_frame_writes_keep_the_target_and_shed_a_fast_clock() {
        // One 480-frame write per 480-frame chunk, in step.
        let mut jb = JitterBuffer::new(600, 4_800, CHUNK);
        let (u, d, t) = simulate(&mut jb, 100_000, |_| CHUNK);
        assert_eq!((u, t), (0, 600));
        assert!(d < 2_000, "dropped {d}");
        // The mic's clock 1 % fast: the excess is dropped, nothing underruns.
        let mut jb = JitterBuffer::new(600, 4_800, CHUNK);
        let mut owed = 0.0f64;
        let (u, d, _) = simulate(&mut jb, 50_000, |_| {
            owed += CHUNK as f64 * 1.01;
            let n = owed as usize;
            owed -= n as f64;
            n
        });
        assert_eq!(u, 0);
        assert!(d > 50_000 * CHUNK / 200, "the excess was dropped: {d}");
    }

    #[test]
    fn stalls_grow_the_buffer_until_they_no_longer_cause_underruns_then_it_shrinks_back() {
        let mut jb = JitterBuffer::new(600, 4_800, W);
        // Every ~0.35 s the producer stalls for 20 ms (7.5 writes) and then catches up.
        let stall = |i: usize| {
            let k = i % 128;
            if (100..108).contains(&k) {
                0
            } else if k == 108 {
                // Everything owed for the stall arrives at once, with this write's share.
                9 * W
            } else {
                W
            }
        };
        let fill = &mut 0;
        let (first, _, grown) = simulate_from(&mut jb, fill, 20_000, stall);
        assert!(first > 0, "the stalls must hurt at first");
        assert!(grown > 600, "the target grew: {grown}");
        let (later, _, _) = simulate_from(&mut jb, fill, 20_000, stall);
        assert_eq!(later, 0, "after growing, the same stalls cause no underrun");
        // Calm again: the target returns to the configured one, a period per calm spell.
        let (u, _, t) = simulate_from(&mut jb, fill, 4_000_000, |_| W);
        assert_eq!(u, 0);
        assert_eq!(t, 600);
    }

    #[test]
    fn a_fast_producer_cannot_make_latency_creep() {
        let mut jb = JitterBuffer::new(600, 4_800, W);
        // The mic's clock runs 1 % fast: one extra sample every 100.
        let mut owed = 0.0f64;
        let (u, d, _) = simulate(&mut jb, 50_000, |_| {
            owed += W as f64 * 1.01;
            let n = owed as usize;
            owed -= n as f64;
            n
        });
        assert_eq!(u, 0);
        assert!(d > 50_000 * W / 200, "the excess was dropped: {d}");
    }

    #[test]
    fn loud_excess_is_kept_until_a_quiet_moment() {
        let mut jb = JitterBuffer::new(600, 4_800, W);
        let mut fill = 2_000;
        for _ in 0..TRIM_WINDOW / W * 3 {
            match jb.step(fill, |_| false) {
                Step::Drop(_) => panic!("dropped audible samples"),
                Step::Wait => unreachable!("the ring is above target"),
                Step::Play => fill = fill - W + W,
            }
        }
        // Overflow beyond the hard bound is dropped regardless.
        assert_eq!(
            jb.step(600 + HARD_EXCESS + 1, |_| false),
            Step::Drop(HARD_EXCESS + 1)
        );
    }
}
