//! Where the app finds the memory the "Krisp Microphone" driver reads, on each OS.
//!
//! The segment's content is the same everywhere (`drivers/PROTOCOL.md`); only how the app gets
//! hold of it differs: on Linux it creates a POSIX segment itself, on macOS it asks the ring
//! daemon for a memory entry (`macos.rs`), on Windows it opens the section the driver created
//! (`windows.rs`). Everything here is portable and tested on Linux; the OS calls live in the
//! `sys` modules of those two files.

use super::layout::total_bytes;
#[cfg(any(target_os = "macos", windows))]
use super::region::Region;
use super::{RingConfig, RingWriter, ShmError};

/// The Mach service of the macOS ring daemon (`drivers/macos/krisp_ringd.h`,
/// `KRISP_RINGD_SERVICE`).
pub const MACOS_RING_SERVICE: &str = "com.krisp.audio.ringd";

/// The Windows driver's section object (`drivers/windows/KrispMic.cpp`; the driver creates it
/// as `\BaseNamedObjects\KrispMicRing`, which user mode names `Global\KrispMicRing`).
pub const WINDOWS_RING_SECTION: &str = "Global\\KrispMicRing";

/// Where a [`RingWriter`] finds the ring's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingLocation {
    /// A POSIX shared-memory segment the writer creates or takes over by name (Linux; the
    /// macOS driver's development build).
    PosixShm {
        /// Segment name, e.g. `/krisp-mic-1000`.
        name: String,
    },
    /// macOS: the memory entry the ring daemon hands out over this Mach service.
    MacRingDaemon {
        /// Mach service name ([`MACOS_RING_SERVICE`]).
        service: String,
    },
    /// Windows: the section object the driver created at start.
    WindowsSection {
        /// Object name ([`WINDOWS_RING_SECTION`]).
        name: String,
    },
}

/// The operating systems whose drivers the ring serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Os {
    Linux,
    Mac,
    Windows,
    Other,
}

impl Os {
    pub(crate) const fn current() -> Self {
        if cfg!(target_os = "linux") {
            Os::Linux
        } else if cfg!(target_os = "macos") {
            Os::Mac
        } else if cfg!(windows) {
            Os::Windows
        } else {
            Os::Other
        }
    }
}

impl RingLocation {
    /// Where the product's driver on this OS expects the ring: the daemon's memory on macOS,
    /// the driver's section on Windows, the user's POSIX segment elsewhere.
    pub fn for_this_os() -> Self {
        Self::for_os(Os::current(), posix_default_name)
    }

    pub(crate) fn for_os(os: Os, posix_name: impl FnOnce() -> String) -> Self {
        match os {
            Os::Mac => RingLocation::MacRingDaemon {
                service: MACOS_RING_SERVICE.to_owned(),
            },
            Os::Windows => RingLocation::WindowsSection {
                name: WINDOWS_RING_SECTION.to_owned(),
            },
            Os::Linux | Os::Other => RingLocation::PosixShm { name: posix_name() },
        }
    }
}

#[cfg(unix)]
fn posix_default_name() -> String {
    super::default_ring_name()
}

#[cfg(not(unix))]
fn posix_default_name() -> String {
    "/krisp-mic".to_owned()
}

impl RingWriter {
    /// Opens the ring at `location` and takes it over as its writer with `config`'s geometry
    /// (`config.name` is used only for [`RingLocation::PosixShm`], which names its own
    /// segment). The driver's memory on macOS and Windows has a fixed size: a `config` that
    /// does not fit is refused with [`ShmError::SegmentTooSmall`]. Not realtime-safe.
    ///
    /// On macOS and Windows this is written against the documented OS calls but has **not
    /// been compiled or run yet** (see `drivers/README.md`).
    pub fn open_at(location: &RingLocation, config: &RingConfig) -> Result<Self, ShmError> {
        match location {
            RingLocation::PosixShm { name } => open_posix(name, config),
            RingLocation::MacRingDaemon { service } => open_mac(service, config),
            RingLocation::WindowsSection { name } => open_windows(name, config),
        }
    }

    /// Takes over memory someone else made and sized (the macOS daemon's memory entry, the
    /// Windows driver's section): refuses a geometry that does not fit, then publishes a new
    /// generation in place, as `create` does for a POSIX segment of the right size. A reader
    /// of the old generation resyncs (same geometry) or reopens (another geometry).
    #[cfg_attr(not(any(target_os = "macos", windows, test)), allow(dead_code))]
    pub(crate) fn take_over(
        region: super::region::Region,
        config: &RingConfig,
    ) -> Result<Self, ShmError> {
        let header = config.to_header()?;
        check_fits(
            total_bytes(header.capacity_frames, header.channels),
            region.len(),
        )?;
        Ok(Self::attach(std::sync::Arc::new(region), header))
    }
}

/// A ring of `needed` bytes fits in a mapping of `mapped` bytes.
fn check_fits(needed: u64, mapped: usize) -> Result<(), ShmError> {
    if needed > mapped as u64 {
        return Err(ShmError::SegmentTooSmall {
            needed,
            actual: mapped as u64,
        });
    }
    Ok(())
}

#[cfg(unix)]
fn open_posix(name: &str, config: &RingConfig) -> Result<RingWriter, ShmError> {
    let config = RingConfig {
        name: name.to_owned(),
        ..config.clone()
    };
    RingWriter::create(&config)
}

#[cfg(not(unix))]
fn open_posix(_name: &str, _config: &RingConfig) -> Result<RingWriter, ShmError> {
    Err(ShmError::Unsupported {
        what: "POSIX shared memory",
    })
}

