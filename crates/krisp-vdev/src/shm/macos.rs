//! macOS: the app's side of the ring daemon handshake (`drivers/PROTOCOL.md`, "macOS: the ring
//! daemon"; the daemon is `drivers/macos/krisp_ringd.c`, its messages `krisp_ringd.h`).
//!
//! 1. `bootstrap_look_up("com.krisp.audio.ringd")` in the bootstrap namespace;
//! 2. send a bare header, id `GET_RING`, with a send-once reply right;
//! 3. receive a complex reply with one port descriptor (a send right to the daemon's memory
//!    entry) and its size, or a simple refusal with a code;
//! 4. `mach_vm_map` the entry shared and read-write; keep the send right while mapped (a task
//!    holds one name per port, so the name identifies the memory object, PROTOCOL.md step 6).
//!
//! The message layouts, the reply checks and the error texts are portable and tested on
//! Linux. Only `sys` calls the OS; it is declared by hand from the SDK headers (seven
//! functions and two globals) rather than through a crate, and **has never been compiled**:
//! there is no macOS toolchain here (`drivers/README.md`).

// Elsewhere only the tests use the portable part; `sys` uses it on macOS.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use super::ShmError;
use super::layout::HEADER_BYTES;

/// `KRISP_RINGD_MSG_GET_RING`.
pub(crate) const MSG_GET_RING: i32 = 0x4B52_0001;
/// `KRISP_RINGD_MSG_REPLY`: the request id + 100, as MIG does.
pub(crate) const MSG_REPLY: i32 = MSG_GET_RING + 100;
/// `KRISP_RINGD_REFUSED_CLIENT`.
const REFUSED_CLIENT: i32 = 1;
/// `KRISP_RINGD_BAD_REQUEST`.
const BAD_REQUEST: i32 = 2;
/// Largest memory entry the app maps (the driver uses the same bound).
const MAX_RING_BYTES: u64 = 64 << 20;

// <mach/message.h>
pub(crate) const MACH_MSGH_BITS_COMPLEX: u32 = 0x8000_0000;
pub(crate) const MACH_MSG_TYPE_COPY_SEND: u32 = 19;
pub(crate) const MACH_MSG_TYPE_MAKE_SEND_ONCE: u32 = 21;
/// What a receiver finds in a port descriptor that carried a send right
/// (`MACH_MSG_TYPE_PORT_SEND`, = `MACH_MSG_TYPE_MOVE_SEND`).
const MACH_MSG_TYPE_PORT_SEND: u8 = 17;
const MACH_MSG_PORT_DESCRIPTOR: u8 = 0;
pub(crate) const MACH_SEND_MSG: i32 = 0x1;
pub(crate) const MACH_RCV_MSG: i32 = 0x2;
pub(crate) const MACH_SEND_TIMEOUT: i32 = 0x10;
pub(crate) const MACH_RCV_TIMEOUT: i32 = 0x100;
const MACH_SEND_INVALID_DEST: i32 = 0x1000_0003;
const MACH_SEND_TIMED_OUT: i32 = 0x1000_0004;
const MACH_RCV_TIMED_OUT: i32 = 0x1000_4003;
const MACH_RCV_TOO_LARGE: i32 = 0x1000_4004;
// <servers/bootstrap.h>
const BOOTSTRAP_NOT_PRIVILEGED: i32 = 1100;
const BOOTSTRAP_UNKNOWN_SERVICE: i32 = 1102;
// <mach/kern_return.h>
pub(crate) const KERN_SUCCESS: i32 = 0;
const KERN_INVALID_ARGUMENT: i32 = 4;
const KERN_NO_SPACE: i32 = 3;
const KERN_INVALID_RIGHT: i32 = 17;
// <mach/port.h>
const MACH_PORT_NULL: u32 = 0;
const MACH_PORT_DEAD: u32 = !0;

/// `mach_msg_header_t` (<mach/message.h>): six 32-bit fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MsgHeader {
    pub bits: u32,
    pub size: u32,
    pub remote_port: u32,
    pub local_port: u32,
    pub voucher_port: u32,
    pub id: i32,
}

/// `mach_msg_port_descriptor_t` as user space on arm64/x86_64 sees it: name, pad1, then the
/// bit-fields `pad2:16, disposition:8, type:8` of one 32-bit word, little-endian.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PortDescriptor {
    pub name: u32,
    pub pad1: u32,
    pub pad2: u16,
    pub disposition: u8,
    pub kind: u8,
}

