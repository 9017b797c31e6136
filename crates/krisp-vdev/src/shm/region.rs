//! The memory a ring lives in: a heap allocation (in-process use, tests), a POSIX
//! shared-memory mapping, or (made by `macos.rs` / `windows.rs`) the macOS ring daemon's
//! memory entry or the Windows driver's section. This, `ring.rs` and the OS modules' `sys`
//! parts are the only code with `unsafe`.

use super::ShmError;
use super::layout::{HEADER_BYTES, RawHeader};
use std::ptr::NonNull;

/// An owned, 128-byte-aligned, zero-initialised-on-creation block of memory of `len` bytes
/// that starts with a [`RawHeader`].
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    kind: Kind,
}

pub(crate) enum Kind {
    Heap(std::alloc::Layout),
    /// A POSIX `mmap` of a shm segment.
    #[cfg(unix)]
    Mapped,
    /// macOS: a `mach_vm_map` of the ring daemon's memory entry, whose send right we keep
    /// while mapped (`macos.rs`).
    #[cfg(target_os = "macos")]
    MachVm {
        entry: u32,
    },
    /// Windows: a `MapViewOfFile` view of the driver's section and the section handle
    /// (`windows.rs`).
    #[cfg(windows)]
    WinView {
        handle: windows_sys::Win32::Foundation::HANDLE,
    },
}

// SAFETY: the region is plain memory; all shared mutation goes through atomics or through the
// SPSC slot protocol in `ring.rs`, so moving or sharing the owner between threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// A zeroed heap block able to hold `len` bytes.
    pub(crate) fn heap(len: usize) -> Result<Self, ShmError> {
        if len < HEADER_BYTES as usize {
            return Err(ShmError::InvalidConfig {
                what: "region smaller than the header",
            });
        }
        let layout =
            std::alloc::Layout::from_size_align(len, 128).map_err(|_| ShmError::InvalidConfig {
                what: "region too large",
            })?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Ok(Self {
            ptr,
            len,
            kind: Kind::Heap(layout),
        })
    }

    /// Wraps a mapping made by one of the OS modules.
    ///
    /// # Safety
    /// `ptr` is page-aligned, readable and writable for `len >= HEADER_BYTES` bytes until
    /// `kind`'s release in `Drop`, and owned by the returned Region alone.
    #[cfg(any(target_os = "macos", windows))]
    pub(crate) unsafe fn from_mapping(ptr: NonNull<u8>, len: usize, kind: Kind) -> Self {
        debug_assert!(len >= HEADER_BYTES as usize);
        Self { ptr, len, kind }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn header(&self) -> &RawHeader {
        // SAFETY: the region is at least HEADER_BYTES long (checked at construction), aligned
        // to 128 (heap layout; mmap returns page-aligned memory), and lives as long as `self`.
        // RawHeader consists only of integer atomics, for which every bit pattern is valid, and
        // atomics may be shared and mutated through `&`.
        unsafe { &*self.ptr.as_ptr().cast::<RawHeader>() }
    }

    /// How many f32 samples fit after the header.
    pub(crate) fn sample_count(&self) -> usize {
        (self.len - HEADER_BYTES as usize) / 4
    }

    fn samples(&self) -> *mut f32 {
        // SAFETY: HEADER_BYTES <= len, so the offset stays inside the allocation, and it is a
        // multiple of 4 from a 128-aligned base.
        unsafe { self.ptr.as_ptr().add(HEADER_BYTES as usize).cast::<f32>() }
    }

    /// Copies `src` into the sample area starting at sample `at`.
    ///
    /// # Safety
    /// `at + src.len() <= self.sample_count()`, and no other thread of this process accesses
    /// those samples meanwhile (the SPSC protocol: the writer only touches free slots).
    pub(crate) unsafe fn copy_in(&self, at: usize, src: &[f32]) {
        debug_assert!(at + src.len() <= self.sample_count());
        // SAFETY: in bounds per the contract; `src` is a separate Rust slice so no overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.samples().add(at), src.len()) };
    }

    /// Copies samples starting at `at` into `dst`.
    ///
    /// # Safety
    /// `at + dst.len() <= self.sample_count()`, and the writer does not write those samples
    /// meanwhile (the SPSC protocol: the reader only touches published slots).
    pub(crate) unsafe fn copy_out(&self, at: usize, dst: &mut [f32]) {
        debug_assert!(at + dst.len() <= self.sample_count());
        // SAFETY: in bounds per the contract; `dst` is a separate Rust slice so no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.samples().add(at), dst.as_mut_ptr(), dst.len())
        };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        match self.kind {
            // SAFETY: allocated in `heap` with exactly this layout, freed once.
            Kind::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
            #[cfg(unix)]
            Kind::Mapped => {
                // SAFETY: ptr/len are the exact mapping returned by mmap in `os::map`, unmapped once.
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            }
            #[cfg(target_os = "macos")]
            // SAFETY: made by `macos::sys::map_entry` for this entry, released once.
            Kind::MachVm { entry } => unsafe {
                super::macos::sys::unmap(self.ptr, self.len, entry)
            },
            #[cfg(windows)]
            // SAFETY: made by `windows::sys::map_section` from this handle, released once.
            Kind::WinView { handle } => unsafe { super::windows::sys::unmap(self.ptr, handle) },
        }
    }
}

