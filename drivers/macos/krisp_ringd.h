/*
 * krisp_ringd.h — the Mach messages between the ring daemon (krisp-ringd, a LaunchDaemon) and
 * its two clients: the "Krisp Microphone" driver inside coreaudiod (reader) and the Krisp app
 * (writer). drivers/PROTOCOL.md, "macOS: getting the segment", describes the handshake.
 *
 * Both sides compile these structs from this one header, so their layout (including the
 * padding before `size`) is the same by construction. The Rust app mirrors them in
 * crates/krisp-vdev/src/shm/macos.rs, which asserts the sizes and offsets (never compiled
 * for macOS yet: see drivers/README.md).
 */
#ifndef KRISP_RINGD_H
#define KRISP_RINGD_H

#include <mach/message.h>
#include <stdint.h>

/* The launchd MachServices name; the driver lists it in Info.plist under
   AudioServerPlugIn_MachServices (Technical Q&A QA1811), or coreaudiod's sandbox denies the
   lookup. */
#define KRISP_RINGD_SERVICE "com.krisp.audio.ringd"

/* Request: a bare header with this id and a send-once reply port (msgh_local_port). */
#define KRISP_RINGD_MSG_GET_RING 0x4B520001u
/* Replies carry the request id + 100, as MIG does. */
#define KRISP_RINGD_MSG_REPLY (KRISP_RINGD_MSG_GET_RING + 100u)

/* The memory entry's size: the largest ring the protocol allows at 48 kHz that the app uses
   (8192 frames x 8 channels x 4 bytes) plus the 512-byte header, rounded up to 16 KiB pages.
   The app writes a smaller ring into it; readers validate total_bytes <= the mapped size. */
#define KRISP_RINGD_BYTES (512u * 1024u)

/* Why a request was refused (in krisp_ringd_refusal.code). */
enum {
    KRISP_RINGD_REFUSED_CLIENT = 1, /* neither coreaudiod nor a correctly signed Krisp app */
    KRISP_RINGD_BAD_REQUEST = 2,    /* unknown id, no reply port, unexpected body */
};

/* Success: one send right to the memory entry (mach_make_memory_entry_64) and its size. */
typedef struct {
    mach_msg_header_t header; /* MACH_MSGH_BITS_COMPLEX set */
    mach_msg_body_t body;     /* msgh_descriptor_count = 1 */
    mach_msg_port_descriptor_t memory;
    uint64_t size;
} krisp_ringd_reply;

/* Refusal: a simple (non-complex) message. Clients treat anything but a complex reply with
   one port descriptor as "no ring"; the daemon logs the reason. */
typedef struct {
    mach_msg_header_t header;
    int32_t code;
} krisp_ringd_refusal;

#endif
