//! "Krisp Microphone" as a PipeWire node of our own (krisp-vdev's `MicKind::Node`), on
//! PipeWire servers.
//!
//! Why: since PipeWire 0.3.80 the pipe source behind pipewire-pulse's `module-pipe-source`
//! keeps 8192 frames (170 ms) in its ring (measured with 1.4.2: 118–157 ms added). A node of
//! our own has no buffer we did not choose.
//!
//! Shape: a `pw_stream` with `media.class = Audio/Source`, 48 kHz mono float, that **drives**
//! its graph (`PW_STREAM_FLAG_DRIVER`). The capture I/O thread puts each denoised block into
//! an SPSC ring (ringbuf, sized at start) and triggers one graph cycle
//! (`pw_stream_trigger_process`); PipeWire's data thread then runs our process callback, which
//! takes everything the ring holds into the buffer and sets the cycle's duration to it, and the
//! recorders get the block in the same cycle. So, as with the pipe source, the microphone's
//! clock is the only one on the path: the ring cannot fill up or run dry however the clocks
//! differ. Should the graph put another driver in charge (a program recording from Krisp
//! Microphone and a real device in one stream group), the node follows that driver's cycles,
//! taking a quantum at a time, and a bound on the ring's fill drops what would make latency
//! grow.
//!
//! The node lives as long as our connection: a killed app leaves nothing behind, so there is
//! no stale device to reclaim.
//!
//! Realtime: the process callback (PipeWire's data thread) only moves samples and writes the
//! clock; no allocation, lock, log or system call (`monotonic_ns` reads the vDSO). Tests run
//! it under assert_no_alloc, in a unit test and live against a real PipeWire.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pipewire as pw;
use pw::spa;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::rt::CHUNK;
use crate::stats::StatsInner;
use krisp_vdev::shm::monotonic_ns;

/// Ring capacity (frames; 341 ms at 48 kHz, as the pipe source's FIFO): room for what piles
/// up while PipeWire's data thread is starved. Nothing stale is left in it: the engine writes
/// only while someone records and has it emptied when the last recorder leaves.
const RING_FRAMES: usize = 16_384;
/// Largest cycle the node delivers (frames): PipeWire's buffers hold its quantum limit, 8192.
const MAX_CYCLE: usize = 8_192;
/// Following another driver: beyond this much in the ring (frames; the driver's quantum is
/// added), the excess is dropped, so latency cannot creep up.
const FOLLOW_SLACK: usize = 3 * CHUNK;
/// How long the node may take to appear.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// What the capture side and the node's thread share.
struct Shared {
    /// The stream, while it may be triggered (null before it is connected and once it closes).
    /// Read on PipeWire's data thread only.
    stream: AtomicPtr<pw::sys::pw_stream>,
    /// The eventfd on PipeWire's data loop that asks for a cycle, or -1 once it closes.
    wake: AtomicI32,
    /// Wake-ups in progress (the eventfd is not closed under one).
    in_use: AtomicU32,
    /// Frames ever written into the ring (by the producer).
    written: AtomicU64,
    /// `written` before the newest block: a driving cycle delivers only that block, so audio
    /// of blocks whose cycle never ran (before the graph started, or while PipeWire's data
    /// thread was starved) is dropped instead of reaching the recorders late — a pulse client
    /// would keep such a backlog as latency for the rest of the call.
    block_start: AtomicU64,
    /// Drop what the ring held up to this many frames written (the last recorder left; that
    /// audio is stale for the next), or `u64::MAX`.
    reset_to: AtomicU64,
    /// The server closed the node, or the connection broke.
    failed: AtomicBool,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stream: AtomicPtr::new(std::ptr::null_mut()),
            wake: AtomicI32::new(-1),
            in_use: AtomicU32::new(0),
            written: AtomicU64::new(0),
            block_start: AtomicU64::new(0),
            reset_to: AtomicU64::new(u64::MAX),
            failed: AtomicBool::new(false),
        }
    }
}

/// The capture I/O thread's end: the ring's producer and the trigger.
pub(crate) struct NodeFeed {
    prod: HeapProd<f32>,
    shared: Arc<Shared>,
    /// `written` when the first write since the last trigger began: where the block that the
    /// next cycle delivers starts.
    pending: Option<u64>,
}

