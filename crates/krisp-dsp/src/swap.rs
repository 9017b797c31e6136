//! Replacing the realtime denoiser (new sample rate, new model) without allocating or
//! freeing on the realtime thread.
//!
//! The control thread builds the new [`Denoiser`] (sharing the old one's [`crate::Handle`]
//! via [`Denoiser::with_handle`]) and [`SwapSender::offer`]s it; the realtime thread calls
//! [`SwapReceiver::poll`] once per block, which swaps in a pending denoiser and hands the old
//! one back through a second one-slot SPSC ring; the control thread drops it with
//! [`SwapSender::collect`]. Moving a `Box` through a ring is a pointer copy: no allocation.

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::Denoiser;

/// Control-thread end.
pub struct SwapSender {
    to_rt: HeapProd<Box<Denoiser>>,
    from_rt: HeapCons<Box<Denoiser>>,
}

/// Realtime end: owns the current denoiser.
pub struct SwapReceiver {
    current: Box<Denoiser>,
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
}

impl SwapReceiver {
    /// Swaps in a pending replacement, if any. Realtime-safe: no allocation or free.
    pub fn poll(&mut self) {
        if self.to_ctl.is_full() {
            return; // the previous one has not been collected; keep the current one
        }
        if let Some(next) = self.from_ctl.try_pop() {
            let old = std::mem::replace(&mut self.current, next);
            // Room was checked above, so this never hands the box back.
            let _ = self.to_ctl.try_push(old).map_err(std::mem::forget);
        }
    }

    /// The current denoiser.
    pub fn denoiser(&mut self) -> &mut Denoiser {
        &mut self.current
    }
}
