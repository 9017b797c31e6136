//! Denoising models: the embedded default and weight files listed in `models/manifest.toml`.
//!
//! Every entry names its weights, their sha256, sample rate, source and licence. A file is
//! hashed before it is parsed, so a corrupt or swapped file is a clear error, never a
//! strange-sounding microphone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nnnoiseless::RnnModel;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::dfn3::{Dfn3Net, Dfn3Options, Dfn3State};

/// Name of the model used when none is chosen.
pub const DEFAULT_MODEL: &str = "rnnoise";

/// The default RNNoise weights, compiled into the binary so the product works with no files.
static EMBEDDED_RNNOISE: &[u8] = include_bytes!("../../../models/rnnoise.rnn");

/// The manifest as shipped, compiled in so the embedded model is described even without files.
static EMBEDDED_MANIFEST: &str = include_str!("../../../models/manifest.toml");

/// One entry of `models/manifest.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Short name used by `--model` and the settings.
    pub name: String,
    /// Model family: `rnnoise` (RNNoise weights) or `dfn3` (DeepFilterNet3 ONNX tarball).
    pub kind: String,
    /// Weight file, relative to the manifest's folder.
    pub file: String,
    /// Whether these weights are also compiled into the binary.
    #[serde(default)]
    pub embedded: bool,
    /// Lower-case hex sha256 of the weight file.
    pub sha256: String,
    /// Sample rate the model runs at.
    pub sample_rate: u32,
    /// Where the weights come from.
    pub source: String,
    /// Licence of the weights.
    pub licence: String,
    /// One line for people choosing a model.
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    model: Vec<ModelInfo>,
}

/// The list of models available to this process.
#[derive(Debug, Clone)]
pub struct Manifest {
    dir: Option<PathBuf>,
    models: Vec<ModelInfo>,
}

impl Manifest {
    /// The manifest compiled into the binary; only embedded models can be loaded from it.
    pub fn embedded() -> Manifest {
        let parsed: ManifestFile =
            toml::from_str(EMBEDDED_MANIFEST).expect("invariant: the shipped manifest parses");
        Manifest {
            dir: None,
            models: parsed.model,
        }
    }

    /// Reads `manifest.toml` from a models folder.
    pub fn load(dir: &Path) -> Result<Manifest, Error> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let parsed: ManifestFile = toml::from_str(&text).map_err(|e| Error::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Manifest {
            dir: Some(dir.to_path_buf()),
            models: parsed.model,
        })
    }

    /// All entries.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Result<&ModelInfo, Error> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                available: self
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Loads, verifies and parses the model called `name`.
    ///
    /// Embedded models are used from the binary when the folder has no file for them.
    pub fn load_model(&self, name: &str) -> Result<Model, Error> {
        let info = self.get(name)?.clone();
        let file_path = self.dir.as_ref().map(|d| d.join(&info.file));
        let on_disk = file_path.as_ref().filter(|p| p.exists());
        let (bytes, path): (std::borrow::Cow<'static, [u8]>, PathBuf) = match on_disk {
            Some(p) => {
                let data = std::fs::read(p).map_err(|source| Error::ModelIo {
                    path: p.clone(),
                    source,
                })?;
                (data.into(), p.clone())
            }
            None if info.embedded => (
                EMBEDDED_RNNOISE.into(),
                PathBuf::from(format!("<embedded>/{}", info.file)),
            ),
            None => {
                return Err(Error::ModelIo {
                    path: file_path.unwrap_or_else(|| PathBuf::from(&info.file)),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not shipped in this build's models folder",
                    ),
                });
            }
        };
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&info.sha256) {
            return Err(Error::ModelChecksum {
                path,
                expected: info.sha256.clone(),
                actual,
            });
        }
        let net = match info.kind.as_str() {
            "rnnoise" => {
                let rnn = match &bytes {
                    std::borrow::Cow::Borrowed(b) => RnnModel::from_static_bytes(b),
                    std::borrow::Cow::Owned(v) => RnnModel::from_bytes(v),
                }
                .ok_or_else(|| Error::ModelFormat {
                    path: path.clone(),
                    kind: info.kind.clone(),
                })?;
                Net::Rnnoise(Box::new(rnn))
            }
            "dfn3" => Net::Dfn3(Arc::new(Dfn3Net::from_targz(&bytes, &path)?)),
            _ => {
                return Err(Error::ModelFormat {
                    path,
                    kind: info.kind.clone(),
                });
            }
        };
        let model = Model {
            info,
            net,
            dfn3: Dfn3Options::default(),
        };
        // The parsers check structure, not layer shapes; frames through the model prove them.
        if !model.self_test() {
            return Err(Error::ModelFormat {
                path,
                kind: model.info.kind,
            });
        }
        Ok(model)
    }
}

