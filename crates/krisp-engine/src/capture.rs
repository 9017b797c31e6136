//! The microphone's I/O thread: it blocks in its own libpulse main loop's poll until the
//! server delivers audio, and hands each block to the realtime code in `rt.rs` exactly as a
//! driver callback would.
//!
//! Measured here (see docs/architecture.md): cpal 0.18's PulseAudio host starved its output
//! streams and left control requests hanging in its reactor, so on Linux the engine talks to
//! the server with libpulse directly, for capture as for the virtual device. The asynchronous
//! API on a main loop that this thread owns (not the simple API, whose threaded main loop
//! made every block cross two threads) keeps it to one wake-up per block.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libpulse_binding::def::BufferAttr;
use libpulse_binding::sample::{Format, Spec};
use libpulse_binding::stream::{FlagSet, Latency, PeekResult, SeekMode, Stream};

use crate::direct::{DirectOut, LatencyHold};
use crate::pa::{ANSWER_TIMEOUT, Conn};
use crate::rt::{CHUNK, CaptureSide};
use crate::stats::StatsInner;

/// Frames per read by default: one model frame (10 ms at 48 kHz). The denoiser works on whole
/// 480-sample frames anyway, so reading 128 frames at a time only woke this thread and
/// libpulse's 3.75 times as often (375 times a second) without delivering a frame sooner:
/// a frame is complete when its last sample arrives, whatever the block size.
pub(crate) const PERIOD: usize = crate::rt::CHUNK;
/// Largest read (100 ms): `--capture-frames` is clamped to it.
pub(crate) const MAX_PERIOD: usize = 4_800;
/// Longest wait in poll before looking at the stop flag (the server normally wakes us every
/// block).
const POLL_US: u64 = 100_000;
/// The same while bridging a starting microphone with silence (half a chunk).
const BRIDGE_POLL_US: u64 = 5_000;
/// How long after its first block a microphone is bridged.
const BRIDGE_FOR: Duration = Duration::from_secs(2);

/// An open record stream with its connection, and the virtual device's stream on the same
/// connection when this thread feeds it directly.
struct Capture {
    // Field order is drop order: the streams before their connection.
    feed: Option<Feed>,
    stream: Stream,
    conn: Conn,
}

/// The virtual device the capture thread writes directly while someone records
/// (`direct.rs`).
#[derive(Debug, Clone)]
pub(crate) struct DirectTo {
    /// The null sink behind "Krisp Microphone".
    pub sink: String,
    /// The stream's buffer attribute (as the feeder's: it sets the device's latency).
    pub buffer_frames: usize,
    /// Silence written ahead of the first chunk: the margin against late wake-ups.
    pub prime_frames: usize,
}

/// Underflows within this long of (re)starting are the server noticing a buffer we had not
/// filled yet, not a late write.
const UNDERFLOW_GRACE: Duration = Duration::from_millis(300);

/// The direct feed's playback stream and its bookkeeping (I/O side; see `direct.rs`).
struct Feed {
    stream: Stream,
    /// Server underflows, counted by libpulse's callback on this thread.
    underflows: Rc<Cell<u64>>,
    handled: u64,
    settled: Instant,
    hold: LatencyHold,
    /// The margin, frames.
    prime: usize,
    corked: bool,
    /// Bytes for the server, sized once.
    bytes: Vec<u8>,
    zeros: Vec<u8>,
    /// Smoothed latency of the device (buffer + the device's own), frames.
    latency: f64,
}

