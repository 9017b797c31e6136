//! Whole-buffer denoising for files, with the realtime latency compensated so the output
//! lines up with the input sample for sample. Uses exactly the realtime [`Denoiser`].

use crate::{Config, Denoiser, Error, Handle, Model};

/// Frames fed per call; the result does not depend on it (block-size independence is tested).
const BLOCK: usize = 4800;

/// Denoises interleaved `input` at `sample_rate` with `channels`, returning a buffer of the
/// same length, aligned with the input. `progress` gets the number of input frames done.
pub fn denoise_interleaved(
    input: &[f32],
    sample_rate: u32,
    channels: usize,
    model: &Model,
    strength_db: f32,
    mut progress: impl FnMut(u64),
) -> Result<Vec<f32>, Error> {
    let handle = Handle::new();
    handle.set_strength_db(strength_db);
    let mut dn = Denoiser::with_handle(&Config::new(sample_rate, channels), model, handle)?;
    let ch = channels;
    let lat = dn.latency();
    let total = input.len() / ch;
    let mut out = vec![0.0f32; (total + lat) * ch];
    let mut padded_tail = vec![0.0f32; lat * ch];
    let mut done = 0;
    for (i, block) in input[..total * ch].chunks(BLOCK * ch).enumerate() {
        let start = i * BLOCK * ch;
        dn.process(block, &mut out[start..start + block.len()])
            .expect("invariant: whole frames of the configured channel count");
        done += block.len() / ch;
        progress(done as u64);
    }
    // Flush the pipeline with silence to get the last `latency` samples out.
    let tail_start = total * ch;
    dn.process(&vec![0.0; lat * ch], &mut padded_tail)
        .expect("invariant: whole frames");
    out[tail_start..].copy_from_slice(&padded_tail);
    out.drain(..lat * ch);
    Ok(out)
}