/// `krisp_ringd_reply`: header, `mach_msg_body_t`, one port descriptor, `uint64_t size`.
/// The size sits at offset 40, already 8-aligned, so C and Rust agree without packing.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RingReply {
    pub header: MsgHeader,
    /// `msgh_descriptor_count`; in a refusal (`krisp_ringd_refusal`) this word is its `code`.
    pub body: u32,
    pub memory: PortDescriptor,
    pub size: u64,
}

/// What the app receives into: the largest expected reply plus the default trailer
/// (`mach_msg_trailer_t`, 8 bytes), as the driver does.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReplyBuffer {
    pub reply: RingReply,
    pub trailer: [u32; 2],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<MsgHeader>() == 24);
    assert!(size_of::<PortDescriptor>() == 12);
    assert!(offset_of!(RingReply, body) == 24);
    assert!(offset_of!(RingReply, memory) == 28);
    assert!(offset_of!(RingReply, size) == 40);
    assert!(size_of::<RingReply>() == 48);
    assert!(size_of::<ReplyBuffer>() == 56);
};

/// The request: a bare header asking for the ring, with a send-once right made from
/// `reply_port` for the answer (`MACH_MSGH_BITS(COPY_SEND, MAKE_SEND_ONCE)`).
pub(crate) fn request(service: u32, reply_port: u32) -> MsgHeader {
    MsgHeader {
        bits: MACH_MSG_TYPE_COPY_SEND | (MACH_MSG_TYPE_MAKE_SEND_ONCE << 8),
        size: core::mem::size_of::<MsgHeader>() as u32,
        remote_port: service,
        local_port: reply_port,
        voucher_port: MACH_PORT_NULL,
        id: MSG_GET_RING,
    }
}

/// The memory-entry send right a received reply carries, if it carries one: the caller owns
/// it and must release it whether or not the reply is accepted.
pub(crate) fn received_right(buf: &ReplyBuffer) -> Option<u32> {
    let r = &buf.reply;
    let port = r.header.bits & MACH_MSGH_BITS_COMPLEX != 0
        && r.body >= 1
        && r.memory.kind == MACH_MSG_PORT_DESCRIPTOR
        && r.memory.name != MACH_PORT_NULL
        && r.memory.name != MACH_PORT_DEAD;
    port.then_some(r.memory.name)
}

/// Judges the daemon's answer: `(memory entry, its size)` or why there is no ring.
pub(crate) fn check_reply(buf: &ReplyBuffer) -> Result<(u32, u64), ShmError> {
    let r = &buf.reply;
    if r.header.id != MSG_REPLY {
        return Err(ShmError::BadDaemonReply {
            what: "unexpected message id",
        });
    }
    if r.header.bits & MACH_MSGH_BITS_COMPLEX == 0 {
        // krisp_ringd_refusal: header + int32 code; the daemon logs the reason.
        return Err(match r.body as i32 {
            REFUSED_CLIENT => ShmError::AccessDenied {
                object: format!("the ring of Mach service {}", super::MACOS_RING_SERVICE),
                advice: "the ring daemon hands it only to coreaudiod and to the Krisp app \
                         signed with the team id it was built with (make ringd TEAM_ID=...); \
                         `log stream --predicate 'subsystem == \"com.krisp.audio.ringd\"'` \
                         shows the refusal",
            },
            BAD_REQUEST => ShmError::BadDaemonReply {
                what: "the daemon called our request malformed (app and daemon versions differ?)",
            },
            _ => ShmError::BadDaemonReply {
                what: "a refusal with an unknown code",
            },
        });
    }
    if (r.header.size as usize) < core::mem::size_of::<RingReply>() || r.body != 1 {
        return Err(ShmError::BadDaemonReply {
            what: "not one port descriptor and a size",
        });
    }
    let Some(entry) = received_right(buf) else {
        return Err(ShmError::BadDaemonReply {
            what: "no memory-entry port in the descriptor",
        });
    };
    if r.memory.disposition != MACH_MSG_TYPE_PORT_SEND {
        return Err(ShmError::BadDaemonReply {
            what: "the descriptor does not carry a send right",
        });
    }
    if r.size < u64::from(HEADER_BYTES) || r.size > MAX_RING_BYTES {
        return Err(ShmError::BadDaemonReply {
            what: "memory size out of range",
        });
    }
    Ok((entry, r.size))
}