/// A loaded, verified model, ready to build denoisers from.
#[derive(Clone)]
pub struct Model {
    info: ModelInfo,
    pub(crate) net: Net,
    pub(crate) dfn3: Dfn3Options,
}

/// The parsed networks of a [`Model`].
#[derive(Clone)]
pub(crate) enum Net {
    Rnnoise(Box<RnnModel>),
    Dfn3(Arc<Dfn3Net>),
}

/// One channel's worth of a model at 48 kHz: what [`crate::Denoiser`] wraps with resampling,
/// framing, strength and bypass. Every model Krisp runs implements it.
pub trait FrameModel: Send {
    /// Samples per frame at [`crate::MODEL_RATE`].
    fn frame_size(&self) -> usize;
    /// Delay from a frame's input to the same audio in the output, in samples at 48 kHz,
    /// counted from the end of the frame that contains it (look-ahead and overlap).
    fn delay(&self) -> usize;
    /// Denoises one frame (full scale ±1.0); returns the speech presence 0–1 (RNNoise's VAD,
    /// DeepFilterNet3's local-SNR estimate mapped from −15…35 dB). Realtime-safe for RNNoise;
    /// see the crate docs for DeepFilterNet3.
    fn process_frame(&mut self, input: &[f32], output: &mut [f32]) -> f32;
    /// Frames whose result was not ready in time and were output as silence (only models run
    /// on a worker thread can be late).
    fn late_frames(&self) -> u64 {
        0
    }
}

/// RNNoise behind [`FrameModel`]: it wants 16-bit-scaled samples.
struct RnnoiseFrames {
    st: Box<nnnoiseless::DenoiseState<'static>>,
    inp: [f32; nnnoiseless::FRAME_SIZE],
    out: [f32; nnnoiseless::FRAME_SIZE],
}

const I16_SCALE: f32 = 32768.0;

impl FrameModel for RnnoiseFrames {
    fn frame_size(&self) -> usize {
        nnnoiseless::FRAME_SIZE
    }
    fn delay(&self) -> usize {
        nnnoiseless::FRAME_SIZE
    }
    fn process_frame(&mut self, input: &[f32], output: &mut [f32]) -> f32 {
        for (d, &x) in self.inp.iter_mut().zip(input) {
            *d = x * I16_SCALE;
        }
        let vad = self.st.process_frame(&mut self.out, &self.inp);
        for (o, &y) in output.iter_mut().zip(self.out.iter()) {
            *o = y / I16_SCALE;
        }
        vad
    }
}

impl FrameModel for Dfn3State {
    fn frame_size(&self) -> usize {
        crate::MODEL_FRAME
    }
    fn delay(&self) -> usize {
        Dfn3State::delay(self)
    }
    fn process_frame(&mut self, input: &[f32], output: &mut [f32]) -> f32 {
        self.process_hop(input, output)
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("info", &self.info).finish()
    }
}

impl Model {
    /// The default RNNoise model from the binary; never fails.
    pub fn builtin() -> Model {
        Manifest::embedded()
            .load_model(DEFAULT_MODEL)
            .expect("invariant: the embedded model matches the embedded manifest")
    }

    /// The manifest entry this model was loaded from.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Whether this is a DeepFilterNet3 model (bigger, slower, better).
    pub fn is_dfn3(&self) -> bool {
        matches!(self.net, Net::Dfn3(_))
    }

    /// The same model with DeepFilterNet3's look-ahead set to `hops` × 10 ms (0–2; the
    /// network was trained with 2 = 30 ms total delay). Less look-ahead, less delay, lower
    /// quality. No effect on RNNoise.
    pub fn with_lookahead(mut self, hops: usize) -> Model {
        self.dfn3.lookahead = hops.min(2);
        self
    }

