//! "Krisp Microphone" on Linux, in one of two shapes ([`MicKind`]):
//! - a pipe source (`module-pipe-source`): the app writes each denoised block into a FIFO and
//!   the server posts it to the recorders as it arrives. The source has no clock of its own,
//!   so the microphone's clock is the only one on the path: nothing between the two can fill
//!   up or run dry, and the added latency is what the app's processing takes (the default);
//! - a null sink the app plays into, remapped into a source with a human name (the fallback
//!   where a pipe source cannot be loaded).
//!
//! Both work on PulseAudio and on PipeWire through pipewire-pulse, which implements the same
//! modules. On PipeWire the default is a third shape, a node of the app's own
//! ([`MicKind::Node`], created by krisp-engine): PipeWire 0.3.80 and later buffer a pipe source
//! by 170 ms, and older PipeWire's pipe source measured up to 49 ms.
//!
//! Modules are loaded and unloaded with `pactl` (pulseaudio-utils), the server's own
//! command-line client: this runs on the control thread only, a few times per session. Every
//! module we load carries a `krisp.owner` property marker in its arguments, so a crashed
//! instance's leftovers are found and removed before new ones are created: exactly one
//! "Krisp Microphone" exists at any time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Human name of the virtual microphone, as recorders show it.
pub const MIC_DESCRIPTION: &str = "Krisp Microphone";
/// PulseAudio name of the virtual microphone source.
pub const MIC_SOURCE: &str = "krisp_mic";
/// PulseAudio name of the null sink the app plays denoised audio into.
pub const MIC_SINK: &str = "krisp_mic_sink";
/// Sample rate of the virtual microphone.
pub const MIC_RATE: u32 = 48_000;

/// Errors of the Linux virtual-device backend.
#[derive(Debug, thiserror::Error)]
pub enum PulseError {
    /// `pactl` is not installed.
    #[error("pactl not found: install pulseaudio-utils to create the Krisp Microphone ({0})")]
    PactlMissing(std::io::Error),
    /// The audio server is not running or refused us.
    #[error("audio server unreachable: {0}")]
    ServerUnreachable(String),
    /// The server refused to load a module.
    #[error("the audio server refused to load {module}: {reason}")]
    LoadFailed {
        /// Module name.
        module: &'static str,
        /// What pactl said.
        reason: String,
    },
}

/// Names and description of one virtual microphone (tests use their own to run side by side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualMic {
    /// Source name (what `pactl list sources` calls it).
    pub source: String,
    /// Sink name the engine plays into.
    pub sink: String,
    /// Description shown to users.
    pub description: String,
    /// Channels of the virtual microphone (1: a microphone is mono).
    pub channels: u16,
    /// How the source is made.
    pub kind: MicKind,
}

/// How "Krisp Microphone" is made on the audio server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MicKind {
    /// A null sink the app plays into, its monitor remapped into the source.
    NullSink,
    /// `module-pipe-source` reading the FIFO at this path (float32le at [`MIC_RATE`]).
    Pipe(PathBuf),
    /// A PipeWire node the app itself creates (krisp-engine's `pwnode.rs`) on PipeWire
    /// servers: no module is loaded, and the node goes with the app's connection, so a killed
    /// app leaves nothing behind. [`VirtualMic::create`] only removes leftovers of the other
    /// kinds.
    Node,
}

impl Default for VirtualMic {
    fn default() -> Self {
        VirtualMic {
            source: MIC_SOURCE.into(),
            sink: MIC_SINK.into(),
            description: MIC_DESCRIPTION.into(),
            channels: 1,
            kind: MicKind::NullSink,
        }
    }
}

/// Where the FIFO of a pipe-source microphone called `source` lives: the user's runtime
/// directory (`$XDG_RUNTIME_DIR/krisp`, private to the user), else the temporary directory.
pub fn default_fifo(source: &str) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join("krisp").join(format!("{source}.fifo"))
}

/// One line of `pactl list short modules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    /// Module index.
    pub index: u32,
    /// Module name, e.g. `module-null-sink`.
    pub name: String,
    /// Its argument string.
    pub args: String,
}

fn pactl(args: &[&str]) -> Result<String, PulseError> {
    let out = Command::new("pactl")
        .args(args)
        .output()
        .map_err(PulseError::PactlMissing)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(PulseError::ServerUnreachable(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Parses `pactl list short modules`.
pub fn parse_modules(text: &str) -> Vec<ModuleLine> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            let index = it.next()?.trim().parse().ok()?;
            let name = it.next()?.to_string();
            let args = it.next().unwrap_or("").to_string();
            Some(ModuleLine { index, name, args })
        })
        .collect()
}