/// What a failed Mach call means for the user.
pub(crate) fn mach_error(op: &'static str, code: i32, service: &str) -> ShmError {
    let not_running = || ShmError::DriverNotInstalled {
        object: format!("Mach service {service}"),
        advice: "the Krisp ring daemon is not installed or not running: install the Krisp \
                 Microphone package (or drivers/macos: sudo make install-ringd); \
                 `sudo launchctl print system/com.krisp.audio.ringd` shows its state",
    };
    match code {
        BOOTSTRAP_UNKNOWN_SERVICE | MACH_SEND_INVALID_DEST => not_running(),
        BOOTSTRAP_NOT_PRIVILEGED => ShmError::AccessDenied {
            object: format!("Mach service {service}"),
            advice: "the bootstrap server refused the lookup (sandboxed app without the \
                     service in its entitlements?)",
        },
        _ => ShmError::Mach {
            op,
            code,
            meaning: match code {
                MACH_SEND_TIMED_OUT => "the ring daemon did not take the request in time",
                MACH_RCV_TIMED_OUT => "the ring daemon did not answer in time",
                MACH_RCV_TOO_LARGE => "the ring daemon's answer is larger than any it sends",
                KERN_INVALID_ARGUMENT => "invalid argument",
                KERN_NO_SPACE => "no room in the address space or port space",
                KERN_INVALID_RIGHT => "not a valid port right",
                _ => "see <mach/kern_return.h>, <mach/message.h>, <servers/bootstrap.h>",
            },
        },
    }
}

/// The OS calls. Declared from the macOS SDK headers named on each; never compiled yet.
#[cfg(target_os = "macos")]
pub(crate) mod sys {
    use super::*;
    use crate::shm::region::{Kind, Region};
    use std::ffi::{CString, c_char, c_int, c_uint};
    use std::ptr::NonNull;

    type KernReturn = c_int;
    type MachPort = c_uint;

    // How long the request may wait to be queued, and the answer to come (the driver's values).
    const SEND_TIMEOUT_MS: c_uint = 100;
    const RECEIVE_TIMEOUT_MS: c_uint = 500;
    // <mach/port.h>, <mach/vm_statistics.h>, <mach/vm_prot.h>, <mach/vm_inherit.h>
    const MACH_PORT_RIGHT_RECEIVE: c_uint = 1;
    const VM_FLAGS_ANYWHERE: c_int = 0x1;
    const VM_PROT_READ: c_int = 0x1;
    const VM_PROT_WRITE: c_int = 0x2;
    const VM_INHERIT_NONE: c_uint = 2;

    unsafe extern "C" {
        // <mach/mach_init.h>: `mach_task_self()` is a macro reading this global.
        static mach_task_self_: MachPort;
        // <servers/bootstrap.h>: the task's bootstrap port, set up by libSystem.
        static bootstrap_port: MachPort;
        // <servers/bootstrap.h>; `name_t` is `char[128]`, passed as a pointer.
        fn bootstrap_look_up(bp: MachPort, name: *const c_char, sp: *mut MachPort) -> KernReturn;
        // <mach/message.h>
        fn mach_msg(
            msg: *mut MsgHeader,
            option: c_int,
            send_size: u32,
            rcv_size: u32,
            rcv_name: MachPort,
            timeout: u32,
            notify: MachPort,
        ) -> KernReturn;
        // <mach/mach_port.h>
        fn mach_port_allocate(task: MachPort, right: c_uint, name: *mut MachPort) -> KernReturn;
        fn mach_port_mod_refs(
            task: MachPort,
            name: MachPort,
            right: c_uint,
            delta: c_int,
        ) -> KernReturn;
        fn mach_port_deallocate(task: MachPort, name: MachPort) -> KernReturn;
        // <mach/mach_vm.h>
        fn mach_vm_map(
            target: MachPort,
            address: *mut u64,
            size: u64,
            mask: u64,
            flags: c_int,
            object: MachPort,
            offset: u64,
            copy: c_uint, // boolean_t
            cur_protection: c_int,
            max_protection: c_int,
            inheritance: c_uint,
        ) -> KernReturn;
        fn mach_vm_deallocate(target: MachPort, address: u64, size: u64) -> KernReturn;
    }

    fn task() -> MachPort {
        // SAFETY: a plain read of a global libSystem initialises before main.
        unsafe { mach_task_self_ }
    }

    /// Asks the daemon behind `service` for the ring and maps it.
    pub(crate) fn map_daemon_ring(service: &str) -> Result<Region, ShmError> {
        let c_service = CString::new(service).map_err(|_| ShmError::InvalidName {
            name: service.to_owned(),
        })?;
        let mut service_port: MachPort = 0;
        // SAFETY: valid NUL-terminated name and out-pointer; bootstrap_port is initialised.
        let kr =
            unsafe { bootstrap_look_up(bootstrap_port, c_service.as_ptr(), &mut service_port) };
        if kr != KERN_SUCCESS {
            return Err(mach_error("bootstrap_look_up", kr, service));
        }
        let result = ask(service_port, service);
        // SAFETY: we own this send right (from bootstrap_look_up) and release it once.
        unsafe { mach_port_deallocate(task(), service_port) };
        let (entry, size) = result?;
        map_entry(entry, size, service)
    }

