//! "Hear yourself": plays Krisp Microphone to the default output through the audio server's
//! loopback module, so a user can check what the call will hear (with headphones).

use std::process::Command;

use anyhow::{Context, Result, bail};

/// A loaded loopback; unloaded when dropped.
#[derive(Debug)]
pub struct Monitor {
    module: u32,
}

impl Monitor {
    /// Starts playing `source` (Krisp Microphone's source name) to the default output.
    pub fn start(source: &str) -> Result<Monitor> {
        let out = Command::new("pactl")
            .args([
                "load-module",
                "module-loopback",
                &format!("source={source}"),
                "latency_msec=60",
                "source_dont_move=true",
            ])
            .output()
            .context("running pactl (from pulseaudio-utils)")?;
        if !out.status.success() {
            bail!(
                "the audio server refused the monitor: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let module = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("pactl did not print a module number")?;
        Ok(Monitor { module })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = Command::new("pactl")
            .args(["unload-module", &self.module.to_string()])
            .output();
    }
}
