//! `krisp denoise IN OUT`: the offline path, same DSP as the live microphone.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use krisp_dsp::{Manifest, offline};

use crate::wav;

/// Files longer than this get a progress bar.
const PROGRESS_AFTER_SECS: u64 = 5;

pub struct Args {
    pub input: PathBuf,
    pub output: PathBuf,
    pub strength_db: f32,
    pub model: String,
    /// DeepFilterNet3 look-ahead in hops; `None` = the model's default.
    pub lookahead: Option<usize>,
    pub models_dir: Option<PathBuf>,
    pub quiet: bool,
}

/// Where the model manifest lives: flag, env, next to the installed binary, the source tree.
pub fn find_manifest(explicit: Option<&Path>) -> Result<Manifest> {
    if let Some(dir) = explicit {
        return Manifest::load(dir).map_err(Into::into);
    }
    if let Some(dir) = std::env::var_os("KRISP_MODELS_DIR") {
        return Manifest::load(Path::new(&dir)).map_err(Into::into);
    }
    let mut candidates = vec![];
    if let Ok(exe) = std::env::current_exe()
        && let Some(bin) = exe.parent()
    {
        candidates.push(bin.join("../share/krisp/models"));
        candidates.push(bin.join("models"));
    }
    candidates.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models"
    )));
    for dir in candidates {
        if dir.join("manifest.toml").is_file() {
            return Manifest::load(&dir).map_err(Into::into);
        }
    }
    Ok(Manifest::embedded())
}

pub fn run(args: &Args) -> Result<()> {
    if !args.input.exists() {
        bail!("input file {} does not exist", args.input.display());
    }
    if same_file(&args.input, &args.output) {
        bail!(
            "refusing to overwrite the input {}: choose another output path",
            args.input.display()
        );
    }
    let manifest = find_manifest(args.models_dir.as_deref())?;
    let mut model = manifest.load_model(&args.model)?;
    if let Some(hops) = args.lookahead {
        model = model.with_lookahead(hops);
    }
    let audio = wav::read(&args.input)?;
    let rate = audio.spec.sample_rate;
    let channels = audio.spec.channels as usize;
    let frames = (audio.samples.len() / channels) as u64;

    let bar = if !args.quiet
        && frames > PROGRESS_AFTER_SECS * rate as u64
        && std::io::stderr().is_terminal()
    {
        let b = ProgressBar::new(frames);
        b.set_style(
            ProgressStyle::with_template("{spinner} denoising [{bar:30}] {percent}% {eta} left")
                .expect("invariant: valid template")
                .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let out = offline::denoise_interleaved(
        &audio.samples,
        rate,
        channels,
        &model,
        args.strength_db,
        |done| {
            if let Some(b) = &bar {
                b.set_position(done);
            }
        },
    )
    .with_context(|| format!("cannot denoise {}", args.input.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    // Write next to OUT, then rename: OUT is never left half-written or truncated on error.
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Created like any file the user writes (0666 less the umask), not tempfile's private
    // 0600: the result is a normal document.
    let tmp = tempfile::Builder::new()
        .prefix(".krisp-denoise-")
        .suffix(".wav.part")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    wav::write(tmp.path(), audio.spec, &out)?;
    tmp.persist(&args.output)
        .with_context(|| format!("cannot move the result to {}", args.output.display()))?;
    if !args.quiet {
        eprintln!(
            "denoised {:.1} s of {} Hz {}-channel audio with model '{}' -> {}",
            frames as f64 / rate as f64,
            rate,
            channels,
            model.info().name,
            args.output.display()
        );
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