impl NodeFeed {
    /// Puts processed frames into the ring; returns how many fit (the rest is lost: the data
    /// thread has not run for a third of a second). Everything written until the next
    /// `trigger` is one block.
    pub fn write(&mut self, frames: &[f32]) -> usize {
        let start = self.shared.written.load(Ordering::Relaxed);
        self.pending.get_or_insert(start);
        let n = self.prod.push_slice(frames);
        self.shared.written.fetch_add(n as u64, Ordering::Release);
        n
    }

    /// Asks PipeWire's data thread for a graph cycle that delivers what the ring holds (when
    /// the node drives its graph; following another driver, that driver's cycles take it).
    /// One eventfd write: I/O-thread work, like the pipe source's FIFO write.
    ///
    /// Why not `pw_stream_trigger_process` here: from a thread that is not PipeWire's, it
    /// queues the cycle with `pw_loop_invoke`, whose queue takes one foreign thread at a time
    /// before PipeWire 1.1 (per-thread queues came in 2024), and the node's main loop invokes
    /// into the same loop. So the data thread triggers itself, woken by this eventfd.
    pub fn trigger(&mut self) {
        let s = &self.shared;
        if let Some(start) = self.pending.take() {
            s.block_start.store(start, Ordering::Release);
        }
        s.in_use.fetch_add(1, Ordering::SeqCst);
        let fd = s.wake.load(Ordering::SeqCst);
        if fd >= 0 {
            let one = 1u64;
            // SAFETY: `fd` is the node thread's open eventfd: it stores -1 and waits for
            // `in_use` to drop to zero before closing it. An 8-byte write of a valid u64.
            let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        }
        s.in_use.fetch_sub(1, Ordering::SeqCst);
    }

    /// The last recorder left: what the ring holds is dropped before the next one hears it.
    pub fn clear(&self) {
        let w = self.shared.written.load(Ordering::Acquire);
        self.shared.reset_to.store(w, Ordering::Release);
    }

    /// The node is gone (server restart, connection lost).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }
}

/// The ring's consumer and its bookkeeping (PipeWire's data thread).
pub(crate) struct RingSide {
    cons: HeapCons<f32>,
    shared: Arc<Shared>,
    stats: Arc<StatsInner>,
    /// Audio has arrived since the node started following (underruns count only then).
    primed: bool,
    /// Frames taken out of the ring (delivered or dropped).
    read: u64,
}

impl RingSide {
    fn take(&mut self, out: &mut [f32]) -> usize {
        let n = self.cons.pop_slice(out);
        self.read += n as u64;
        n
    }

    fn skip(&mut self, n: usize) {
        let n = self.cons.skip(n);
        self.read += n as u64;
    }

    /// One cycle's samples into `out`, returning how many. Driving: everything the ring
    /// holds (the capture thread triggered the cycle for it). Following: `quantum` samples,
    /// silence where the ring has too few, and the ring trimmed to its bound.
    /// Realtime: allocation-free.
    pub fn fill(&mut self, out: &mut [f32], driving: bool, quantum: usize) -> usize {
        let to = self.shared.reset_to.swap(u64::MAX, Ordering::Acquire);
        if to != u64::MAX {
            let stale = to.saturating_sub(self.read) as usize;
            self.skip(stale.min(self.cons.occupied_len()));
            self.primed = false;
        }
        if driving {
            let start = self.shared.block_start.load(Ordering::Acquire);
            if self.read < start {
                let late = ((start - self.read) as usize).min(self.cons.occupied_len());
                self.skip(late);
                self.stats
                    .drift_dropped
                    .fetch_add(late as u64, Ordering::Relaxed);
            }
            let n = self.cons.occupied_len().min(out.len());
            return self.take(&mut out[..n]);
        }
        let n = quantum.max(1).min(out.len());
        let got = self.take(&mut out[..n]);
        if got > 0 {
            self.primed = true;
        }
        if got < n {
            out[got..n].fill(0.0);
            if self.primed {
                self.stats.underruns.fetch_add(1, Ordering::Relaxed);
            }
        }
        let left = self.cons.occupied_len();
        if left > FOLLOW_SLACK + n {
            let drop = left - n;
            self.skip(drop);
            self.stats
                .drift_dropped
                .fetch_add(drop as u64, Ordering::Relaxed);
        }
        n
    }
}

/// The process callback's state.
pub(crate) struct NodeRt {
    ring: RingSide,
    /// The graph position PipeWire gave the node (`SPA_IO_Position`), or null. Set from the
    /// main loop's `io_changed`, read by the data thread.
    position: Arc<AtomicPtr<spa::sys::spa_io_position>>,
    /// Samples of one cycle before they are bytes in the buffer. Allocated once.
    scratch: Box<[f32]>,
    rate: u32,
}