    /// One request/reply exchange on a fresh receive right.
    fn ask(service_port: MachPort, service: &str) -> Result<(MachPort, u64), ShmError> {
        let mut reply_port: MachPort = 0;
        // SAFETY: valid out-pointer.
        let kr = unsafe { mach_port_allocate(task(), MACH_PORT_RIGHT_RECEIVE, &mut reply_port) };
        if kr != KERN_SUCCESS {
            return Err(mach_error("mach_port_allocate", kr, service));
        }
        let mut req = request(service_port, reply_port);
        // SAFETY: `req` is a complete, correctly sized message header; the send copies it.
        let mut kr = unsafe {
            mach_msg(
                &mut req,
                MACH_SEND_MSG | MACH_SEND_TIMEOUT,
                req.size,
                0,
                0,
                SEND_TIMEOUT_MS,
                0,
            )
        };
        let mut buf = ReplyBuffer::default();
        if kr == KERN_SUCCESS {
            // SAFETY: the pointer covers all of `buf` (not only its header), writable for its
            // full size, which is what we pass as the receive limit; the kernel writes at most that much (else MACH_RCV_TOO_LARGE,
            // and without MACH_RCV_LARGE it destroys the message itself).
            kr = unsafe {
                mach_msg(
                    (&raw mut buf).cast::<MsgHeader>(),
                    MACH_RCV_MSG | MACH_RCV_TIMEOUT,
                    0,
                    core::mem::size_of::<ReplyBuffer>() as u32,
                    reply_port,
                    RECEIVE_TIMEOUT_MS,
                    0,
                )
            };
        }
        // Destroying the receive right also destroys an unsent send-once right made from it.
        // SAFETY: we own the receive right and drop its only reference.
        unsafe { mach_port_mod_refs(task(), reply_port, MACH_PORT_RIGHT_RECEIVE, -1) };
        if kr != KERN_SUCCESS {
            return Err(mach_error("mach_msg", kr, service));
        }
        check_reply(&buf).inspect_err(|_| {
            if let Some(right) = received_right(&buf) {
                // SAFETY: the reply moved this send right to us; release it once.
                unsafe { mach_port_deallocate(task(), right) };
            }
        })
    }

    /// Maps the memory entry shared and read-write. Apple, mach_vm_map: `copy` FALSE maps the
    /// object itself (shared), not a copy-on-write snapshot; VM_INHERIT_NONE keeps it out of
    /// children.
    fn map_entry(entry: MachPort, size: u64, service: &str) -> Result<Region, ShmError> {
        let release = || {
            // SAFETY: we own this send right (from the reply) and release it once.
            unsafe { mach_port_deallocate(task(), entry) };
        };
        let Ok(len) = usize::try_from(size) else {
            release();
            return Err(ShmError::BadDaemonReply {
                what: "memory size out of range",
            });
        };
        let mut addr: u64 = 0;
        let rw = VM_PROT_READ | VM_PROT_WRITE;
        // SAFETY: a fresh mapping anywhere in our own address space of an entry we hold.
        let kr = unsafe {
            mach_vm_map(
                task(),
                &mut addr,
                size,
                0,
                VM_FLAGS_ANYWHERE,
                entry,
                0,
                0,
                rw,
                rw,
                VM_INHERIT_NONE,
            )
        };
        let ptr = NonNull::new(addr as usize as *mut u8);
        match (kr, ptr) {
            (KERN_SUCCESS, Some(ptr)) => {
                // SAFETY: `ptr` is a page-aligned, readable and writable mapping of `len`
                // bytes, owned by the Region from here on and released in `unmap`.
                Ok(unsafe { Region::from_mapping(ptr, len, Kind::MachVm { entry }) })
            }
            _ => {
                release();
                Err(mach_error("mach_vm_map", kr, service))
            }
        }
    }

