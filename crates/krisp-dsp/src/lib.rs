//! Krisp's signal processing: a denoiser with resampling, strength, click-free bypass and
//! meters, usable on a realtime thread and, through [`offline`], on whole files. Two models sit
//! behind one [`FrameModel`] trait: RNNoise (default, light, compiled in) and DeepFilterNet3
//! (`dfn3` in models/, better and heavier; its networks run on tract, and with
//! [`Config::model_thread`] on a worker thread so that the realtime path never allocates).
//!
//! Pure computation: no I/O besides reading model files at construction.
//!
//! ```
//! use krisp_dsp::{Config, Denoiser, Model};
//!
//! let model = Model::builtin();
//! let mut dn = Denoiser::new(&Config::new(44_100, 1), &model).unwrap();
//! let input = vec![0.0f32; 441];
//! let mut output = vec![0.0f32; 441];
//! dn.process(&input, &mut output).unwrap(); // realtime-safe
//! assert_eq!(output, input); // silence in, silence out
//! dn.handle().set_bypass(true); // from any thread; crossfades
//! ```
#![deny(missing_docs)]

mod denoiser;
mod dfn3;
mod error;
mod model;
pub mod offline;
mod swap;
mod threaded;

pub use denoiser::{
    Config, Denoiser, FULL_STRENGTH_DB, Framing, Handle, MAX_CHANNELS, MAX_RATE, MIN_RATE,
    MODEL_FRAME, MODEL_RATE,
};
pub use error::{Error, ProcessError};
pub use model::{DEFAULT_MODEL, FrameModel, Manifest, Model, ModelInfo, sha256_hex};
pub use swap::{FADE_MS, SwapReceiver, SwapSender, swap_channel};
