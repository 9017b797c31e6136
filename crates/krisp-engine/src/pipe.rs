//! The pipe-source "Krisp Microphone" (krisp-vdev's `MicKind::Pipe`): the capture I/O thread
//! writes each denoised chunk into the FIFO that `module-pipe-source` reads, in the same
//! wake-up that brought the microphone's audio, and the server posts it to the recorders as it
//! arrives.
//!
//! Why: with the null sink, the denoised audio waited in two buffers between two clocks (the
//! feeder's jitter buffer and the sink's server-side buffer; about half of the 41–49 ms the
//! e2e test measured), and the fill of those buffers is what clock drift moved. A pipe source
//! has no clock of its own: what the microphone delivers is what the recorders get, one chunk
//! after the other, so nothing on the path can fill up or run dry however the clocks differ.
//!
//! Three cases the FIFO needs care for:
//! - **Nobody records.** The server reads the FIFO only while the source is RUNNING; written
//!   meanwhile, the FIFO would fill and the next recorder would start with stale audio. So the
//!   engine writes only while someone records, and empties the FIFO itself when they leave.
//! - **No microphone.** The control thread writes silence at the device's rate, so recorders
//!   never stall ([`PipeOut::silence`]).
//! - **A stalled machine.** Chunks that find the FIFO full are dropped and counted as
//!   overruns; a write never blocks.
//!
//! The realtime code (`rt.rs`) only appends to a preallocated queue ([`PipeOut::push`]); the
//! writes are the I/O thread's, like `pa_stream_write` for the null sink.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::pwnode::NodeFeed;
use crate::rt::CHUNK;
use crate::stats::StatsInner;

/// Capacity asked for the FIFO (bytes; 341 ms of 48 kHz mono float): room for what piles up
/// while the server's reading thread is starved. (16 KiB, 85 ms, was measured first: under
/// 600 s of two busy loops on both cores, 280 chunks found it full and were lost.) Stale audio
/// is not a risk of the size: nothing is written while nobody records, and what is left when
/// the last recorder goes is emptied.
pub(crate) const PIPE_BYTES: i32 = 65_536;
/// Chunks the queue between the realtime code and the write holds: the capture thread
/// flushes after every piece of at most `capture::MAX_PERIOD` frames (up to 10 chunks).
const QUEUE_CHUNKS: usize = 12;
/// Silence the control thread catches up with at most after it was late (100 ms); beyond
/// that, the time is skipped rather than written in one burst.
const MAX_SILENCE_BURST: u64 = 4_800;
/// How far a starting microphone may fall behind the device's pace before silence fills in
/// (frames; 30 ms: three blocks, beyond a block's normal jitter).
const BRIDGE_SLACK: u64 = 1_440;

/// Where the chunks go.
enum Target {
    /// The FIFO `module-pipe-source` reads.
    Fifo(File),
    /// The ring of our own PipeWire node (`pwnode.rs`), and its trigger.
    Node(Box<NodeFeed>),
}

/// The writer's end of the pipe-source FIFO (or of the PipeWire node's ring), with the queue
/// the realtime code fills.
pub(crate) struct PipeOut {
    target: Target,
    /// Processed frames not yet written (appended by the realtime code, written by the I/O
    /// thread after each block). Allocated once.
    queue: Vec<f32>,
    /// One chunk as bytes for the FIFO. Allocated once.
    bytes: Vec<u8>,
    /// Whether the last flush wrote for a recorder (the FIFO is emptied when they leave).
    live: bool,
    /// While no microphone is open: when the silence started and how much was written.
    silence: Option<(Instant, u64)>,
    /// Audio went into the node's ring since its last graph cycle was asked for.
    staged: bool,
    rate: u32,
}

impl PipeOut {
    /// Opens the FIFO the audio server reads (created by `module-pipe-source`). Read-write, so
    /// the engine can empty it, and non-blocking, so no write ever waits.
    pub fn open(path: &Path, rate: u32) -> Result<PipeOut, String> {
        let what = |e: std::io::Error| format!("cannot open {}: {e}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(what)?;
        if !file.metadata().map_err(what)?.file_type().is_fifo() {
            return Err(format!("{} is not a FIFO", path.display()));
        }
        // SAFETY: fcntl on an fd this function owns; F_SETPIPE_SZ takes an int. A refusal
        // (an old kernel, a lower pipe-max-size) leaves the default size, which still works.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        if rc < 0 {
            tracing::debug!("FIFO size not set; the kernel's default is used");
        }
        Ok(PipeOut::with(Target::Fifo(file), rate))
    }