impl NodeRt {
    /// The graph's quantum for a following cycle (the position's duration).
    fn quantum(&self) -> usize {
        let p = self.position.load(Ordering::Acquire);
        if p.is_null() {
            return CHUNK;
        }
        // SAFETY: PipeWire keeps the position area mapped while it is set on the node
        // (io_changed tells us first when it goes).
        let d = unsafe { (*p).clock.duration };
        if d == 0 { CHUNK } else { d as usize }
    }

    /// Driving: this cycle is `n` frames long, starting now. Followers read the clock after
    /// the process callback returns.
    fn clock(&mut self, n: usize) {
        let p = self.position.load(Ordering::Acquire);
        if p.is_null() {
            return;
        }
        let now = monotonic_ns();
        // SAFETY: as in `quantum`; the driver owns the clock while it runs a cycle.
        unsafe {
            let c = &mut (*p).clock;
            c.nsec = now;
            c.rate = spa::sys::spa_fraction {
                num: 1,
                denom: self.rate,
            };
            c.position += c.duration;
            c.duration = n as u64;
            c.delay = 0;
            c.rate_diff = 1.0;
            c.next_nsec = now + n as u64 * 1_000_000_000 / self.rate as u64;
        }
    }

    /// The process callback's body: one buffer filled and queued.
    fn process(&mut self, stream: &pw::stream::Stream) {
        let driving = stream.is_driving();
        let quantum = self.quantum();
        let Some(mut buffer) = stream.dequeue_buffer() else {
            return;
        };
        let Some(d) = buffer.datas_mut().first_mut() else {
            return;
        };
        let mut n = 0;
        if let Some(bytes) = d.data() {
            let cap = (bytes.len() / 4).min(self.scratch.len());
            n = self.ring.fill(&mut self.scratch[..cap], driving, quantum);
            for (b, s) in bytes.chunks_exact_mut(4).zip(&self.scratch[..n]) {
                b.copy_from_slice(&s.to_le_bytes());
            }
        }
        let chunk = d.chunk_mut();
        *chunk.offset_mut() = 0;
        *chunk.stride_mut() = 4;
        *chunk.size_mut() = (n * 4) as u32;
        // An empty cycle (its audio was dropped as stale) keeps the last duration.
        if driving && n > 0 {
            self.clock(n);
        }
        // Dropping the buffer queues it.
    }
}

/// What the node is called on the server.
#[derive(Debug, Clone)]
pub(crate) struct NodeDesc {
    /// `node.name` (the source name recorders and `pactl` see).
    pub name: String,
    /// `node.description` ("Krisp Microphone").
    pub description: String,
    pub rate: u32,
}

