//! Replacing the realtime denoiser (new sample rate, new model) without allocating or
//! freeing on the realtime thread.
//!
//! The control thread builds the new [`Denoiser`] (sharing the old one's [`crate::Handle`]
//! via [`Denoiser::with_handle`]) and [`SwapSender::offer`]s it. The realtime thread either
//! calls [`SwapReceiver::poll`] once per block, which swaps a pending denoiser in at once (a new
//! sample rate: the old one cannot run on the new stream), or runs its audio through
//! [`SwapReceiver::process`], which changes models without a click: the newcomer first runs
//! beside the current one until its own delay has filled with real audio, then the output
//! crossfades from one to the other over [`FADE_MS`]. Either way the old denoiser goes back
//! through a second one-slot SPSC ring and the control thread drops it with
//! [`SwapSender::collect`]. Moving a `Box` through a ring is a pointer copy: no allocation.
//!
//! During a model change both models run, so the realtime path costs their sum for the
//! newcomer's delay plus the fade (under 60 ms). The stream's delay changes to the newcomer's;
//! the fade mixes the two delays for its 20 ms, which sounds like a short blend, never a gap.

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::{Denoiser, ProcessError};

/// Length of the crossfade between two models.
pub const FADE_MS: f32 = 20.0;

/// Samples of the newcomer's output one step of [`SwapReceiver::process`] handles at most.
const SCRATCH: usize = 4096;

/// Control-thread end.
pub struct SwapSender {
    to_rt: HeapProd<Box<Denoiser>>,
    from_rt: HeapCons<Box<Denoiser>>,
}

/// Realtime end: owns the current denoiser.
pub struct SwapReceiver {
    current: Box<Denoiser>,
    /// A model change under way: the newcomer, frames it has run, and its pre-roll.
    incoming: Option<Box<Denoiser>>,
    ran: usize,
    warm: usize,
    fade: usize,
    scratch: Vec<f32>,
    from_ctl: HeapCons<Box<Denoiser>>,
    to_ctl: HeapProd<Box<Denoiser>>,
}

/// Creates the pair around the first denoiser. Allocates; call off the realtime thread.
pub fn swap_channel(first: Denoiser) -> (SwapSender, SwapReceiver) {
    let (to_rt, from_ctl) = HeapRb::new(1).split();
    let (to_ctl, from_rt) = HeapRb::new(1).split();
    (
        SwapSender { to_rt, from_rt },
        SwapReceiver {
            current: Box::new(first),
            incoming: None,
            ran: 0,
            warm: 0,
            fade: 1,
            scratch: vec![0.0; SCRATCH],
            from_ctl,
            to_ctl,
        },
    )
}

impl SwapSender {
    /// Offers a replacement. Returns it back if one is still pending or the old one has not
    /// been collected yet (call [`SwapSender::collect`] and try again).
    pub fn offer(&mut self, next: Denoiser) -> Result<(), Box<Denoiser>> {
        self.collect();
        let boxed = Box::new(next);
        if self.to_rt.is_full() || self.from_rt.is_full() {
            return Err(boxed);
        }
        self.to_rt.try_push(boxed)
    }

    /// Drops the denoiser the realtime side has retired, if any. Returns whether it did.
    pub fn collect(&mut self) -> bool {
        self.from_rt.try_pop().is_some()
    }

    /// Whether an offered denoiser has not been taken by the realtime side yet.
    pub fn pending(&self) -> bool {
        !self.to_rt.is_empty()
    }
}

impl SwapReceiver {
    /// Swaps in a pending replacement at once, if any. Realtime-safe: no allocation or free.
    pub fn poll(&mut self) {
        if self.to_ctl.is_full() {
            return; // the previous one has not been collected; keep the current one
        }
        if let Some(next) = self.incoming.take().or_else(|| self.from_ctl.try_pop()) {
            self.retire(next);
        }
    }

    /// Makes `next` current and hands the old one back. The caller checked there is room.
    fn retire(&mut self, next: Box<Denoiser>) {
        let old = std::mem::replace(&mut self.current, next);
        // Room was checked, so this never hands the box back.
        let _ = self.to_ctl.try_push(old).map_err(std::mem::forget);
    }

    /// The current denoiser.
    pub fn denoiser(&mut self) -> &mut Denoiser {
        &mut self.current
    }

    /// Whether a model change is under way (both models running).
    pub fn switching(&self) -> bool {
        self.incoming.is_some()
    }

    /// Denoises one block like [`Denoiser::process`], taking up a pending replacement with a
    /// crossfade. A replacement for another rate or channel count is swapped in at once.
    ///
    /// Realtime-safe: no allocation, lock, log or system call.
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), ProcessError> {
        if self.incoming.is_none()
            && !self.to_ctl.is_full()
            && let Some(next) = self.from_ctl.try_pop()
        {
            if next.sample_rate() != self.current.sample_rate()
                || next.channels() != self.current.channels()
            {
                self.retire(next);
            } else {
                self.ran = 0;
                self.warm = next.latency();
                self.fade = ((FADE_MS / 1000.0 * next.sample_rate() as f32) as usize).max(1);
                self.incoming = Some(next);
            }
        }
        self.current.process(input, output)?;
        let Some(next) = self.incoming.as_mut() else {
            return Ok(());
        };
        let ch = next.channels();
        let step = SCRATCH / ch * ch;
        for (inp, out) in input.chunks(step).zip(output.chunks_mut(step)) {
            let scratch = &mut self.scratch[..inp.len()];
            next.process(inp, scratch)?;
            for (o, n) in out.chunks_exact_mut(ch).zip(scratch.chunks_exact(ch)) {
                let t = self.ran.saturating_sub(self.warm);
                if t > 0 {
                    // Raised cosine: the two gains sum to one.
                    let x = (t as f32 / self.fade as f32).min(1.0);
                    let g = 0.5 - 0.5 * (std::f32::consts::PI * x).cos();
                    for (a, b) in o.iter_mut().zip(n) {
                        *a = *a * (1.0 - g) + *b * g;
                    }
                }
                self.ran += 1;
            }
        }
        if self.ran >= self.warm + self.fade
            && let Some(next) = self.incoming.take()
        {
            self.retire(next);
        }
        Ok(())
    }
}
