//! A [`FrameModel`] run on its own worker thread, for models whose inference allocates.
//!
//! DeepFilterNet3's networks run on tract, which allocates its intermediate tensors on every
//! call. The realtime thread must not, so with [`crate::Config::model_thread`] each frame is
//! handed to a worker through a preallocated lock-free ring and the worker's result for the
//! frame [`HANDOFF`] frames earlier is taken back the same way: 20 ms of extra delay, and the
//! realtime side only copies samples, stores atomics and wakes the worker.
//!
//! Why two frames and not one: capture delivers frames in bursts after the capture thread was
//! descheduled (several 10 ms frames a few microseconds apart). With one frame of slack the
//! worker then has microseconds, not milliseconds, for a frame: measured live on a loaded
//! 2-core VM, 1–2 % of frames came back late (each a 10 ms gap). Two frames absorb a 20 ms
//! burst.
//!
//! If the worker has not finished a frame in time (a machine too slow for the model), that
//! frame's output is silence and [`ThreadedFrames::late_frames`] counts it; the stream keeps
//! its timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::FrameModel;

/// Frames the rings can hold; more than this behind means the worker is hopelessly late.
const RING_FRAMES: usize = 8;

/// Frames in flight between the realtime thread and the worker: the extra delay, in frames.
pub(crate) const HANDOFF: usize = 2;

struct Shared {
    stop: AtomicBool,
    vad: AtomicU32,
    late: AtomicU64,
}

pub(crate) struct ThreadedFrames {
    frame: usize,
    delay: usize,
    to_worker: HeapProd<f32>,
    from_worker: HeapCons<f32>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    /// Results still to come for frames already output as silence; skipped when they arrive.
    owed: usize,
}

impl ThreadedFrames {
    /// Moves `inner` to a new worker thread. Allocates and spawns; call off the realtime thread.
    pub(crate) fn spawn(
        inner: Box<dyn FrameModel>,
        init: Option<fn()>,
    ) -> std::io::Result<ThreadedFrames> {
        let frame = inner.frame_size();
        let delay = inner.delay() + HANDOFF * frame;
        let (to_worker, mut worker_in) = HeapRb::<f32>::new(RING_FRAMES * frame).split();
        let (mut worker_out, from_worker) = HeapRb::<f32>::new(RING_FRAMES * frame).split();
        // Frames of silence in flight: the realtime side takes the result of HANDOFF frames ago.
        worker_out.push_iter(std::iter::repeat_n(0.0, HANDOFF * frame));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            vad: AtomicU32::new(0),
            late: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let worker = std::thread::Builder::new()
            .name("krisp-model".into())
            .spawn(move || {
                if let Some(init) = init {
                    init();
                }
                let mut inner = inner;
                let mut inp = vec![0.0f32; frame];
                let mut out = vec![0.0f32; frame];
                while !sh.stop.load(Ordering::Acquire) {
                    if worker_in.occupied_len() < frame {
                        std::thread::park_timeout(std::time::Duration::from_millis(50));
                        continue;
                    }
                    worker_in.pop_slice(&mut inp);
                    let vad = inner.process_frame(&inp, &mut out);
                    sh.vad.store(vad.to_bits(), Ordering::Relaxed);
                    if worker_out.vacant_len() >= frame {
                        worker_out.push_slice(&out);
                    }
                }
            })?;
        Ok(ThreadedFrames {
            frame,
            delay,
            to_worker,
            from_worker,
            shared,
            worker: Some(worker),
            owed: 0,
        })
    }
}

impl FrameModel for ThreadedFrames {
    fn frame_size(&self) -> usize {
        self.frame
    }
    fn delay(&self) -> usize {
        self.delay
    }
    /// Realtime-safe: copies, atomics and one wake-up of the worker; never allocates or blocks.
    fn process_frame(&mut self, input: &[f32], output: &mut [f32]) -> f32 {
        if self.to_worker.vacant_len() >= self.frame {
            self.to_worker.push_slice(&input[..self.frame]);
        }
        if let Some(w) = &self.worker {
            w.thread().unpark();
        }
        while self.owed > 0 && self.from_worker.occupied_len() >= self.frame {
            self.from_worker.skip(self.frame);
            self.owed -= 1;
        }
        if self.from_worker.occupied_len() >= self.frame {
            self.from_worker.pop_slice(&mut output[..self.frame]);
        } else {
            output[..self.frame].fill(0.0);
            self.owed += 1;
            self.shared.late.fetch_add(1, Ordering::Relaxed);
        }
        f32::from_bits(self.shared.vad.load(Ordering::Relaxed))
    }
    fn late_frames(&self) -> u64 {
        self.shared.late.load(Ordering::Relaxed)
    }
}

impl Drop for ThreadedFrames {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(w) = self.worker.take() {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}