#[cfg(target_os = "macos")]
fn open_mac(service: &str, config: &RingConfig) -> Result<RingWriter, ShmError> {
    let region: Region = super::macos::sys::map_daemon_ring(service)?;
    RingWriter::take_over(region, config)
}

#[cfg(not(target_os = "macos"))]
fn open_mac(_service: &str, _config: &RingConfig) -> Result<RingWriter, ShmError> {
    Err(ShmError::Unsupported {
        what: "the macOS ring daemon",
    })
}

#[cfg(windows)]
fn open_windows(name: &str, config: &RingConfig) -> Result<RingWriter, ShmError> {
    let region: Region = super::windows::sys::map_section(name)?;
    RingWriter::take_over(region, config)
}

#[cfg(not(windows))]
fn open_windows(_name: &str, _config: &RingConfig) -> Result<RingWriter, ShmError> {
    Err(ShmError::Unsupported {
        what: "the Windows driver's section",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::region::Region;
    use crate::shm::{ReaderState, RingReader};
    use std::sync::Arc;

    #[test]
    fn each_os_gets_the_location_its_driver_uses() {
        let posix = || "/krisp-mic-1000".to_owned();
        assert_eq!(
            RingLocation::for_os(Os::Mac, posix),
            RingLocation::MacRingDaemon {
                service: "com.krisp.audio.ringd".into()
            }
        );
        assert_eq!(
            RingLocation::for_os(Os::Windows, posix),
            RingLocation::WindowsSection {
                name: r"Global\KrispMicRing".into()
            }
        );
        assert_eq!(
            RingLocation::for_os(Os::Linux, posix),
            RingLocation::PosixShm {
                name: "/krisp-mic-1000".into()
            }
        );
        assert_eq!(Os::current(), Os::Linux);
        assert!(matches!(
            RingLocation::for_this_os(),
            RingLocation::PosixShm { name } if name.starts_with("/krisp-mic-")
        ));
    }

    #[test]
    fn the_other_oses_locations_are_refused_clearly_here() {
        let cfg = RingConfig::new("/unused");
        for (loc, what) in [
            (
                RingLocation::for_os(Os::Mac, String::new),
                "the macOS ring daemon",
            ),
            (
                RingLocation::for_os(Os::Windows, String::new),
                "the Windows driver's section",
            ),
        ] {
            let e = RingWriter::open_at(&loc, &cfg).err().unwrap();
            assert!(
                matches!(e, ShmError::Unsupported { what: w } if w == what),
                "{e}"
            );
            assert!(
                e.to_string()
                    .contains("not available on this operating system")
            );
        }
    }

    /// The driver's memory, made and sized by someone else (here: the Windows driver's
    /// section size for the default config, 512 + 8192 x 4 bytes).
    fn driver_memory() -> Region {
        Region::heap(512 + 8192 * 4).unwrap()
    }

    #[test]
    fn the_default_config_fits_the_windows_section_and_the_macos_daemon_memory() {
        let cfg = RingConfig::new("/unused");
        assert!(RingWriter::take_over(driver_memory(), &cfg).is_ok());
        // KRISP_RINGD_BYTES: 512 KiB holds 8192 frames x 8 channels + the header.
        let mac = Region::heap(512 * 1024).unwrap();
        assert!(RingWriter::take_over(mac, &cfg.clone().channels(8)).is_ok());
    }

    #[test]
    fn a_config_larger_than_the_drivers_memory_is_refused() {
        let e = RingWriter::take_over(driver_memory(), &RingConfig::new("/x").channels(2))
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                ShmError::SegmentTooSmall {
                    needed: 66_048,
                    actual: 33_280
                }
            ),
            "{e}"
        );
        assert!(matches!(
            RingWriter::take_over(driver_memory(), &RingConfig::new("/x").channels(0)),
            Err(ShmError::InvalidConfig { .. })
        ));
    }

    /// Memory made and sized by someone else (the daemon, the driver), mapped twice as the
    /// app and the driver would: POSIX shm stands in for the memory entry or section here.
    #[test]
    fn taking_over_memory_a_reader_holds_republishes_and_the_reader_follows() {
        use crate::shm::region::os;
        let name = format!("/krisp-take-over-{}", std::process::id());
        let fd = os::open(&name, true, true).unwrap();
        os::resize(&fd, &name, 512 * 1024).unwrap();
        let map = || os::map(&fd, &name, 512 * 1024).unwrap();
        let cfg = RingConfig::new("/unused");
        let mut w1 = RingWriter::take_over(map(), &cfg).unwrap();
        let mut r = RingReader::attach(Arc::new(map())).unwrap();
        os::unlink(&name).unwrap(); // the mappings stay valid
        let mut out = vec![0.0; 480];
        r.read(&mut out);
        w1.write(&vec![0.5; 1024]);
        assert_eq!(r.read(&mut out).state, ReaderState::Playing);
        // The app restarts and takes the same memory over: new generation, the driver resyncs
        // and never replays the old queue.
        let mut w2 = RingWriter::take_over(map(), &cfg).unwrap();
        assert!(w2.header().generation > w1.header().generation);
        w2.write(&vec![0.25; 1024]);
        assert_eq!(r.read(&mut out).state, ReaderState::Prefilling);
        w2.write(&vec![0.25; 1024]);
        assert_eq!(r.read(&mut out).state, ReaderState::Playing);
        assert!(out.iter().all(|&s| s == 0.25));
        // Another geometry in the same memory: the driver is told to reopen.
        let _w3 = RingWriter::take_over(map(), &cfg.clone().channels(2)).unwrap();
        assert_eq!(r.read(&mut out).state, ReaderState::NeedsReopen);
    }
}
