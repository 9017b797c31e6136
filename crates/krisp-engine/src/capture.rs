//! The microphone's I/O thread: it blocks in its own libpulse main loop's poll until the
//! server delivers audio, and hands each block to the realtime code in `rt.rs` exactly as a
//! driver callback would.
//!
//! Measured here (see docs/architecture.md): cpal 0.18's PulseAudio host starved its output
//! streams and left control requests hanging in its reactor, so on Linux the engine talks to
//! the server with libpulse directly, for capture as for the virtual device. The asynchronous
//! API on a main loop that this thread owns (not the simple API, whose threaded main loop
//! made every block cross two threads) keeps it to one wake-up per block.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use libpulse_binding::def::BufferAttr;
use libpulse_binding::sample::{Format, Spec};
use libpulse_binding::stream::{FlagSet, PeekResult, Stream};

use crate::pa::{ANSWER_TIMEOUT, Conn};
use crate::rt::CaptureSide;

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

/// An open record stream with its connection.
struct Capture {
    // Field order is drop order: the stream before its connection.
    stream: Stream,
    conn: Conn,
}

/// Opens a 48 kHz mono float record stream on `source`; the server converts any microphone
/// format (rate, channels, sample type) to it and delivers at most `frames` at a time.
fn open(source: &str, rate: u32, frames: usize) -> Result<Capture, String> {
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
        fragsize: (frames * 4) as u32,
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
    Ok(Capture { stream, conn })
}

/// Starts the capture thread on `source`, reading `frames` at a time. Returns once the stream
/// is open; on failure, the reason and (unless the thread hung) the realtime state back.
pub(crate) fn start(
    source: String,
    rate: u32,
    frames: usize,
    side: CaptureSide,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) -> Result<JoinHandle<CaptureSide>, (String, Option<Box<CaptureSide>>)> {
    let frames = frames.clamp(1, MAX_PERIOD);
    let (tx, rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let (st, fl) = (stop.clone(), failed);
    let thread = std::thread::Builder::new()
        .name("krisp-capture".into())
        .spawn(move || match open(&source, rate, frames) {
            Ok(cap) => {
                let _ = tx.send(Ok(()));
                run(cap, frames, side, st, fl)
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                side
            }
        })
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
    mut side: CaptureSide,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) -> CaptureSide {
    crate::writer::promote_to_realtime();
    // Sized once, before the first block: the loop below does not allocate.
    let mut buf = vec![0.0f32; frames];
    'io: while !stop.load(Ordering::Relaxed) {
        if cap.conn.wait(POLL_US).is_err() || !cap.conn.good() || !cap.stream.get_state().is_good()
        {
            failed.store(true, Ordering::Relaxed);
            break;
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
                    deliver(bytes, &mut buf, &mut side);
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