impl Feed {
    fn open(conn: &mut Conn, to: &DirectTo, rate: u32) -> Result<Feed, String> {
        let spec = Spec {
            format: Format::F32le,
            channels: 1,
            rate,
        };
        let attr = BufferAttr {
            maxlength: u32::MAX,
            tlength: (to.buffer_frames.max(2 * CHUNK) * 4) as u32,
            prebuf: 0,
            minreq: (CHUNK * 4) as u32,
            fragsize: u32::MAX,
        };
        let mut stream = Stream::new(
            &mut conn.context,
            "Krisp Microphone direct feed",
            &spec,
            None,
        )
        .ok_or("cannot create a playback stream")?;
        stream
            .connect_playback(
                Some(&to.sink),
                Some(&attr),
                FlagSet::ADJUST_LATENCY
                    | FlagSet::DONT_MOVE
                    | FlagSet::START_CORKED
                    | FlagSet::INTERPOLATE_TIMING
                    | FlagSet::AUTO_TIMING_UPDATE,
                None,
                None,
            )
            .map_err(|e| format!("cannot open the virtual device: {e}"))?;
        conn.wait_ready(&stream, "the virtual device (direct)")?;
        let underflows = Rc::new(Cell::new(0u64));
        let seen = underflows.clone();
        stream.set_underflow_callback(Some(Box::new(move || seen.set(seen.get() + 1))));
        Ok(Feed {
            stream,
            underflows,
            handled: 0,
            settled: Instant::now(),
            hold: LatencyHold::default(),
            prime: to.prime_frames,
            corked: true,
            bytes: Vec::with_capacity(crate::direct::QUEUE_FRAMES * 4),
            zeros: vec![0u8; to.prime_frames * 4],
            latency: 0.0,
        })
    }

    /// Someone started recording: write the margin of silence and take over from the feeder.
    /// (The stream requests here allocate in libpulse; they happen only at these switches.)
    fn start(&mut self, direct: &mut DirectOut, stats: &StatsInner) -> Result<(), ()> {
        direct.reset();
        let _ = self.stream.flush(None);
        if self.corked {
            let _ = self.stream.uncork(None);
            self.corked = false;
        }
        self.stream
            .write(&self.zeros, None, 0, SeekMode::Relative)
            .map_err(|_| ())?;
        self.hold.restart();
        self.latency = 0.0;
        self.settled = Instant::now();
        self.handled = self.underflows.get();
        direct.on = true;
        stats
            .device_buffer
            .store(self.prime as u64, Ordering::Relaxed);
        stats.direct.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Nobody records any more (or this thread ends): hand back to the feeder.
    fn stop(&mut self, direct: &mut DirectOut, stats: &StatsInner) {
        direct.on = false;
        direct.reset();
        stats.direct.store(false, Ordering::Relaxed);
        stats.direct_latency.store(0, Ordering::Relaxed);
        let _ = self.stream.flush(None);
        if !self.corked {
            let _ = self.stream.cork(None);
            self.corked = true;
        }
    }

    /// Counts the underflows the recorder heard. (Writing silence to widen the margin was
    /// tried and measured: PulseAudio plays it in the middle of the voice, a gap plus 10 ms
    /// of latency each time; see docs/performance.md.)
    fn check_underflow(&mut self, stats: &StatsInner) {
        let n = self.underflows.get();
        if n == self.handled {
            return;
        }
        self.handled = n;
        if !self.corked && self.settled.elapsed() >= UNDERFLOW_GRACE {
            stats.device_underflows.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes what the realtime code queued, then measures the device buffer and passes on
    /// the correction the latency hold asks for.
    fn write(&mut self, direct: &mut DirectOut, stats: &StatsInner, rate: u32) -> Result<(), ()> {
        if direct.out.is_empty() {
            return Ok(());
        }
        self.bytes.clear();
        for s in &direct.out {
            self.bytes.extend_from_slice(&s.to_le_bytes());
        }
        direct.out.clear();
        self.stream
            .write(&self.bytes, None, 0, SeekMode::Relative)
            .map_err(|_| ())?;
        // The latency libpulse interpolates from the server's timing: what we wrote minus
        // what the device read, plus the device's own latency. The hold works on the buffer
        // part (a recorder attaching with other latency wishes changes the device's part).
        let Ok(lat) = self.stream.get_latency() else {
            return Ok(()); // no timing from the server yet
        };
        let total_us = match lat {
            Latency::Positive(u) => u.0 as f64,
            _ => 0.0,
        };
        let device_us = self
            .stream
            .get_timing_info()
            .map_or(0.0, |t| t.sink_usec.0 as f64);
        let per_us = rate as f64 / 1e6;
        let total = total_us * per_us;
        self.latency = if self.latency == 0.0 {
            total
        } else {
            self.latency + (total - self.latency) * 0.02
        };
        stats
            .direct_latency
            .store(self.latency.round() as u64, Ordering::Relaxed);
        if let Some(adjust) = self.hold.observe((total_us - device_us) * per_us) {
            direct.pending = adjust;
        }
        Ok(())
    }
}

/// The fragment to ask the server for so that it delivers `frames` at a time. PulseAudio runs
/// the source at the fragment. pipewire-pulse runs the microphone's graph at half the fragment,
/// rounded down to a power-of-two quantum, and delivers every quantum (measured with 0.3.65:
/// a 10 ms fragment runs the graph at 256 frames and wakes the recorder 188 times a second, a
/// 20 ms one at 512 and 94 times; parecord's CPU halves). So when feeding our PipeWire node
/// (which exists only on PipeWire) Krisp asks for twice its block (`twice`): one wake-up per
/// model frame instead of two, for ~4 ms more (e2e: 17.8 ms instead of 13.9 on 1.4.2). Not for a pipe source on PipeWire:
/// there the same fragment measured 39–42 ms instead of 26–33, past the 40 ms bound.
pub(crate) fn fragment_frames(frames: usize, twice: bool) -> usize {
    if twice { 2 * frames } else { frames }
}

/// Opens a 48 kHz mono float record stream on `source`; the server converts any microphone
/// format (rate, channels, sample type) to it and delivers at most `frames` at a time.
fn open(
    source: &str,
    rate: u32,
    frames: usize,
    to_node: bool,
    direct: Option<&DirectTo>,
) -> Result<Capture, String> {
    let spec = Spec {
        format: Format::F32le,
        channels: 1,
        rate,
    };
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: u32::MAX,
        prebuf: u32::MAX,
        minreq: u32::MAX,
        fragsize: (fragment_frames(frames, to_node) * 4) as u32,
    };
    let mut conn = Conn::connect("Krisp")?;
    let mut stream = Stream::new(&mut conn.context, "Krisp microphone capture", &spec, None)
        .ok_or("cannot create a record stream")?;
    // DONT_MOVE: when the microphone's source goes away the server ends this stream instead
    // of moving it to the default source, which can be Krisp Microphone itself.
    stream
        .connect_record(
            Some(source),
            Some(&attr),
            FlagSet::ADJUST_LATENCY | FlagSet::DONT_MOVE,
        )
        .map_err(|e| format!("cannot open microphone '{source}': {e}"))?;
    conn.wait_ready(&stream, &format!("microphone '{source}'"))?;
    tracing::debug!(attr = ?stream.get_buffer_attr(), "capture stream open");
    // Without the direct stream the feeder thread carries the audio, as before it existed.
    let feed = direct.and_then(|to| match Feed::open(&mut conn, to, rate) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "direct feed unavailable; the feeder thread carries the audio");
            None
        }
    });
    Ok(Capture { feed, stream, conn })
}

