//! Krisp's virtual devices.
//!
//! - [`pulse`] (Linux): "Krisp Microphone" as a PulseAudio/PipeWire source.
//! - [`shm`]: the shared-memory ring that the app writes processed microphone audio into and
//!   that the macOS (AudioServerPlugIn) and Windows (WaveRT) drivers read to present
//!   "Krisp Microphone". The wire format is specified in `drivers/PROTOCOL.md` and mirrored
//!   for C in `drivers/common/krisp_ring.h`.
//!
//! ```
//! use krisp_vdev::shm::{heap_pair, RingConfig};
//!
//! let cfg = RingConfig::new("/krisp-doc-example");
//! let (mut writer, mut reader) = heap_pair(&cfg).expect("valid config");
//! let mut out = vec![0.0; 480];
//! // The driver starts IO: it discards anything queued before and prefills (silence).
//! assert_eq!(reader.read(&mut out).audio_frames, 0);
//! writer.write(&vec![0.25; cfg.target_fill_frames as usize]);
//! let report = reader.read(&mut out);
//! assert_eq!(report.audio_frames, 480);
//! assert!(out.iter().all(|&s| s == 0.25));
//! ```
#![deny(missing_docs)]

#[cfg(target_os = "linux")]
pub mod pulse;
pub mod shm;
