//! The one error type of the shared-memory ring.

use super::Header;

/// Why a ring could not be created, opened or trusted.
///
/// None of these are produced on the realtime path: `read` and `write` never fail, they report
/// trouble through counters and [`ReaderState`](super::ReaderState).
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// No segment of that name exists yet (the app has not started the microphone).
    #[error("shared ring '{name}' does not exist (is the Krisp app running?)")]
    NotFound {
        /// The segment name that was looked up.
        name: String,
    },
    /// A system call on the segment failed.
    #[error("{op} on shared ring '{name}' failed: {source}")]
    Os {
        /// The call that failed (`shm_open`, `mmap`, ...).
        op: &'static str,
        /// The segment name.
        name: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Segment names must start with '/' and have no other '/', at most 250 bytes.
    #[error("invalid shared ring name '{name}': must be '/name' without further '/'")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The configuration asked for is not one the protocol allows.
    #[error("invalid ring configuration: {what}")]
    InvalidConfig {
        /// What is wrong with it.
        what: &'static str,
    },
    /// The first 8 bytes are not `KRSPRING`: garbage or another program's segment.
    #[error("shared ring has bad magic {found:#018x}: not a Krisp ring or corrupted")]
    BadMagic {
        /// The value found.
        found: u64,
    },
    /// Written by an incompatible protocol version; refused rather than misread.
    #[error(
        "shared ring uses protocol version {found} but this side supports only version {supported}: \
         update the Krisp app and the Krisp Microphone driver to matching versions"
    )]
    VersionMismatch {
        /// Version in the header.
        found: u32,
        /// Version this build speaks.
        supported: u32,
    },
    /// The writer is (re)initialising the header or has not finished; try again shortly.
    #[error("shared ring header is being initialised (not ready yet)")]
    NotReady,
    /// The writer abandoned this segment; reopen it by name.
    #[error("shared ring segment was retired by the writer; reopen it by name")]
    Retired,
    /// The state word holds a value the protocol does not define.
    #[error("shared ring header has unknown state {found}: corrupted")]
    BadState {
        /// The value found.
        found: u32,
    },
    /// A sample format this build cannot play.
    #[error("shared ring uses unsupported sample format {found}")]
    UnsupportedFormat {
        /// The format code found.
        found: u32,
    },
    /// The header's checksum does not match its fields: torn or corrupted.
    #[error(
        "shared ring header checksum {found:#010x} != {expected:#010x}: torn or corrupted header"
    )]
    ChecksumMismatch {
        /// Checksum stored in the header.
        found: u32,
        /// Checksum computed from the fields.
        expected: u32,
    },
    /// The geometry in the header is inconsistent or out of range.
    #[error("shared ring geometry refused ({what}): {header:?}")]
    BadGeometry {
        /// Which rule failed.
        what: &'static str,
        /// The header as read.
        header: Header,
    },
    /// The OS object that holds the driver's ring does not exist: on macOS the ring daemon's
    /// Mach service, on Windows the driver's section object.
    #[error("{object} does not exist: {advice}")]
    DriverNotInstalled {
        /// What was looked up (service or section name).
        object: String,
        /// What the user should check.
        advice: &'static str,
    },
    /// The OS or the ring daemon refused this process access to the driver's ring.
    #[error("access to {object} was refused: {advice}")]
    AccessDenied {
        /// What was opened.
        object: String,
        /// Why that happens and what fixes it.
        advice: &'static str,
    },
    /// A Mach call failed (macOS).
    #[error("{op} failed: {meaning} (kern_return_t {code:#x})")]
    Mach {
        /// The call (`bootstrap_look_up`, `mach_msg`, `mach_vm_map`, ...).
        op: &'static str,
        /// Its return code.
        code: i32,
        /// What the code means, from the SDK headers.
        meaning: &'static str,
    },
    /// The ring daemon answered with something other than a ring.
    #[error("the ring daemon's reply is not a ring: {what}")]
    BadDaemonReply {
        /// What is wrong with it.
        what: &'static str,
    },
    /// This way of reaching the ring does not exist on the OS this was built for.
    #[error("{what} is not available on this operating system")]
    Unsupported {
        /// The mechanism asked for.
        what: &'static str,
    },
    /// The header describes more memory than the segment holds.
    #[error("shared ring needs {needed} bytes but the segment has {actual}")]
    SegmentTooSmall {
        /// Bytes the header claims.
        needed: u64,
        /// Bytes actually mapped.
        actual: u64,
    },
}
