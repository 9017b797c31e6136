//! Denoising models: the embedded default and weight files listed in `models/manifest.toml`.
//!
//! Every entry names its weights, their sha256, sample rate, source and licence. A file is
//! hashed before it is parsed, so a corrupt or swapped file is a clear error, never a
//! strange-sounding microphone.

use std::path::{Path, PathBuf};

use nnnoiseless::RnnModel;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::Error;

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
    /// Model family; `rnnoise` is the only one the realtime path runs today.
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
        if info.kind != "rnnoise" {
            return Err(Error::ModelFormat {
                path,
                kind: info.kind.clone(),
            });
        }
        let rnn = match &bytes {
            std::borrow::Cow::Borrowed(b) => RnnModel::from_static_bytes(b),
            std::borrow::Cow::Owned(v) => RnnModel::from_bytes(v),
        }
        .ok_or_else(|| Error::ModelFormat {
            path: path.clone(),
            kind: info.kind.clone(),
        })?;
        let model = Model { info, rnn };
        // The parser checks structure, not layer shapes; a frame through the model proves them.
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
    pub(crate) rnn: RnnModel,
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

    fn self_test(&self) -> bool {
        let rnn = self.rnn.clone();
        std::panic::catch_unwind(move || {
            let mut st = nnnoiseless::DenoiseState::from_model(rnn);
            let mut out = [0.0f32; nnnoiseless::FRAME_SIZE];
            let mut inp = [0.0f32; nnnoiseless::FRAME_SIZE];
            let mut x = 12345u32;
            for v in inp.iter_mut() {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                *v = ((x >> 16) as f32 / 65536.0 - 0.5) * 8000.0;
            }
            let mut ok = true;
            for _ in 0..3 {
                let vad = st.process_frame(&mut out, &inp);
                ok &= vad.is_finite() && out.iter().all(|s| s.is_finite());
            }
            ok
        })
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