    /// A fresh per-channel model state. Allocates; call it off the realtime thread.
    pub fn frame_model(&self) -> Result<Box<dyn FrameModel>, Error> {
        Ok(match &self.net {
            Net::Rnnoise(rnn) => {
                let mut st = nnnoiseless::DenoiseState::from_model((**rnn).clone());
                // The first process_frame in a process initialises shared tables; do it here.
                // Silence leaves the model's state as new.
                let zeros = [0.0f32; nnnoiseless::FRAME_SIZE];
                let mut scratch = [0.0f32; nnnoiseless::FRAME_SIZE];
                st.process_frame(&mut scratch, &zeros);
                Box::new(RnnoiseFrames {
                    st,
                    inp: [0.0; nnnoiseless::FRAME_SIZE],
                    out: [0.0; nnnoiseless::FRAME_SIZE],
                })
            }
            Net::Dfn3(net) => Box::new(Dfn3State::new(net.clone(), self.dfn3)?),
        })
    }

    fn self_test(&self) -> bool {
        let Ok(mut st) = self.frame_model() else {
            return false;
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let n = st.frame_size();
            let mut out = vec![0.0f32; n];
            let mut inp = vec![0.0f32; n];
            let mut x = 12345u32;
            for v in inp.iter_mut() {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                *v = ((x >> 16) as f32 / 65536.0 - 0.5) * 0.25;
            }
            let mut ok = true;
            for _ in 0..3 {
                let vad = st.process_frame(&inp, &mut out);
                ok &= vad.is_finite() && out.iter().all(|s| s.is_finite());
            }
            ok
        }))
        .unwrap_or(false)
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_model_matches_its_manifest_entry() {
        let m = Model::builtin();
        assert_eq!(m.info().name, DEFAULT_MODEL);
        assert_eq!(sha256_hex(EMBEDDED_RNNOISE), m.info().sha256);
    }

    #[test]
    fn shipped_manifest_on_disk_loads_every_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let manifest = Manifest::load(&dir).unwrap();
        for info in manifest.models() {
            manifest.load_model(&info.name).unwrap();
        }
    }

    #[test]
    fn tampered_weight_file_is_refused_with_checksum_error() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        std::fs::copy(src.join("manifest.toml"), tmp.path().join("manifest.toml")).unwrap();
        let mut bytes = std::fs::read(src.join("rnnoise.rnn")).unwrap();
        bytes[1000] ^= 0x40;
        std::fs::write(tmp.path().join("rnnoise.rnn"), &bytes).unwrap();
        let err = Manifest::load(tmp.path())
            .unwrap()
            .load_model("rnnoise")
            .unwrap_err();
        assert!(matches!(err, Error::ModelChecksum { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn truncated_weights_with_matching_checksum_are_refused_as_bad_format() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let bytes = std::fs::read(src.join("rnnoise.rnn")).unwrap();
        let cut = &bytes[..bytes.len() / 2];
        std::fs::write(tmp.path().join("half.rnn"), cut).unwrap();
        let manifest = format!(
            "[[model]]\nname = \"half\"\nkind = \"rnnoise\"\nfile = \"half.rnn\"\nsha256 = \"{}\"\n\
             sample_rate = 48000\nsource = \"test\"\nlicence = \"test\"\n",
            sha256_hex(cut)
        );
        std::fs::write(tmp.path().join("manifest.toml"), manifest).unwrap();
        let err = Manifest::load(tmp.path())
            .unwrap()
            .load_model("half")
            .unwrap_err();
        assert!(matches!(err, Error::ModelFormat { .. }), "{err}");
    }

    #[test]
    fn unknown_model_names_the_available_ones() {
        let err = Manifest::embedded().load_model("nope").unwrap_err();
        assert!(err.to_string().contains("rnnoise"), "{err}");
    }

    #[test]
    fn corrupt_manifest_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("manifest.toml"), "[[model]]\nname = 3").unwrap();
        let err = Manifest::load(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("manifest.toml"), "{err}");
    }
}