    /// Writes into "Krisp Microphone" as our own PipeWire node: each flush puts the queued
    /// chunks into the node's ring and starts the graph cycle that delivers them.
    pub fn node(feed: NodeFeed, rate: u32) -> PipeOut {
        PipeOut::with(Target::Node(Box::new(feed)), rate)
    }

    /// Whether this writes into our PipeWire node (not a FIFO).
    pub fn is_node(&self) -> bool {
        matches!(self.target, Target::Node(_))
    }

    fn with(target: Target, rate: u32) -> PipeOut {
        PipeOut {
            target,
            queue: Vec::with_capacity(QUEUE_CHUNKS * CHUNK),
            bytes: Vec::with_capacity(CHUNK * 4),
            live: false,
            silence: None,
            staged: false,
            rate,
        }
    }

    /// Realtime: queues a processed chunk for the I/O thread. False when the queue is full
    /// (the I/O thread has not written for a dozen chunks); the chunk is then dropped.
    pub fn push(&mut self, chunk: &[f32]) -> bool {
        if self.queue.len() + chunk.len() > self.queue.capacity() {
            return false;
        }
        self.queue.extend_from_slice(chunk);
        // While bridging a microphone's start with silence, its audio counts toward the pace.
        if let Some((_, written)) = self.silence.as_mut() {
            *written += chunk.len() as u64;
        }
        true
    }

    /// I/O: writes what is queued, one chunk per write (a write of at most PIPE_BUF bytes to a
    /// FIFO is all or nothing). A chunk that finds the FIFO full is dropped and counted as an
    /// overrun. With nobody recording, nothing is written and the FIFO is emptied once.
    /// Allocation-free. An error other than a full FIFO means the server's end is gone.
    pub fn flush(&mut self, listening: bool, stats: &StatsInner) -> std::io::Result<()> {
        self.stage(listening, stats)?;
        self.kick();
        Ok(())
    }

