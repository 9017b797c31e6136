//! Krisp's realtime engine: the real microphone → lock-free ring → denoiser →
//! "Krisp Microphone", with faults handled as normal events.
//!
//! - [`Engine::start`] returns at once; a control thread builds the audio path and rebuilds
//!   it when the audio server restarts, the virtual device vanishes or the microphone goes
//!   away (the virtual mic stays alive with silence meanwhile).
//! - [`Output`]: the denoised audio goes to the PulseAudio/PipeWire source "Krisp Microphone"
//!   (Linux), or into the shared-memory ring the macOS/Windows drivers read
//!   (`drivers/PROTOCOL.md`), which tests read on Linux.
//! - [`Control`] switches noise removal (click-free), strength and input device.
//! - [`Stats`] reads levels, voice activity, latency, xruns and CPU load without locks.
//! - [`socket`] lets `krisp on/off/status` drive a running engine over a Unix socket that only
//!   the same user can open.
//!
//! The realtime code is in `rt.rs`; see its header for what it never does.
#![deny(missing_docs)]

mod capture;
mod direct;
mod engine;
mod pa;
mod pipe;
mod pwnode;
mod rt;
pub mod socket;
mod stats;
mod steer;
mod watch;
mod writer;

pub use engine::{Control, Engine, EngineConfig, Health, Output, StatusHandle, VirtualDevice};
pub use krisp_vdev::pulse::VirtualMic;
pub use krisp_vdev::shm::{RingConfig, default_ring_name};
pub use stats::{OUTPUT_SHARED_RING, OUTPUT_VIRTUAL_MIC, RingStatus, Stats, StatsSnapshot};

use serde::{Deserialize, Serialize};

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The user asked to capture our own virtual microphone.
    #[error(
        "'{0}' is Krisp's own virtual microphone; capturing it would feed Krisp its own output. Choose your real microphone"
    )]
    OwnDevice(String),
    /// The audio server is down or refused a request.
    #[error("audio server: {0}")]
    Server(String),
    /// The input device could not be opened.
    #[error("input device: {0}")]
    Device(String),
    /// The denoiser could not be built.
    #[error(transparent)]
    Dsp(#[from] krisp_dsp::Error),
    /// The shared-memory ring could not be created or configured.
    #[error(transparent)]
    Ring(#[from] krisp_vdev::shm::ShmError),
    /// A thread could not be started.
    #[error("cannot start the control thread: {0}")]
    Thread(std::io::Error),
}

/// An input device as `krisp devices` and the picker show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputInfo {
    /// Stable id (`pulseaudio:<name>`).
    pub id: String,
    /// Server name of the source.
    pub name: String,
    /// Human description.
    pub description: String,
    /// The system's default input.
    pub is_default: bool,
    /// Krisp's own virtual microphone (never captured).
    pub is_own: bool,
    /// A monitor of an output (not a microphone).
    pub is_monitor: bool,
}

/// Lists the input devices of the audio server.
pub fn list_inputs(mic: &VirtualMic) -> Result<Vec<InputInfo>, EngineError> {
    engine::list_inputs_with(mic)
}