/// "Krisp Microphone" as a node: its thread (PipeWire's main loop for it) and the feed the
/// capture side takes. Dropping it removes the node.
pub(crate) struct Node {
    shared: Arc<Shared>,
    feed: Option<NodeFeed>,
    quit: Option<pw::channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// Connects to the PipeWire server of this session and creates the node; returns once the
    /// server has it (or says why not).
    pub fn start(desc: &NodeDesc, stats: Arc<StatsInner>) -> Result<Node, String> {
        let shared = Arc::new(Shared::new());
        let (prod, cons) = HeapRb::<f32>::new(RING_FRAMES).split();
        let ring = RingSide {
            cons,
            shared: shared.clone(),
            stats,
            primed: false,
            read: 0,
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let (quit_tx, quit_rx) = pw::channel::channel::<()>();
        let (d, sh) = (desc.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("krisp-pwnode".into())
            .spawn(move || {
                if let Err(e) = run(&d, &sh, ring, &ready_tx, quit_rx) {
                    let _ = ready_tx.send(Err(e));
                }
                sh.failed.store(true, Ordering::Relaxed);
            })
            .map_err(|e| format!("cannot start the PipeWire node's thread: {e}"))?;
        let mut node = Node {
            shared: shared.clone(),
            feed: Some(NodeFeed {
                prod,
                shared,
                pending: None,
            }),
            quit: Some(quit_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(node),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                node.shutdown();
                Err("PipeWire did not create Krisp Microphone's node in time".into())
            }
        }
    }

    /// The capture side's end (once per node).
    pub fn take_feed(&mut self) -> Option<NodeFeed> {
        self.feed.take()
    }

    /// The server closed the node or the connection broke.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    fn shutdown(&mut self) {
        if let Some(q) = self.quit.take() {
            let _ = q.send(());
        }
        if let Some(t) = self.thread.take() {
            // The loop quits at once; a server that does not answer is not waited for.
            let t0 = Instant::now();
            while !t.is_finished() && t0.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The node's thread: connects, creates and runs the stream until told to quit or the server
/// goes away.
fn run(
    desc: &NodeDesc,
    shared: &Arc<Shared>,
    ring: RingSide,
    ready: &mpsc::Sender<Result<(), String>>,
    quit: pw::channel::Receiver<()>,
) -> Result<(), String> {
    let pwe = |what: &str| {
        let what = what.to_string();
        move |e: pw::Error| format!("{what}: {e}")
    };
    pw::init();
    let mainloop = pw::main_loop::MainLoopRc::new(None).map_err(pwe("PipeWire main loop"))?;
    let context = pw::context::ContextRc::new(&mainloop, None).map_err(pwe("PipeWire context"))?;
    let core = context
        .connect_rc(None)
        .map_err(pwe("cannot connect to the PipeWire server"))?;
    let ml = mainloop.downgrade();
    let sh = shared.clone();
    let _core_listener = core
        .add_listener_local()
        .error(move |id, _seq, res, msg| {
            // Errors on the core object itself mean the connection is unusable.
            if id == pw::core::PW_ID_CORE {
                tracing::warn!(res, msg, "PipeWire connection failed");
                sh.failed.store(true, Ordering::Relaxed);
                if let Some(ml) = ml.upgrade() {
                    ml.quit();
                }
            }
        })
        .register();
    let latency = format!("{CHUNK}/{}", desc.rate);
    let props = pw::properties::properties! {
        *pw::keys::MEDIA_TYPE => "Audio",
        *pw::keys::MEDIA_CATEGORY => "Capture",
        *pw::keys::MEDIA_CLASS => "Audio/Source",
        *pw::keys::NODE_NAME => desc.name.as_str(),
        *pw::keys::NODE_DESCRIPTION => desc.description.as_str(),
        *pw::keys::NODE_LATENCY => latency.as_str(),
        "device.icon-name" => "audio-input-microphone",
        "krisp.owner" => desc.name.as_str(),
    };
    let stream = pw::stream::StreamRc::new(core.clone(), &desc.description, props)
        .map_err(pwe("cannot create Krisp Microphone's stream"))?;
    let position = Arc::new(AtomicPtr::new(std::ptr::null_mut()));
    let rt = NodeRt {
        ring,
        position: position.clone(),
        scratch: vec![0.0; MAX_CYCLE].into_boxed_slice(),
        rate: desc.rate,
    };
    let ml = mainloop.downgrade();
    let sh = shared.clone();
    let mut ready = Some(ready.clone());
    let _listener = stream
        .add_local_listener_with_user_data(rt)
        .state_changed(move |_, _, _old, new| match new {
            pw::stream::StreamState::Error(e) => {
                tracing::warn!(error = %e, "Krisp Microphone's PipeWire node failed");
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(format!("PipeWire refused Krisp Microphone: {e}")));
                }
                sh.failed.store(true, Ordering::Relaxed);
                if let Some(ml) = ml.upgrade() {
                    ml.quit();
                }
            }
            pw::stream::StreamState::Unconnected => {
                sh.failed.store(true, Ordering::Relaxed);
                if let Some(ml) = ml.upgrade() {
                    ml.quit();
                }
            }
            pw::stream::StreamState::Paused | pw::stream::StreamState::Streaming => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            pw::stream::StreamState::Connecting => {}
        })
        .io_changed(move |_, _, id, area, size| {
            if id == spa::sys::SPA_IO_Position {
                let ok = !area.is_null()
                    && size as usize >= std::mem::size_of::<spa::sys::spa_io_position>();
                let p = if ok {
                    area.cast()
                } else {
                    std::ptr::null_mut()
                };
                position.store(p, Ordering::Release);
            }
        })
        .process(|stream, rt| rt.process(stream))
        .register()
        .map_err(pwe("cannot listen to Krisp Microphone's stream"))?;
    let format = audio_format(desc.rate)?;
    let mut params = [spa::pod::Pod::from_bytes(&format).ok_or("bad audio format pod")?];
    stream
        .connect(
            spa::utils::Direction::Output,
            None,
            pw::stream::StreamFlags::MAP_BUFFERS
                | pw::stream::StreamFlags::RT_PROCESS
                | pw::stream::StreamFlags::DRIVER,
            &mut params,
        )
        .map_err(pwe("cannot connect Krisp Microphone's stream"))?;
    // SAFETY: the context's own data loop, alive as long as the context (past this function's
    // sources, which go first).
    let dl = unsafe { pw::sys::pw_context_get_data_loop(context.as_raw_ptr()) };
    if dl.is_null() {
        return Err("PipeWire gave the context no data loop".into());
    }
    // SAFETY: as above; `Loop` is a transparent wrapper of `pw_loop`.
    let data_loop: &'static pw::loop_::Loop =
        unsafe { &*(pw::sys::pw_data_loop_get_loop(dl) as *const pw::loop_::Loop) };
    // SAFETY: plain syscall; a valid fd or -1 comes back.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!(
            "cannot create an eventfd: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let raw_efd = efd.as_raw_fd();
    shared.stream.store(stream.as_raw_ptr(), Ordering::SeqCst);
    let sh = shared.clone();
    // On the data thread: the capture thread asked for a cycle.
    let mut wake = Some(
        data_loop.add_io(efd, spa::support::system::IoFlags::IN, move |fd| {
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into a u64 from our nonblocking eventfd (resets it).
            let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            let p = sh.stream.load(Ordering::SeqCst);
            if !p.is_null() {
                // SAFETY: the stream is alive while the pointer is set; it is cleared on this
                // thread (in `close_on_data_thread`) before the stream goes. Called on the data
                // thread, the trigger runs the cycle directly.
                unsafe {
                    if pw::sys::pw_stream_is_driving(p) {
                        pw::sys::pw_stream_trigger_process(p);
                    }
                }
            }
        }),
    );
    shared.wake.store(raw_efd, Ordering::SeqCst);
    // PipeWire's data thread runs the process callback: it keeps realtime pace like the
    // capture thread, or a busy machine delays its cycles (measured: blocks dropped as late).
    // SAFETY: the context's data loop; the function takes no data and runs once there.
    unsafe {
        pw::sys::pw_data_loop_invoke(
            dl,
            Some(promote_data_thread),
            0,
            std::ptr::null(),
            0,
            false,
            std::ptr::null_mut(),
        );
    }
    let ml = mainloop.downgrade();
    let _quit = quit.attach(mainloop.loop_(), move |()| {
        if let Some(ml) = ml.upgrade() {
            ml.quit();
        }
    });
    mainloop.run();
    // The capture side stops waking the data thread, then the data thread lets go of the
    // stream and its wake-up source (on its own thread, between dispatches), then the stream
    // goes.
    shared.wake.store(-1, Ordering::SeqCst);
    while shared.in_use.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    let mut closing = Closing {
        shared: shared.clone(),
        wake: wake.take().map(|w| Box::new(w) as Box<dyn std::any::Any>),
    };
    // SAFETY: a blocking invoke: `closing` outlives the call, and the function runs on the data
    // thread while this thread waits for it.
    unsafe {
        pw::sys::pw_data_loop_invoke(
            dl,
            Some(close_on_data_thread),
            0,
            std::ptr::null(),
            0,
            true,
            (&mut closing as *mut Closing).cast(),
        );
    }
    // Had the invoke not run (no data thread), the source is dropped here instead.
    drop(closing);
    let _ = stream.disconnect();
    Ok(())
}

/// What the data thread lets go of when the node closes.
struct Closing {
    shared: Arc<Shared>,
    wake: Option<Box<dyn std::any::Any>>,
}

/// Runs on PipeWire's data thread, from a blocking invoke: clears the stream pointer and
/// removes the wake-up source there, so neither can be in use as they go.
unsafe extern "C" fn close_on_data_thread(
    _loop: *mut spa::sys::spa_loop,
    _async: bool,
    _seq: u32,
    _data: *const std::ffi::c_void,
    _size: usize,
    user: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: `user` is the `Closing` the invoking thread keeps alive and does not touch
    // while it waits for this call.
    let closing = unsafe { &mut *user.cast::<Closing>() };
    closing
        .shared
        .stream
        .store(std::ptr::null_mut(), Ordering::SeqCst);
    closing.wake = None;
    0
}

/// Runs once on PipeWire's data thread, outside any cycle.
unsafe extern "C" fn promote_data_thread(
    _loop: *mut spa::sys::spa_loop,
    _async: bool,
    _seq: u32,
    _data: *const std::ffi::c_void,
    _size: usize,
    _user: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    crate::writer::promote_to_realtime();
    0
}

/// The stream's format: float32 mono at `rate`, as a SPA pod.
fn audio_format(rate: u32) -> Result<Vec<u8>, String> {
    let mut info = spa::param::audio::AudioInfoRaw::new();
    info.set_format(spa::param::audio::AudioFormat::F32LE);
    info.set_rate(rate);
    info.set_channels(1);
    let mut position = [0; spa::param::audio::MAX_CHANNELS];
    position[0] = spa::sys::SPA_AUDIO_CHANNEL_MONO;
    info.set_position(position);
    let obj = spa::pod::Object {
        type_: spa::sys::SPA_TYPE_OBJECT_Format,
        id: spa::sys::SPA_PARAM_EnumFormat,
        properties: info.into(),
    };
    spa::pod::serialize::PodSerializer::serialize(
        std::io::Cursor::new(Vec::new()),
        &spa::pod::Value::Object(obj),
    )
    .map(|(c, _)| c.into_inner())
    .map_err(|e| format!("cannot describe the audio format: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use assert_no_alloc::assert_no_alloc;

    fn ring() -> (NodeFeed, RingSide, Arc<StatsInner>) {
        let shared = Arc::new(Shared::new());
        let stats = Arc::new(StatsInner::default());
        let (prod, cons) = HeapRb::<f32>::new(RING_FRAMES).split();
        (
            NodeFeed {
                prod,
                shared: shared.clone(),
                pending: None,
            },
            RingSide {
                cons,
                shared,
                stats: stats.clone(),
                primed: false,
                read: 0,
            },
            stats,
        )
    }

    fn ramp(from: usize, n: usize) -> Vec<f32> {
        (from..from + n).map(|i| i as f32).collect()
    }

    #[test]
    fn driving_delivers_exactly_what_arrived_in_order_without_allocating() {
        let (mut feed, mut rt, stats) = ring();
        let mut out = vec![0.0f32; MAX_CYCLE];
        let (a, b) = (ramp(0, CHUNK), ramp(CHUNK, 4 * CHUNK));
        // An untriggered cycle (no stream yet) is harmless: the trigger only counts.
        feed.trigger();
        let (n1, n2, n3) = assert_no_alloc(|| {
            feed.write(&a);
            feed.trigger();
            let n1 = rt.fill(&mut out, true, 256);
            feed.write(&b);
            feed.trigger();
            let n2 = rt.fill(&mut out[CHUNK..], true, 256);
            let n3 = rt.fill(&mut out[5 * CHUNK..], true, 256);
            (n1, n2, n3)
        });
        // The cycle is as long as what the block brought, whatever the graph's quantum.
        assert_eq!((n1, n2, n3), (CHUNK, 4 * CHUNK, 0));
        assert!(
            out[..5 * CHUNK]
                .iter()
                .enumerate()
                .all(|(i, &x)| x == i as f32)
        );
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn blocks_whose_cycle_never_ran_are_dropped_not_delivered_late() {
        let (mut feed, mut rt, stats) = ring();
        // Three blocks arrive before the graph runs a cycle (the node is not driving yet, or
        // the data thread was starved): the first cycle delivers the newest only.
        for k in 0..3 {
            feed.write(&ramp(k * CHUNK, CHUNK));
            feed.trigger();
        }
        let mut out = vec![0.0f32; MAX_CYCLE];
        assert_eq!(rt.fill(&mut out, true, CHUNK), CHUNK);
        assert_eq!(out[0], (2 * CHUNK) as f32);
        assert_eq!(
            stats.drift_dropped.load(Ordering::Relaxed),
            2 * CHUNK as u64
        );
        // In step again: nothing more is dropped.
        feed.write(&ramp(0, CHUNK));
        feed.trigger();
        assert_eq!(rt.fill(&mut out, true, CHUNK), CHUNK);
        assert_eq!(
            stats.drift_dropped.load(Ordering::Relaxed),
            2 * CHUNK as u64
        );
    }

    #[test]
    fn pieces_written_in_one_wake_up_are_one_block() {
        let (mut feed, mut rt, stats) = ring();
        let mut out = vec![0.0f32; MAX_CYCLE];
        // A wake-up that brought two model frames (a 512-frame quantum completes two now and
        // then) writes them piece by piece and asks for one cycle: it delivers both.
        let (a, b) = (ramp(0, CHUNK), ramp(CHUNK, CHUNK));
        assert_no_alloc(|| {
            feed.write(&a);
            feed.write(&b);
            feed.trigger();
        });
        assert_eq!(rt.fill(&mut out, true, CHUNK), 2 * CHUNK);
        assert!(
            out[..2 * CHUNK]
                .iter()
                .enumerate()
                .all(|(i, &x)| x == i as f32)
        );
        assert_eq!(stats.drift_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_cycle_never_exceeds_the_buffer_and_keeps_the_rest_for_the_next() {
        let (mut feed, mut rt, _) = ring();
        feed.write(&ramp(0, 3000));
        let mut out = vec![0.0f32; 1024];
        assert_eq!(rt.fill(&mut out, true, 480), 1024);
        assert_eq!(out[1023], 1023.0);
        assert_eq!(rt.fill(&mut out, true, 480), 1024);
        assert_eq!(out[0], 1024.0);
        assert_eq!(rt.fill(&mut out, true, 480), 952);
    }

    #[test]
    fn following_another_driver_takes_its_quantum_pads_silence_and_bounds_the_fill() {
        let (mut feed, mut rt, stats) = ring();
        let mut out = vec![1.0f32; MAX_CYCLE];
        // Before any audio: silence, not counted as underruns.
        assert_eq!(rt.fill(&mut out, false, 256), 256);
        assert!(out[..256].iter().all(|&x| x == 0.0));
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 0);
        feed.write(&ramp(0, 300));
        assert_no_alloc(|| {
            assert_eq!(rt.fill(&mut out, false, 256), 256);
            assert_eq!(out[255], 255.0);
            // 44 left: the rest of the quantum is silence, and that is an underrun now.
            assert_eq!(rt.fill(&mut out, false, 256), 256);
        });
        assert_eq!(out[43], 299.0);
        assert!(out[44..256].iter().all(|&x| x == 0.0));
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 1);
        // The microphone's clock runs ahead of the driver's: the ring is trimmed to its bound
        // instead of letting latency grow.
        feed.write(&ramp(0, 10 * CHUNK));
        rt.fill(&mut out, false, 256);
        assert!(rt.cons.occupied_len() <= 256);
        assert!(stats.drift_dropped.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn audio_left_when_the_last_recorder_leaves_is_not_heard_by_the_next() {
        let (mut feed, mut rt, _) = ring();
        feed.write(&ramp(0, 2 * CHUNK));
        feed.clear();
        feed.write(&ramp(7, CHUNK));
        feed.trigger();
        let mut out = vec![0.0f32; MAX_CYCLE];
        // What was queued before the clear is dropped; what came after is heard.
        assert_eq!(rt.fill(&mut out, true, CHUNK), CHUNK);
        assert_eq!(out[0], 7.0);
        assert_eq!(rt.fill(&mut out, true, CHUNK), 0);
    }

    #[test]
    fn the_driver_clock_advances_by_each_cycle_without_allocating() {
        let (_, rt, _) = ring();
        // SAFETY: a plain C struct of integers and floats; all-zero is a valid value.
        let mut pos: spa::sys::spa_io_position = unsafe { std::mem::zeroed() };
        pos.clock.duration = 1024;
        let mut node = NodeRt {
            ring: rt,
            position: Arc::new(AtomicPtr::new(&mut pos)),
            scratch: vec![0.0; MAX_CYCLE].into_boxed_slice(),
            rate: 48_000,
        };
        assert_eq!(node.quantum(), 1024);
        assert_no_alloc(|| {
            node.clock(480);
            node.clock(960);
        });
        let p = node.position.load(Ordering::Relaxed);
        // SAFETY: `pos` is alive; the node only holds a pointer to it.
        let c = unsafe { &(*p).clock };
        assert_eq!((c.position, c.duration), (1024 + 480, 960));
        assert_eq!((c.rate.num, c.rate.denom), (1, 48_000));
        assert_eq!(c.next_nsec - c.nsec, 20_000_000);
        // No position yet: a chunk's worth.
        node.position.store(std::ptr::null_mut(), Ordering::Relaxed);
        assert_eq!(node.quantum(), CHUNK);
    }
}