/// Starts the capture thread on `source`, reading `frames` at a time. Returns once the stream
/// is open; on failure, the reason and (unless the thread hung) the realtime state back.
pub(crate) fn start(
    source: String,
    rate: u32,
    frames: usize,
    mut side: CaptureSide,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    direct: Option<DirectTo>,
) -> Result<JoinHandle<CaptureSide>, (String, Option<Box<CaptureSide>>)> {
    let frames = frames.clamp(1, MAX_PERIOD);
    let (tx, rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let (st, fl) = (stop.clone(), failed);
    let to_node = side.pipe().is_some_and(|p| p.is_node());
    let thread = std::thread::Builder::new()
        .name("krisp-capture".into())
        .spawn(
            move || match open(&source, rate, frames, to_node, direct.as_ref()) {
                Ok(cap) => {
                    let _ = tx.send(Ok(()));
                    run(cap, frames, rate, side, st, fl)
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    side
                }
            },
        )
        .map_err(|e| (format!("cannot start the capture thread: {e}"), None))?;
    match rx.recv_timeout(ANSWER_TIMEOUT * 2) {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err((e, thread.join().ok().map(Box::new))),
        Err(_) => {
            // Hung in the server: abandoned with its realtime state.
            stop.store(true, Ordering::Relaxed);
            Err(("the audio server did not open the microphone".into(), None))
        }
    }
}

/// Delivers blocks until told to stop or the stream fails; returns the realtime state for
/// reuse.
fn run(
    mut cap: Capture,
    frames: usize,
    rate: u32,
    mut side: CaptureSide,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) -> CaptureSide {
    crate::writer::promote_to_realtime();
    // Sized once, before the first block: the loop below does not allocate.
    let mut buf = vec![0.0f32; frames];
    let stats = side.stats.clone();
    // Until the microphone's first block (a source that was just loaded can take a second),
    // this thread keeps up the silence the control thread wrote while there was none, at the
    // device's pace, so recorders of a pipe-source or node Krisp Microphone never stall; and
    // for two seconds after it, wherever the microphone falls behind that pace (a source
    // that was just loaded delivered a block, then paused a second: `PipeOut::bridge`).
    let mut bridging = side.pipe().is_some();
    let mut bridge_until: Option<Instant> = None;
    'io: while !stop.load(Ordering::Relaxed) {
        let wait = if bridging { BRIDGE_POLL_US } else { POLL_US };
        if cap.conn.wait(wait).is_err() || !cap.conn.good() || !cap.stream.get_state().is_good() {
            failed.store(true, Ordering::Relaxed);
            break;
        }
        if bridging && bridge_until.is_some_and(|t| Instant::now() >= t) {
            bridging = false;
            if let Some(p) = side.pipe() {
                p.end_silence();
            }
        }
        if bridging
            && let Some(p) = side.pipe()
            && p.bridge(stats.listeners.load(Ordering::Relaxed), &stats)
                .is_err()
        {
            failed.store(true, Ordering::Relaxed);
            break;
        }
        if let Some(feed) = cap.feed.as_mut() {
            if !feed.stream.get_state().is_good() {
                failed.store(true, Ordering::Relaxed);
                break;
            }
            let listening = stats.listeners.load(Ordering::Relaxed);
            if listening && !side.direct.on {
                if feed.start(&mut side.direct, &stats).is_err() {
                    failed.store(true, Ordering::Relaxed);
                    break;
                }
            } else if !listening && side.direct.on {
                feed.stop(&mut side.direct, &stats);
            }
            feed.check_underflow(&stats);
        }
        loop {
            match cap.stream.peek() {
                Ok(PeekResult::Empty) => break,
                Ok(PeekResult::Hole(_)) => {}
                Ok(PeekResult::Data(bytes)) => {
                    // A block that arrives after the control thread gave up on this thread is
                    // dropped: a replacement path may be writing the same shared ring by now,
                    // which allows one writer.
                    if stop.load(Ordering::Relaxed) {
                        break 'io;
                    }
                    if bridging && bridge_until.is_none() {
                        bridge_until = Some(Instant::now() + BRIDGE_FOR);
                    }
                    // Piece by piece, the pipe source's FIFO (or the node's ring) written after
                    // each: after a stall the server hands over a long block at once, more
                    // than the queue holds. The node's cycle starts once the wake-up's audio
                    // is all in (`kick` below).
                    for piece in bytes.chunks(buf.len() * 4) {
                        deliver(piece, &mut buf, &mut side);
                        if let Some(p) = side.pipe()
                            && p.stage(stats.listeners.load(Ordering::Relaxed), &stats)
                                .is_err()
                        {
                            // The server's end of the FIFO is gone.
                            failed.store(true, Ordering::Relaxed);
                            break 'io;
                        }
                    }
                    if let Some(feed) = cap.feed.as_mut()
                        && side.direct.on
                        && feed.write(&mut side.direct, &stats, rate).is_err()
                    {
                        failed.store(true, Ordering::Relaxed);
                        break 'io;
                    }
                }
                Err(_) => {
                    failed.store(true, Ordering::Relaxed);
                    break 'io;
                }
            }
            if cap.stream.discard().is_err() {
                failed.store(true, Ordering::Relaxed);
                break 'io;
            }
        }
        if let Some(p) = side.pipe() {
            p.kick();
        }
    }
    // The feeder takes over (its stream was standing by); ours goes with the connection.
    if let Some(feed) = cap.feed.as_mut()
        && side.direct.on
    {
        feed.stop(&mut side.direct, &stats);
    }
    side
}

/// Converts a block as the server sent it (f32 little-endian) and hands it to the realtime
/// code at most `buf.len()` frames at a time. Realtime: allocation- and syscall-free.
pub(crate) fn deliver(bytes: &[u8], buf: &mut [f32], side: &mut CaptureSide) {
    for piece in bytes.chunks(buf.len() * 4) {
        let n = piece.len() / 4;
        for (s, b) in buf.iter_mut().zip(piece.chunks_exact(4)) {
            *s = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        side.on_data(&buf[..n]);
    }
}