impl VirtualMic {
    /// Channel count and map as module arguments.
    fn layout(&self) -> (String, &'static str) {
        let map = if self.channels == 1 {
            "mono"
        } else {
            "front-left,front-right"
        };
        (self.channels.to_string(), map)
    }

    fn marker(&self) -> String {
        format!("krisp.owner={}", self.source)
    }

    /// Whether the audio server answers.
    pub fn server_available() -> bool {
        pactl(&["info"]).is_ok()
    }

    /// Modules that belong to this virtual microphone (ours or a crashed instance's).
    pub fn modules(&self) -> Result<Vec<ModuleLine>, PulseError> {
        let marker = self.marker();
        Ok(parse_modules(&pactl(&["list", "short", "modules"])?)
            .into_iter()
            .filter(|m| {
                m.args.contains(&marker)
                    || m.args.contains(&format!("sink_name={} ", self.sink))
                    || m.args.ends_with(&format!("sink_name={}", self.sink))
                    || m.args.contains(&format!("source_name={} ", self.source))
                    || m.args.ends_with(&format!("source_name={}", self.source))
            })
            .collect())
    }

    /// Whether the source is present on the server right now.
    pub fn is_present(&self) -> Result<bool, PulseError> {
        let sources = pactl(&["list", "short", "sources"])?;
        Ok(sources
            .lines()
            .any(|l| l.split('\t').nth(1) == Some(self.source.as_str())))
    }

    /// How many sources with our source name exist (must be 0 or 1).
    pub fn count(&self) -> Result<usize, PulseError> {
        let sources = pactl(&["list", "short", "sources"])?;
        Ok(sources
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some(self.source.as_str()))
            .count())
    }

    /// Removes leftovers (e.g. after a crash), then creates the source (and its sink).
    pub fn create(&self) -> Result<(), PulseError> {
        self.remove()?;
        match &self.kind {
            MicKind::Pipe(fifo) => return self.create_pipe(fifo),
            MicKind::Node => return Ok(()),
            MicKind::NullSink => {}
        }
        let marker = self.marker();
        let (ch, map) = self.layout();
        let sink_args = format!(
            "sink_name={} rate={MIC_RATE} channels={ch} channel_map={map} \
             sink_properties=\"device.description='{} (input)' {marker} device.class=abstract\"",
            self.sink, self.description
        );
        pactl(&["load-module", "module-null-sink", &sink_args]).map_err(|e| {
            PulseError::LoadFailed {
                module: "module-null-sink",
                reason: e.to_string(),
            }
        })?;
        let source_args = format!(
            "master={}.monitor source_name={} channels={ch} channel_map={map} \
             source_properties=\"device.description='{}' {marker} device.icon_name=audio-input-microphone\"",
            self.sink, self.source, self.description
        );
        if let Err(e) = pactl(&["load-module", "module-remap-source", &source_args]) {
            let _ = self.remove();
            return Err(PulseError::LoadFailed {
                module: "module-remap-source",
                reason: e.to_string(),
            });
        }
        Ok(())
    }

    fn create_pipe(&self, fifo: &Path) -> Result<(), PulseError> {
        let failed = |reason: String| PulseError::LoadFailed {
            module: "module-pipe-source",
            reason,
        };
        if let Some(dir) = fifo.parent() {
            create_private_dir(dir)
                .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        // PulseAudio refuses a FIFO that already exists (a server that crashed leaves its
        // own behind); the path is ours.
        match std::fs::remove_file(fifo) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(format!("cannot remove {}: {e}", fifo.display()))),
        }
        let path = fifo
            .to_str()
            .filter(|p| !p.contains(char::is_whitespace) && !p.contains(['"', '\'']))
            .ok_or_else(|| failed(format!("unusable FIFO path {}", fifo.display())))?;
        let (ch, map) = self.layout();
        let args = format!(
            "source_name={} file={path} format=float32le rate={MIC_RATE} channels={ch} \
             channel_map={map} source_properties=\"device.description='{}' {} \
             device.icon_name=audio-input-microphone\"",
            self.source,
            self.description,
            self.marker()
        );
        pactl(&["load-module", "module-pipe-source", &args]).map_err(|e| failed(e.to_string()))?;
        Ok(())
    }

    /// Unloads every module of this virtual microphone. Idempotent.
    pub fn remove(&self) -> Result<(), PulseError> {
        // The source first: it depends on the sink's monitor.
        let mut mods = self.modules()?;
        mods.sort_by_key(|m| std::cmp::Reverse(m.name == "module-remap-source"));
        for m in mods {
            let _ = pactl(&["unload-module", &m.index.to_string()]);
        }
        // PipeWire leaves a FIFO it found in place; nothing else uses ours.
        if let MicKind::Pipe(fifo) = &self.kind {
            let _ = std::fs::remove_file(fifo);
        }
        Ok(())
    }

    /// Whether anyone records from the virtual microphone right now (its state is RUNNING).
    pub fn has_listeners(&self) -> Result<bool, PulseError> {
        let sources = pactl(&["list", "short", "sources"])?;
        Ok(sources.lines().any(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            f.get(1) == Some(&self.source.as_str()) && f.last() == Some(&"RUNNING")
        }))
    }
}

