//! Fixtures and measures for the krisp-dsp integration tests (shared ones in krisp-testkit).
#![allow(dead_code)]

pub use krisp_testkit::*;

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};

/// Resamples mono 48 kHz audio to `rate` (test fixture preparation; allocates).
pub fn resample_from_48k(x: &[f32], rate: u32) -> Vec<f32> {
    if rate == 48_000 {
        return x.to_vec();
    }
    let mut rs = Fft::<f32>::new(48_000, rate as usize, 4800, 1, FixedSync::Input).unwrap();
    let need = rs.process_all_needed_output_len(x.len());
    let input = vec![x.to_vec()];
    let mut out = vec![vec![0.0f32; need]];
    let inp = SequentialSliceOfVecs::new(&input, 1, x.len()).unwrap();
    let mut o = SequentialSliceOfVecs::new_mut(&mut out, 1, need).unwrap();
    let (_, n) = rs
        .process_all_into_buffer(&inp, &mut o, x.len(), None)
        .unwrap();
    out[0].truncate(n);
    out.pop().unwrap()
}
