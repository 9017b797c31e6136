//! Windows: the app opens the section object the driver created (`drivers/PROTOCOL.md`,
//! "Windows: the section object"; the driver is `drivers/windows/KrispMic.cpp`).
//!
//! `OpenFileMappingW(FILE_MAP_READ | FILE_MAP_WRITE, FALSE, L"Global\\KrispMicRing")`, then
//! `MapViewOfFile(h, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, 0)` (0 bytes = the whole section),
//! and `VirtualQuery` for the view's size, since the ring's header is validated against the
//! memory actually mapped. The app does not create the section: creating a `Global\` object
//! from a user session needs `SeCreateGlobalPrivilege` (Microsoft, CreateFileMappingW,
//! Remarks), opening one is checked only against its DACL (OpenFileMappingW; "Kernel Object
//! Namespaces").
//!
//! The name handling and the error mapping are portable and tested on Linux. Only `sys` calls
//! the OS, through `windows-sys`; it **has never been compiled**: there is no Windows
//! toolchain here (`drivers/README.md`).

// Elsewhere only the tests use the portable part; `sys` uses it on Windows.
#![cfg_attr(not(windows), allow(dead_code))]

use super::ShmError;
use super::layout::HEADER_BYTES;

// System Error Codes (Microsoft Learn, "System Error Codes (0-499)").
const ERROR_FILE_NOT_FOUND: u32 = 2;
const ERROR_ACCESS_DENIED: u32 = 5;

/// Object names are at most MAX_PATH characters (CreateFileMappingW, lpName).
const MAX_NAME_CHARS: usize = 260;

/// `name` as the NUL-terminated UTF-16 string the wide API wants.
pub(crate) fn wide_name(name: &str) -> Result<Vec<u16>, ShmError> {
    let mut w: Vec<u16> = name.encode_utf16().collect();
    if w.is_empty() || w.len() > MAX_NAME_CHARS || w.contains(&0) {
        return Err(ShmError::InvalidName {
            name: name.to_owned(),
        });
    }
    w.push(0);
    Ok(w)
}

/// What a failed `OpenFileMappingW` (its `GetLastError`) means for the user.
pub(crate) fn open_error(code: u32, name: &str) -> ShmError {
    match code {
        ERROR_FILE_NOT_FOUND => ShmError::DriverNotInstalled {
            object: format!("section {name}"),
            advice: "the Krisp Microphone driver is not installed or not started (it creates \
                     the section when its device starts): install it, then check Device \
                     Manager > Sound, video and game controllers > Krisp Microphone",
        },
        ERROR_ACCESS_DENIED => ShmError::AccessDenied {
            object: format!("section {name}"),
            advice: "its security descriptor does not let interactive users map it \
                     (the driver grants S-1-5-4 SECTION_MAP_READ | SECTION_MAP_WRITE): \
                     update the Krisp Microphone driver",
        },
        other => os_error("OpenFileMappingW", other, name),
    }
}

/// A failed call as an `Os` error with the OS's own text (on Windows, `from_raw_os_error`
/// takes `GetLastError` codes).
pub(crate) fn os_error(op: &'static str, code: u32, name: &str) -> ShmError {
    ShmError::Os {
        op,
        name: name.to_owned(),
        source: std::io::Error::from_raw_os_error(code as i32),
    }
}

/// The view must at least hold the ring header; the header's own size claim is checked
/// against this length when the writer publishes and whenever a reader validates.
pub(crate) fn check_view_len(len: usize) -> Result<usize, ShmError> {
    if len < HEADER_BYTES as usize {
        return Err(ShmError::SegmentTooSmall {
            needed: u64::from(HEADER_BYTES),
            actual: len as u64,
        });
    }
    Ok(len)
}

