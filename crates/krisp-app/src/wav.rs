//! WAV reading and writing for `krisp denoise`: any PCM (8–32 bit) or 32-bit float file.

use std::path::Path;

use anyhow::{Context, Result, bail};
use hound::{SampleFormat, WavSpec};

/// Decoded audio: interleaved f32 in ±1.0 plus the original format.
pub struct Audio {
    pub spec: WavSpec,
    pub samples: Vec<f32>,
}

pub fn read(path: &Path) -> Result<Audio> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = hound::WavReader::new(std::io::BufReader::new(file)).map_err(|e| match e {
        hound::Error::FormatError(msg) => {
            anyhow::anyhow!(
                "{} is not a WAV file krisp can read ({msg})",
                path.display()
            )
        }
        hound::Error::Unsupported => {
            anyhow::anyhow!(
                "{} uses a WAV encoding krisp does not support (use PCM or 32-bit float)",
                path.display()
            )
        }
        other => anyhow::anyhow!("cannot read {}: {other}", path.display()),
    })?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.channels as usize > krisp_dsp::MAX_CHANNELS {
        bail!(
            "{} has {} channels; krisp handles 1 to {}",
            path.display(),
            spec.channels,
            krisp_dsp::MAX_CHANNELS
        );
    }
    let expected = reader.len() as usize;
    let truncated = |e: hound::Error| {
        anyhow::anyhow!(
            "{} is truncated or damaged: {e} (its header promises {expected} samples)",
            path.display()
        )
    };
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(truncated)?,
        (SampleFormat::Int, bits @ 1..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(truncated)?
        }
        (fmt, bits) => bail!(
            "{} is {bits}-bit {fmt:?}; krisp reads 8/16/24/32-bit PCM and 32-bit float",
            path.display()
        ),
    };
    if samples.len() != expected {
        bail!(
            "{} is truncated: {} of {expected} samples present",
            path.display(),
            samples.len()
        );
    }
    Ok(Audio { spec, samples })
}

/// Writes `samples` to `path` in `spec`'s format. Integer formats saturate at full scale.
pub fn write(path: &Path, spec: WavSpec, samples: &[f32]) -> Result<()> {
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot create {}", path.display()))?;
    match spec.sample_format {
        SampleFormat::Float => {
            for &s in samples {
                w.write_sample(s)?;
            }
        }
        SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            let full = (1i64 << (bits - 1)) as f64;
            for &s in samples {
                let v = (s as f64 * full).round().clamp(-full, full - 1.0) as i32;
                match bits {
                    8 => w.write_sample(v as i8)?,
                    16 => w.write_sample(v as i16)?,
                    _ => w.write_sample(v)?,
                }
            }
        }
    }
    w.finalize()
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}
