//! The microphone's I/O thread: blocking reads from the audio server, each block handed to
//! the realtime code in `rt.rs` exactly as a driver callback would.
//!
//! Measured here (see docs/architecture.md): cpal 0.18's PulseAudio host starved its output
//! streams and left control requests hanging in its reactor, so on Linux the engine talks to
//! the server with libpulse directly, for capture as for the virtual device.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use libpulse_binding::def::BufferAttr;
use libpulse_binding::sample::{Format, Spec};
use libpulse_binding::stream::Direction;
use libpulse_simple_binding::Simple;

use crate::rt::CaptureSide;

/// Frames per read by default: one model frame (10 ms at 48 kHz). The denoiser works on whole
/// 480-sample frames anyway, so reading 128 frames at a time only woke this thread and
/// libpulse's 3.75 times as often (375 times a second) without delivering a frame sooner:
/// a frame is complete when its last sample arrives, whatever the block size.
pub(crate) const PERIOD: usize = crate::rt::CHUNK;
/// Largest read (100 ms): `--capture-frames` is clamped to it.
pub(crate) const MAX_PERIOD: usize = 4_800;

/// Opens a 48 kHz mono float record stream on `source`; the server converts any microphone
/// format (rate, channels, sample type) to it.
pub(crate) fn open(source: &str, rate: u32, frames: usize) -> Result<Simple, String> {
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
    Simple::new(
        None,
        "Krisp",
        Direction::Record,
        Some(source),
        "Krisp microphone capture",
        &spec,
        None,
        Some(&attr),
    )
    .map_err(|e| format!("cannot open microphone '{source}': {e}"))
}

/// Reads `frames` at a time until told to stop or the stream fails; returns the realtime
/// state for reuse.
pub(crate) fn run(
    pa: Simple,
    frames: usize,
    mut side: CaptureSide,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) -> CaptureSide {
    crate::writer::promote_to_realtime();
    // Sized once, before the first read: the loop below does not allocate.
    let frames = frames.clamp(1, MAX_PERIOD);
    let mut bytes = vec![0u8; frames * 4];
    let mut buf = vec![0.0f32; frames];
    while !stop.load(Ordering::Relaxed) {
        if pa.read(&mut bytes).is_err() {
            failed.store(true, Ordering::Relaxed);
            break;
        }
        // A read that returns after the control thread gave up on this thread is dropped: a
        // replacement path may be writing the same shared ring by now, which allows one writer.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for (s, b) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
            *s = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        side.on_data(&buf);
    }
    side
}