/// The OS calls, through `windows-sys`. Never compiled yet.
#[cfg(windows)]
pub(crate) mod sys {
    use super::*;
    use crate::shm::region::{Kind, Region};
    use std::ptr::NonNull;
    use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, HANDLE};
    use windows_sys::Win32::System::Memory::{
        FILE_MAP_READ, FILE_MAP_WRITE, MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS,
        MapViewOfFile, OpenFileMappingW, UnmapViewOfFile, VirtualQuery,
    };

    /// Opens and maps the driver's section `name`, read-write.
    pub(crate) fn map_section(name: &str) -> Result<Region, ShmError> {
        let wide = wide_name(name)?;
        // SAFETY: `wide` is NUL-terminated and outlives the call. FALSE: not inherited.
        let handle = unsafe { OpenFileMappingW(FILE_MAP_READ | FILE_MAP_WRITE, 0, wide.as_ptr()) };
        if handle.is_null() {
            // SAFETY: no preconditions; read right after the failing call.
            return Err(open_error(unsafe { GetLastError() }, name));
        }
        // SAFETY: a valid section handle; offset 0 and length 0 map the whole section.
        let view = unsafe { MapViewOfFile(handle, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, 0) };
        let Some(ptr) = NonNull::new(view.Value.cast::<u8>()) else {
            // SAFETY: no preconditions; read before CloseHandle can change it.
            let code = unsafe { GetLastError() };
            // SAFETY: our handle, closed once.
            unsafe { CloseHandle(handle) };
            return Err(os_error("MapViewOfFile", code, name));
        };
        // The view's size: VirtualQuery's RegionSize is the run of pages from the base with
        // the same attributes, i.e. the whole view (rounded up to pages, which are mapped).
        // SAFETY: an all-zero MEMORY_BASIC_INFORMATION is a valid out-buffer.
        let mut info: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: `view` is our mapping; `info` is writable for the size passed.
        let got = unsafe {
            VirtualQuery(
                view.Value,
                &mut info,
                std::mem::size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        let len = if got == 0 { 0 } else { info.RegionSize };
        match check_view_len(len) {
            // SAFETY: `ptr` is a page-aligned read-write view of `len` bytes, owned by the
            // Region from here on and released in `unmap`.
            Ok(len) => Ok(unsafe { Region::from_mapping(ptr, len, Kind::WinView { handle }) }),
            Err(e) => {
                // SAFETY: our view and handle, released once.
                unsafe { unmap(ptr, handle) };
                Err(e)
            }
        }
    }

    /// Undoes `map_section`.
    ///
    /// # Safety
    /// `ptr` is a view made by `map_section` of `handle`, not used afterwards.
    pub(crate) unsafe fn unmap(ptr: NonNull<u8>, handle: HANDLE) {
        // SAFETY: per the contract; each released once.
        unsafe {
            UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
                Value: ptr.as_ptr().cast(),
            });
            CloseHandle(handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_nul_terminated_utf16() {
        let w = wide_name(r"Global\KrispMicRing").unwrap();
        assert_eq!(w.len(), 20);
        assert_eq!(w[..7], "Global\\".encode_utf16().collect::<Vec<_>>()[..]);
        assert_eq!(w.last(), Some(&0));
        for bad in ["", "a\0b", &"x".repeat(261)] {
            assert!(
                matches!(wide_name(bad), Err(ShmError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_missing_section_means_the_driver_is_not_installed() {
        let e = open_error(ERROR_FILE_NOT_FOUND, r"Global\KrispMicRing");
        assert!(matches!(e, ShmError::DriverNotInstalled { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(r"section Global\KrispMicRing does not exist"),
            "{text}"
        );
        assert!(
            text.contains("driver is not installed or not started"),
            "{text}"
        );
    }

    #[test]
    fn access_denied_points_at_the_sections_dacl() {
        let e = open_error(ERROR_ACCESS_DENIED, r"Global\KrispMicRing");
        assert!(matches!(e, ShmError::AccessDenied { .. }), "{e}");
        assert!(e.to_string().contains("S-1-5-4"), "{e}");
    }

    #[test]
    fn other_failures_keep_the_call_and_the_code() {
        // ERROR_INVALID_HANDLE, ERROR_NOT_ENOUGH_MEMORY
        for code in [6, 8] {
            let e = open_error(code, "Global\\x");
            match e {
                ShmError::Os { op, source, .. } => {
                    assert_eq!(op, "OpenFileMappingW");
                    assert_eq!(source.raw_os_error(), Some(code as i32));
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn a_view_smaller_than_the_header_is_refused() {
        assert!(matches!(
            check_view_len(511),
            Err(ShmError::SegmentTooSmall {
                needed: 512,
                actual: 511
            })
        ));
        assert_eq!(check_view_len(36_864).unwrap(), 36_864);
    }
}