    /// As `flush`, except that a node's graph cycle is not started yet: the capture thread
    /// stages each piece of a wake-up's audio and starts one cycle for all of it with `kick`
    /// (a driving cycle delivers what was written since the last one; two cycles asked for in
    /// one wake-up would run as one and drop the first piece as late). The FIFO is written at
    /// once either way.
    pub fn stage(&mut self, listening: bool, stats: &StatsInner) -> std::io::Result<()> {
        if !listening {
            self.queue.clear();
            if self.live {
                self.live = false;
                self.drain();
            }
            return Ok(());
        }
        self.live = true;
        let file = match &mut self.target {
            Target::Fifo(f) => f,
            Target::Node(feed) => {
                if feed.failed() {
                    return Err(std::io::Error::new(
                        ErrorKind::BrokenPipe,
                        "PipeWire closed the node",
                    ));
                }
                if !self.queue.is_empty() {
                    let n = feed.write(&self.queue);
                    if n < self.queue.len() {
                        let lost = (self.queue.len() - n).div_ceil(CHUNK);
                        stats.overruns.fetch_add(lost as u64, Ordering::Relaxed);
                    }
                    self.queue.clear();
                    self.staged = true;
                }
                return Ok(());
            }
        };
        let mut result = Ok(());
        for chunk in self.queue.chunks(CHUNK) {
            self.bytes.clear();
            for s in chunk {
                self.bytes.extend_from_slice(&s.to_le_bytes());
            }
            loop {
                match (&*file).write(&self.bytes) {
                    Ok(_) => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        stats.overruns.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        self.queue.clear();
        result
    }

    /// Starts the node's graph cycle for what was staged since the last one (nothing for a
    /// FIFO, or when nothing was staged).
    pub fn kick(&mut self) {
        if std::mem::take(&mut self.staged)
            && let Target::Node(feed) = &mut self.target
        {
            feed.trigger();
        }
    }

    /// Empties the FIFO (what was written after the last recorder left).
    fn drain(&mut self) {
        let file = match &self.target {
            Target::Fifo(f) => f,
            Target::Node(feed) => return feed.clear(),
        };
        let mut buf = [0u8; 4096];
        while let Ok(n) = (&*file).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// Control thread, while no microphone is open: writes the silence due since the last
    /// call at the device's rate (so recorders keep receiving), nothing while nobody records.
    pub fn silence(&mut self, listening: bool, stats: &StatsInner) -> std::io::Result<()> {
        // Half a chunk ahead of the clock, so recorders never wait for the next round.
        self.pace(listening, stats, 0, CHUNK as u64 / 2)
    }

    /// Capture I/O thread, while a microphone starts: fills with silence only where it falls
    /// more than [`BRIDGE_SLACK`] behind the device's pace (its audio counts, see `push`), so
    /// recorders do not stall when a microphone delivers a first block and then pauses (seen:
    /// a second after a source was loaded again), and a microphone that keeps pace gets
    /// nothing added.
    pub fn bridge(&mut self, listening: bool, stats: &StatsInner) -> std::io::Result<()> {
        self.pace(listening, stats, BRIDGE_SLACK, 0)
    }

    /// Writes the silence due at the device's rate since the silence started, counting what
    /// was written (and, while bridging, the microphone's audio): only once `slack` frames are
    /// due, then up to `lead` frames ahead of the clock. Nothing while nobody records.
    fn pace(
        &mut self,
        listening: bool,
        stats: &StatsInner,
        slack: u64,
        lead: u64,
    ) -> std::io::Result<()> {
        if !listening {
            self.silence = None;
            return self.flush(false, stats);
        }
        let now = Instant::now();
        let (start, written) = self.silence.get_or_insert((now, 0));
        let due = (now.duration_since(*start).as_secs_f64() * self.rate as f64) as u64;
        if due > *written + MAX_SILENCE_BURST {
            *written = due - CHUNK as u64; // late by more than a burst: skip, do not flood
        }
        if due >= *written + slack {
            while *written + CHUNK as u64 <= due + lead
                && self.queue.len() + CHUNK <= self.queue.capacity()
            {
                self.queue.resize(self.queue.len() + CHUNK, 0.0);
                *written += CHUNK as u64;
            }
        }
        self.flush(true, stats)
    }

    /// A microphone takes over from the control thread's silence.
    pub fn end_silence(&mut self) {
        self.silence = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("krisp-pipe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    /// The server's end of the FIFO, as module-pipe-source opens it.
    fn reader(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap()
    }

    /// A FIFO named `name`, the server's end of it, our writer and its counters.
    fn setup(name: &str) -> (std::path::PathBuf, File, PipeOut, StatsInner) {
        let path = fifo(name);
        let server = reader(&path);
        let p = PipeOut::open(&path, 48_000).unwrap();
        (path, server, p, StatsInner::default())
    }

    fn read_all(f: &File) -> Vec<f32> {
        let mut out = vec![];
        let mut buf = [0u8; 4096];
        while let Ok(n) = (&*f).read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend(
                buf[..n]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        out
    }

    #[test]
    fn chunks_reach_the_reader_in_order_and_a_full_fifo_drops_instead_of_blocking() {
        let (path, server, mut p, stats) = setup("order");
        let chunk = |k: usize| -> Vec<f32> { (0..CHUNK).map(|i| (k * CHUNK + i) as f32).collect() };
        for k in 0..3 {
            assert!(p.push(&chunk(k)));
        }
        p.flush(true, &stats).unwrap();
        let got = read_all(&server);
        assert_eq!(got.len(), 3 * CHUNK);
        assert!(
            got.iter().enumerate().all(|(i, &x)| x == i as f32),
            "order kept"
        );
        // Nobody reads: the FIFO fills, and further chunks are dropped and counted.
        for k in 0..40 {
            assert!(p.push(&chunk(k)), "the queue is emptied by every flush");
            p.flush(true, &stats).unwrap();
        }
        let overruns = stats.overruns.load(Ordering::Relaxed);
        assert!(overruns > 0, "a full FIFO counts overruns");
        let kept = read_all(&server).len();
        assert_eq!(
            kept + overruns as usize * CHUNK,
            40 * CHUNK,
            "each chunk whole or not at all"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn nothing_is_written_while_nobody_records_and_leftovers_are_emptied_when_they_leave() {
        let (path, server, mut p, stats) = setup("idle");
        let ones = [1.0f32; CHUNK];
        assert!(p.push(&ones));
        p.flush(true, &stats).unwrap(); // written while someone recorded, not yet read
        assert!(p.push(&ones));
        p.flush(false, &stats).unwrap(); // they left: queued and unread audio is dropped
        assert!(
            read_all(&server).is_empty(),
            "no stale audio for the next recorder"
        );
        assert!(p.push(&ones));
        p.flush(true, &stats).unwrap();
        assert_eq!(read_all(&server).len(), CHUNK);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_pipe_path_never_allocates_from_capture_block_to_fifo_write() {
        use crate::rt::{CaptureSide, Sink};
        use krisp_dsp::{Config, Denoiser, Framing, Model, swap_channel};
        use std::sync::Arc;
        let path = fifo("noalloc");
        let server = reader(&path);
        let stats = Arc::new(StatsInner::default());
        let mut cfg = Config::new(48_000, 1);
        cfg.framing = Framing::Chunked;
        let (_swap, rt) = swap_channel(Denoiser::new(&cfg, &Model::builtin()).unwrap());
        let pipe = PipeOut::open(&path, 48_000).unwrap();
        let mut side = CaptureSide::new(Sink::Pipe(Box::new(pipe)), rt, stats.clone());
        let block: Vec<u8> = (0..2_000)
            .flat_map(|i| ((i as f32 * 0.05).sin() * 0.2).to_le_bytes())
            .collect();
        let mut cbuf = vec![0.0f32; CHUNK];
        let mut sink = [0u8; 4096];
        let mut read = 0usize;
        assert_no_alloc::assert_no_alloc(|| {
            for i in 0..600 {
                // Recorders come and go; the server stops reading for a while (full FIFO).
                let listening = i % 200 < 150;
                stats.listeners.store(listening, Ordering::Relaxed);
                let frames = [480, 128, 1_000, 7, 2_000][i % 5];
                crate::capture::deliver(&block[..frames * 4], &mut cbuf, &mut side);
                let Sink::Pipe(p) = &mut side.sink else {
                    unreachable!()
                };
                p.flush(listening, &stats).unwrap();
                if !(60..90).contains(&i) {
                    while let Ok(n @ 1..) = (&server).read(&mut sink) {
                        read += n;
                    }
                }
            }
        });
        assert!(read > 48_000 * 4, "audio reached the reader: {read} bytes");
        assert!(
            stats.overruns.load(Ordering::Relaxed) > 0,
            "the stall dropped chunks"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn silence_keeps_pace_with_the_clock_without_flooding_after_a_stall() {
        let (path, server, mut p, stats) = setup("silence");
        p.silence(true, &stats).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(60));
        p.silence(true, &stats).unwrap();
        let n = read_all(&server);
        assert!(n.iter().all(|&x| x == 0.0));
        // 60 ms elapsed (scheduling may add some): between 50 and 110 ms of silence written.
        assert!((2_400..=5_280).contains(&n.len()), "{} frames", n.len());
        // A stall of 300 ms is not written in one burst.
        std::thread::sleep(std::time::Duration::from_millis(300));
        p.silence(true, &stats).unwrap();
        let burst = read_all(&server).len();
        assert!(
            burst <= MAX_SILENCE_BURST as usize + CHUNK,
            "{burst} frames"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_starting_microphone_is_bridged_only_where_it_falls_behind() {
        let (path, server, mut p, stats) = setup("bridge");
        p.bridge(true, &stats).unwrap();
        // The microphone keeps pace (a chunk every 10 ms): nothing is added.
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            assert!(p.push(&[0.5; CHUNK]));
            p.flush(true, &stats).unwrap();
            p.bridge(true, &stats).unwrap();
        }
        let got = read_all(&server);
        assert_eq!(
            got.len(),
            5 * CHUNK,
            "silence added to a microphone that kept pace"
        );
        assert!(got.iter().all(|&x| x == 0.5));
        // Then it pauses for 60 ms (bridge runs every 5 ms live; here once): silence fills in
        // up to the pace.
        std::thread::sleep(std::time::Duration::from_millis(60));
        p.bridge(true, &stats).unwrap();
        let filled = read_all(&server);
        assert!(filled.iter().all(|&x| x == 0.0));
        assert!(
            (3 * CHUNK..=10 * CHUNK).contains(&filled.len()),
            "{} frames of silence for a 60 ms pause",
            filled.len()
        );
        let _ = std::fs::remove_file(&path);
    }
}