    /// Undoes `map_entry`: unmaps and releases the entry's send right.
    ///
    /// # Safety
    /// `ptr`/`len` are a mapping made by `map_entry` for `entry`, not used afterwards.
    pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize, entry: u32) {
        // SAFETY: per the contract, our own mapping and our own send right, released once.
        unsafe {
            mach_vm_deallocate(task(), ptr.as_ptr() as usize as u64, len as u64);
            mach_port_deallocate(task(), entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as the daemon builds it (krisp_ringd.c, krisp_serve_one) after the kernel
    /// turned its COPY_SEND into a received send right.
    fn ring_reply() -> ReplyBuffer {
        ReplyBuffer {
            reply: RingReply {
                header: MsgHeader {
                    bits: MACH_MSGH_BITS_COMPLEX | 18, // remote: the send-once right it used
                    size: 48,
                    id: MSG_REPLY,
                    ..Default::default()
                },
                body: 1,
                memory: PortDescriptor {
                    name: 0x1503,
                    disposition: MACH_MSG_TYPE_PORT_SEND,
                    kind: MACH_MSG_PORT_DESCRIPTOR,
                    ..Default::default()
                },
                size: 512 * 1024,
            },
            trailer: [0, 8],
        }
    }

    fn refusal(code: i32) -> ReplyBuffer {
        let mut b = ReplyBuffer::default();
        b.reply.header = MsgHeader {
            bits: 18,
            size: 28,
            id: MSG_REPLY,
            ..Default::default()
        };
        b.reply.body = code as u32;
        b
    }

    #[test]
    fn the_request_asks_for_the_ring_with_a_send_once_reply_right() {
        let h = request(0x707, 0x903);
        assert_eq!(h.bits, 19 | (21 << 8));
        assert_eq!((h.size, h.id), (24, 0x4B52_0001));
        assert_eq!((h.remote_port, h.local_port), (0x707, 0x903));
    }

    #[test]
    fn a_ring_reply_yields_the_entry_and_its_size() {
        let b = ring_reply();
        assert_eq!(check_reply(&b).unwrap(), (0x1503, 512 * 1024));
        assert_eq!(received_right(&b), Some(0x1503));
    }

    #[test]
    fn refusals_say_why_and_carry_no_right() {
        let e = check_reply(&refusal(1)).unwrap_err();
        assert!(matches!(e, ShmError::AccessDenied { .. }), "{e}");
        assert!(e.to_string().contains("com.krisp.audio.ringd"), "{e}");
        assert!(e.to_string().contains("TEAM_ID"), "{e}");
        assert!(matches!(
            check_reply(&refusal(2)),
            Err(ShmError::BadDaemonReply { .. })
        ));
        assert!(matches!(
            check_reply(&refusal(99)),
            Err(ShmError::BadDaemonReply { .. })
        ));
        assert_eq!(received_right(&refusal(1)), None);
    }

    #[test]
    fn malformed_replies_are_refused_but_a_right_they_carry_is_reported_for_release() {
        let mut b = ring_reply();
        b.reply.size = 100; // smaller than the ring header
        assert!(matches!(
            check_reply(&b),
            Err(ShmError::BadDaemonReply { .. })
        ));
        assert_eq!(received_right(&b), Some(0x1503));
        b.reply.size = 1 << 40;
        assert!(check_reply(&b).is_err());

        let mut b = ring_reply();
        b.reply.header.id = MSG_GET_RING; // our own request echoed back
        assert!(check_reply(&b).is_err());
        let mut b = ring_reply();
        b.reply.memory.disposition = 18; // a send-once right is not a memory entry
        assert!(check_reply(&b).is_err());
        let mut b = ring_reply();
        b.reply.memory.name = MACH_PORT_DEAD;
        assert!(check_reply(&b).is_err());
        assert_eq!(received_right(&b), None);
        let mut b = ring_reply();
        b.reply.header.size = 40; // no room for the size field
        assert!(check_reply(&b).is_err());
    }

    #[test]
    fn mach_errors_tell_the_user_what_to_do() {
        let svc = "com.krisp.audio.ringd";
        let e = mach_error("bootstrap_look_up", BOOTSTRAP_UNKNOWN_SERVICE, svc);
        assert!(matches!(e, ShmError::DriverNotInstalled { .. }), "{e}");
        assert!(e.to_string().contains("Mach service com.krisp.audio.ringd"));
        assert!(e.to_string().contains("not installed or not running"));
        assert!(matches!(
            mach_error("mach_msg", MACH_SEND_INVALID_DEST, svc),
            ShmError::DriverNotInstalled { .. }
        ));
        let e = mach_error("mach_msg", MACH_RCV_TIMED_OUT, svc);
        assert!(e.to_string().contains("did not answer in time"), "{e}");
        assert!(e.to_string().contains("0x10004003"), "{e}");
        assert!(matches!(
            mach_error("bootstrap_look_up", BOOTSTRAP_NOT_PRIVILEGED, svc),
            ShmError::AccessDenied { .. }
        ));
    }
}