/// POSIX `shm_open` + `mmap`.
#[cfg(unix)]
pub(crate) mod os {
    use super::{Kind, Region};
    use crate::shm::ShmError;
    use std::ffi::CString;
    use std::ptr::NonNull;

    fn c_name(name: &str) -> Result<CString, ShmError> {
        let ok = name.len() > 1
            && name.len() <= 250
            && name.starts_with('/')
            && !name[1..].contains('/')
            && !name.contains('\0');
        if !ok {
            return Err(ShmError::InvalidName {
                name: name.to_owned(),
            });
        }
        CString::new(name).map_err(|_| ShmError::InvalidName {
            name: name.to_owned(),
        })
    }

    fn os_err(op: &'static str, name: &str) -> ShmError {
        ShmError::Os {
            op,
            name: name.to_owned(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// An open shm file descriptor, closed on drop.
    pub(crate) struct Fd(libc::c_int);

    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: we own this descriptor and close it once.
            unsafe { libc::close(self.0) };
        }
    }

    /// Opens `name`; with `create`, creates it (mode 0600) if absent.
    pub(crate) fn open(name: &str, create: bool, exclusive: bool) -> Result<Fd, ShmError> {
        let c = c_name(name)?;
        let mut flags = libc::O_RDWR;
        if create {
            flags |= libc::O_CREAT;
        }
        if exclusive {
            flags |= libc::O_EXCL;
        }
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe { libc::shm_open(c.as_ptr(), flags, 0o600 as libc::mode_t) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Err(ShmError::NotFound {
                    name: name.to_owned(),
                });
            }
            return Err(ShmError::Os {
                op: "shm_open",
                name: name.to_owned(),
                source: e,
            });
        }
        Ok(Fd(fd))
    }

    /// Current size of the segment.
    pub(crate) fn size(fd: &Fd, name: &str) -> Result<u64, ShmError> {
        // SAFETY: an all-zero `stat` is a valid value to be overwritten by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; `st` is a valid out-pointer.
        if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
            return Err(os_err("fstat", name));
        }
        Ok(st.st_size as u64)
    }

    /// Sets the segment's size (new segments read as zeroes).
    pub(crate) fn resize(fd: &Fd, name: &str, len: u64) -> Result<(), ShmError> {
        // SAFETY: fd is open.
        if unsafe { libc::ftruncate(fd.0, len as libc::off_t) } != 0 {
            return Err(os_err("ftruncate", name));
        }
        Ok(())
    }

    /// Maps `len` bytes of the segment shared and read-write.
    pub(crate) fn map(fd: &Fd, name: &str, len: usize) -> Result<Region, ShmError> {
        if len < crate::shm::layout::HEADER_BYTES as usize {
            return Err(ShmError::SegmentTooSmall {
                needed: u64::from(crate::shm::layout::HEADER_BYTES),
                actual: len as u64,
            });
        }
        // SAFETY: a fresh shared mapping of an open descriptor; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.0,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap", name));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| os_err("mmap", name))?;
        Ok(Region {
            ptr,
            len,
            kind: Kind::Mapped,
        })
    }

    /// Removes the name; existing mappings stay valid.
    pub(crate) fn unlink(name: &str) -> Result<(), ShmError> {
        let c = c_name(name)?;
        // SAFETY: `c` is a valid NUL-terminated string.
        if unsafe { libc::shm_unlink(c.as_ptr()) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Err(ShmError::NotFound {
                    name: name.to_owned(),
                });
            }
            return Err(ShmError::Os {
                op: "shm_unlink",
                name: name.to_owned(),
                source: e,
            });
        }
        Ok(())
    }
}