/// PipeWire from 0.3.80 on keeps a fixed 8192 frames (170 ms at 48 kHz) in the ring behind
/// `module-pipe-source` (its pipe-tunnel source was reworked then); measured with 1.4.2:
/// 118-157 ms added. Older PipeWire and PulseAudio post the pipe's audio as it arrives.
pub const PIPE_SOURCE_BUFFERS_FROM: (u32, u32, u32) = (0, 3, 80);

/// The PipeWire version behind a pulse server, from `pactl info`'s "Server Name: PulseAudio
/// (on PipeWire 1.4.2)"; `None` for PulseAudio itself (or an unreadable line).
pub fn pipewire_version_in(info: &str) -> Option<(u32, u32, u32)> {
    let line = info
        .lines()
        .find(|l| l.trim_start().starts_with("Server Name:"))?;
    let v = line.split("on PipeWire ").nth(1)?;
    let v = v.trim_end_matches(|c: char| !c.is_ascii_digit());
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let micro = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, micro))
}

/// The running server's PipeWire version (`None`: PulseAudio, or the server did not say).
pub fn pipewire_version() -> Option<(u32, u32, u32)> {
    pactl(&["info"])
        .ok()
        .as_deref()
        .and_then(pipewire_version_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pactl_module_listing() {
        let text = "3\tmodule-null-sink\tsink_name=krisp_mic_sink rate=48000\n\
                    17\tmodule-remap-source\tmaster=krisp_mic_sink.monitor source_name=krisp_mic\n\
                    20\tmodule-cli-protocol-unix\t\n";
        let m = parse_modules(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].index, 17);
        assert_eq!(m[1].name, "module-remap-source");
        assert!(m[0].args.contains("krisp_mic_sink"));
        assert_eq!(m[2].args, "");
    }

    #[test]
    fn reads_the_pipewire_version_behind_a_pulse_server() {
        let info = |name: &str| {
            format!(
                "Server String: /run/user/1000/pulse/native\nServer Name: {name}\nServer Version: 15.0.0\n"
            )
        };
        assert_eq!(
            pipewire_version_in(&info("PulseAudio (on PipeWire 1.4.2)")),
            Some((1, 4, 2))
        );
        assert_eq!(
            pipewire_version_in(&info("PulseAudio (on PipeWire 0.3.65)")),
            Some((0, 3, 65))
        );
        assert_eq!(pipewire_version_in(&info("pulseaudio")), None);
        assert_eq!(pipewire_version_in("garbage"), None);
        assert!(Some((1, 4, 2)) >= Some(PIPE_SOURCE_BUFFERS_FROM));
        assert!((0, 3, 65) < PIPE_SOURCE_BUFFERS_FROM);
    }
}

/// Creates `dir` (and its parents) readable by the user only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A source as the audio server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Server name (`alsa_input...`, `fake_mic`, `krisp_mic`).
    pub name: String,
    /// Human description.
    pub description: String,
}

/// Parses the `Name:` and `Description:` lines of `pactl list sources`.
pub fn parse_sources(text: &str) -> Vec<SourceInfo> {
    let mut out = vec![];
    let mut name: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("Name: ") {
            name = Some(n.to_string());
        } else if let Some(d) = t.strip_prefix("Description: ")
            && let Some(n) = name.take()
        {
            out.push(SourceInfo {
                name: n,
                description: d.to_string(),
            });
        }
    }
    out
}

/// Every source of the server, with descriptions.
pub fn list_sources() -> Result<Vec<SourceInfo>, PulseError> {
    Ok(parse_sources(&pactl(&["list", "sources"])?))
}

/// The server's default source name.
pub fn default_source() -> Result<String, PulseError> {
    Ok(pactl(&["get-default-source"])?.trim().to_string())
}

/// Whether a source called `name` exists now.
pub fn source_exists(name: &str) -> Result<bool, PulseError> {
    Ok(pactl(&["list", "short", "sources"])?
        .lines()
        .any(|l| l.split('\t').nth(1) == Some(name)))
}

#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn parses_long_source_listing() {
        let text = "Source #1\n\tState: RUNNING\n\tName: fake_mic\n\tDescription: Fake Mic\n\
                    \tDriver: x\nSource #2\n\tName: krisp_mic\n\tDescription: Krisp Microphone\n";
        let s = parse_sources(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].description, "Krisp Microphone");
        assert_eq!(s[0].name, "fake_mic");
    }
}
