//! "Start at login": an XDG autostart entry on Linux.
//!
//! The package installs a system-wide entry (`/etc/xdg/autostart/krisp.desktop`). A user's
//! own entry of the same name in `~/.config/autostart` takes precedence (XDG Autostart spec):
//! turning the option off writes one with `Hidden=true`, turning it on writes one that starts
//! Krisp in the tray. macOS (LaunchAgent) and Windows (Run key) are planned, not built.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// File name of the entry, the same for the system and the user.
pub const ENTRY: &str = "krisp.desktop";
/// Where the package puts the system-wide entry.
pub const SYSTEM_DIR: &str = "/etc/xdg/autostart";

/// The user's autostart folder: `$XDG_CONFIG_HOME/autostart`, else `~/.config/autostart`.
pub fn user_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"))
        .join("autostart")
}

/// Whether Krisp starts at login for this user.
pub fn enabled() -> bool {
    enabled_in(&user_dir(), Path::new(SYSTEM_DIR))
}

/// Turns starting at login on or off for this user.
pub fn set(on: bool) -> Result<()> {
    let exe = std::env::current_exe().context("finding the krisp binary")?;
    set_in(&user_dir(), Path::new(SYSTEM_DIR), on, &exe)
}

pub fn enabled_in(user: &Path, system: &Path) -> bool {
    match std::fs::read_to_string(user.join(ENTRY)) {
        Ok(text) => !is_hidden(&text),
        Err(_) => std::fs::read_to_string(system.join(ENTRY)).is_ok_and(|t| !is_hidden(&t)),
    }
}

fn is_hidden(entry: &str) -> bool {
    entry.lines().any(|l| {
        let l = l.trim();
        l.eq_ignore_ascii_case("Hidden=true")
            || l.eq_ignore_ascii_case("X-GNOME-Autostart-enabled=false")
    })
}

pub fn set_in(user: &Path, system: &Path, on: bool, exe: &Path) -> Result<()> {
    let path = user.join(ENTRY);
    let text = if on {
        format!(
            "[Desktop Entry]\nType=Application\nName=Krisp\nComment=Noise removal for your \
             microphone\nExec=\"{}\" run --minimized\nIcon=krisp\nTerminal=false\n\
             X-GNOME-Autostart-enabled=true\n",
            exe.display()
        )
    } else if system.join(ENTRY).exists() {
        // Only a user entry that hides it can switch the system one off.
        "[Desktop Entry]\nType=Application\nName=Krisp\nExec=krisp run --minimized\nHidden=true\n"
            .to_owned()
    } else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        };
    };
    std::fs::create_dir_all(user).with_context(|| format!("creating {}", user.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(user)?;
    std::fs::write(tmp.path(), text)?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_off_on_without_a_system_entry() {
        let d = tempfile::tempdir().unwrap();
        let (user, system) = (d.path().join("user"), d.path().join("system"));
        let exe = Path::new("/usr/bin/krisp");
        assert!(!enabled_in(&user, &system));
        set_in(&user, &system, true, exe).unwrap();
        assert!(enabled_in(&user, &system));
        let text = std::fs::read_to_string(user.join(ENTRY)).unwrap();
        assert!(
            text.contains("Exec=\"/usr/bin/krisp\" run --minimized"),
            "{text}"
        );
        set_in(&user, &system, false, exe).unwrap();
        assert!(!enabled_in(&user, &system));
        assert!(!user.join(ENTRY).exists());
    }

    #[test]
    fn the_user_can_switch_off_the_packages_entry_and_back_on() {
        let d = tempfile::tempdir().unwrap();
        let (user, system) = (d.path().join("user"), d.path().join("system"));
        std::fs::create_dir_all(&system).unwrap();
        std::fs::write(
            system.join(ENTRY),
            "[Desktop Entry]\nType=Application\nExec=krisp run --minimized\n",
        )
        .unwrap();
        assert!(enabled_in(&user, &system), "the package's entry counts");
        set_in(&user, &system, false, Path::new("/usr/bin/krisp")).unwrap();
        assert!(!enabled_in(&user, &system));
        assert!(
            std::fs::read_to_string(user.join(ENTRY))
                .unwrap()
                .contains("Hidden=true")
        );
        assert!(
            system.join(ENTRY).exists(),
            "the system entry is not touched"
        );
        set_in(&user, &system, true, Path::new("/usr/bin/krisp")).unwrap();
        assert!(enabled_in(&user, &system));
    }
}
