use std::path::PathBuf;

/// Everything that can go wrong when building a denoiser or loading a model.
///
/// Construction errors allocate freely (they happen off the realtime thread);
/// the realtime [`crate::Denoiser::process`] only returns [`ProcessError`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sample rate is outside 8–192 kHz or has no short exact ratio to 48 kHz.
    #[error(
        "unsupported sample rate {rate} Hz: Krisp supports 8000–192000 Hz at rates whose \
         ratio to 48000 Hz fits in a chunk of at most 40 ms (all common rates: 8000, 11025, \
         16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)"
    )]
    UnsupportedSampleRate {
        /// The rate that was asked for.
        rate: u32,
    },
    /// The channel count is 0 or above [`crate::MAX_CHANNELS`].
    #[error("unsupported channel count {channels}: Krisp handles 1 to {max} channels")]
    UnsupportedChannels {
        /// The channel count that was asked for.
        channels: usize,
        /// The maximum supported.
        max: usize,
    },
    /// The resampler could not be built for this rate.
    #[error("cannot build a resampler for {rate} Hz: {reason}")]
    Resampler {
        /// The input rate.
        rate: u32,
        /// What rubato said.
        reason: String,
    },
    /// No model of that name is in the manifest.
    #[error("unknown model '{name}': available models are {available}")]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// Comma-separated list of known names.
        available: String,
    },
    /// The model manifest could not be read or parsed.
    #[error("model manifest {path}: {reason}")]
    Manifest {
        /// Path of the manifest.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A model file could not be read.
    #[error("cannot read model file {path}: {source}")]
    ModelIo {
        /// Path of the weights.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A model file's checksum does not match its manifest entry.
    #[error(
        "model file {path} is corrupt or was replaced: sha256 {actual}, manifest says {expected}"
    )]
    ModelChecksum {
        /// Path of the weights.
        path: PathBuf,
        /// Checksum in the manifest.
        expected: String,
        /// Checksum of the file on disk.
        actual: String,
    },
    /// A model file has the right checksum but its networks or configuration cannot be used.
    #[error("cannot load model {path}: {reason}")]
    ModelLoad {
        /// Path of the model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A model file has the right checksum but is not a valid weight file.
    #[error("model file {path} is not a valid {kind} weight file")]
    ModelFormat {
        /// Path of the weights.
        path: PathBuf,
        /// The model family expected.
        kind: String,
    },
}

/// Errors from the realtime [`crate::Denoiser::process`]. They never allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// Input and output slices differ in length, or are not whole frames of the channel count.
    #[error(
        "input has {input} samples and output {output}; both must be equal whole frames of {channels} channels"
    )]
    BadLength {
        /// Input length in samples.
        input: usize,
        /// Output length in samples.
        output: usize,
        /// Channels the denoiser was built for.
        channels: usize,
    },
    /// In [`crate::Framing::Chunked`] mode the block is not a multiple of the chunk.
    #[error("block of {frames} frames is not a multiple of the {chunk}-frame chunk")]
    Misaligned {
        /// Frames in the block.
        frames: usize,
        /// The chunk size in frames.
        chunk: usize,
    },
}
