/*
 * krisp-ringd — owns the memory of the "Krisp Microphone" shared ring on macOS and hands it to
 * the driver (inside coreaudiod) and to the Krisp app. drivers/PROTOCOL.md, "macOS: getting
 * the segment", is the specification; krisp_ringd.h holds the messages.
 *
 * Why a daemon: coreaudiod runs AudioServerPlugIns sandboxed; a plug-in may talk to other
 * processes only through the Mach services its Info.plist lists under
 * AudioServerPlugIn_MachServices (Apple Technical Q&A QA1811), and it cannot open a file or
 * POSIX segment the user's app made. coreaudiod lives in the system bootstrap namespace, so
 * the service must be a LaunchDaemon (a user LaunchAgent's services are invisible to it).
 *
 * What it does, and nothing else:
 *   1. creates one memory object of KRISP_RINGD_BYTES, zero-filled, and keeps a send right to
 *      its memory entry for its whole life (it never maps or touches the memory itself);
 *   2. checks in its Mach service with launchd;
 *   3. answers each KRISP_RINGD_MSG_GET_RING request from an allowed client with a copy of
 *      that send right; the client maps it with mach_vm_map (shared, read-write).
 * The ring's content (header, indices, samples) is entirely the app's and the driver's
 * business, exactly as on Linux. The daemon must not exit: a new instance would create a
 * new memory object (see PROTOCOL.md for how the app and driver move over if it does).
 *
 * Allowed clients, judged by the audit token the kernel attaches to each message (never by
 * pid, which can be reused between the message and the check):
 *   - coreaudiod / Core Audio's driver-service helper: effective uid of `_coreaudiod` and code
 *     signed by Apple;
 *   - the Krisp app: code that satisfies KRISP_APP_REQUIREMENT (its designated requirement).
 * Anyone else could read the user's voice or inject audio into the microphone, so is refused.
 * `make ringd RINGD_ANY_CLIENT=1` builds a development daemon that skips the app check.
 *
 * Build: `make ringd` (Xcode command-line tools). Not compiled or run yet: there is no Mac here.
 */

#include <CoreFoundation/CoreFoundation.h>
#include <Security/Security.h>
#include <bsm/libbsm.h>
#include <mach/mach.h>
#include <mach/mach_error.h>
#include <mach/memory_object_types.h>
#include <os/log.h>
#include <pwd.h>
#include <servers/bootstrap.h>
#include <stdbool.h>
#include <stdlib.h>

#include "krisp_ringd.h"

/* The shipping app's designated requirement: its bundle id, signed with a Developer ID of our
   team. `make ringd TEAM_ID=ABCDE12345` passes the real team id; the default is a placeholder
   that no real certificate carries, so an unconfigured build refuses every app. */
#ifndef KRISP_TEAM_ID
#define KRISP_TEAM_ID "NOTEAMSET"
#endif
#define KRISP_APP_REQUIREMENT \
    "identifier \"com.krisp.app\" and anchor apple generic and certificate leaf[subject.OU] = \"" KRISP_TEAM_ID "\""
#ifndef KRISP_RINGD_ANY_CLIENT
#define KRISP_RINGD_ANY_CLIENT 0
#endif

static os_log_t gLog;
static mach_port_t gEntry = MACH_PORT_NULL; /* send right to the ring's memory entry */
static uint64_t gEntrySize;
static uid_t gCoreAudioUid;
static SecRequirementRef gAppRequirement;
static SecRequirementRef gAppleRequirement;

/* A received request: header, room for a small unexpected body, and the audit trailer.
   Without MACH_RCV_LARGE the kernel drops (and reports) anything larger. */
typedef struct {
    mach_msg_header_t header;
    uint8_t body[128];
    mach_msg_audit_trailer_t trailer;
} krisp_request_buffer;

/* Does the process behind `token` satisfy `req`? Security framework, by audit token:
   SecCodeCopyGuestWithAttributes with kSecGuestAttributeAudit (Apple: "Asks a code host to
   identify one of its guests given the type and value of specific attributes"; host NULL = the
   kernel, the root of trust) then SecCodeCheckValidity against the requirement. */
static bool krisp_code_satisfies(const audit_token_t *token, SecRequirementRef req) {
    CFDataRef data = CFDataCreate(NULL, (const UInt8 *)token, sizeof(*token));
    if (!data) return false;
    const void *keys[] = {kSecGuestAttributeAudit};
    const void *values[] = {data};
    CFDictionaryRef attrs =
        CFDictionaryCreate(NULL, keys, values, 1, &kCFTypeDictionaryKeyCallBacks, &kCFTypeDictionaryValueCallBacks);
    CFRelease(data);
    if (!attrs) return false;
    SecCodeRef code = NULL;
    OSStatus st = SecCodeCopyGuestWithAttributes(NULL, attrs, kSecCSDefaultFlags, &code);
    CFRelease(attrs);
    if (st == errSecSuccess) st = SecCodeCheckValidity(code, kSecCSDefaultFlags, req);
    if (code) CFRelease(code);
    return st == errSecSuccess;
}

static bool krisp_client_allowed(const audit_token_t *token, const char **who) {
    /* audit_token_to_euid / audit_token_to_pid: <bsm/libbsm.h>, the documented way to read an
       audit token (its layout is private). */
    uid_t euid = audit_token_to_euid(*token);
    if (euid == gCoreAudioUid && krisp_code_satisfies(token, gAppleRequirement)) {
        *who = "coreaudiod";
        return true;
    }
    *who = "app";
    if (KRISP_RINGD_ANY_CLIENT) return true;
    return krisp_code_satisfies(token, gAppRequirement);
}

/* Sends `msg` to the reply right the request carried. The reply right's disposition is the
   one it arrived with (send-once from the driver's MACH_MSG_TYPE_MAKE_SEND_ONCE), as MIG
   servers do. A short timeout: a client that does not drain its reply port cannot stall us. */
static void krisp_send_reply(mach_msg_header_t *msg, mach_msg_size_t size, const mach_msg_header_t *req) {
    mach_msg_bits_t complex = msg->msgh_bits & MACH_MSGH_BITS_COMPLEX;
    msg->msgh_bits = MACH_MSGH_BITS(MACH_MSGH_BITS_REMOTE(req->msgh_bits), 0) | complex;
    msg->msgh_size = size;
    msg->msgh_remote_port = req->msgh_remote_port;
    msg->msgh_local_port = MACH_PORT_NULL;
    msg->msgh_id = (mach_msg_id_t)KRISP_RINGD_MSG_REPLY;
    kern_return_t kr = mach_msg(msg, MACH_SEND_MSG | MACH_SEND_TIMEOUT, size, 0, MACH_PORT_NULL, 100, MACH_PORT_NULL);
    if (kr != MACH_MSG_SUCCESS) {
        /* Not sent: the reply right is still ours (the memory entry was only to be copied, so
           our own right is untouched). Release the reply right. */
        os_log_error(gLog, "reply not sent: %{public}s", mach_error_string(kr));
        mach_port_deallocate(mach_task_self(), req->msgh_remote_port);
    }
}

static void krisp_refuse(const mach_msg_header_t *req, int32_t code) {
    krisp_ringd_refusal r = {0};
    r.code = code;
    krisp_send_reply(&r.header, sizeof(r), req);
}

static void krisp_serve_one(krisp_request_buffer *buf) {
    mach_msg_header_t *req = &buf->header;
    /* The trailer follows the message at its rounded size (<mach/message.h>: REQUESTED_TRAILER_SIZE,
       round_msg); we asked for the audit trailer, which carries the sender's audit token. */
    const mach_msg_audit_trailer_t *tr =
        (const mach_msg_audit_trailer_t *)((const uint8_t *)req + round_msg(req->msgh_size));
    bool has_reply = MACH_PORT_VALID(req->msgh_remote_port);
    if ((req->msgh_bits & MACH_MSGH_BITS_COMPLEX) || req->msgh_id != (mach_msg_id_t)KRISP_RINGD_MSG_GET_RING ||
        req->msgh_size != sizeof(mach_msg_header_t) || tr->msgh_trailer_size < sizeof(mach_msg_audit_trailer_t)) {
        os_log_error(gLog, "malformed request (id %d, size %u) refused", req->msgh_id, req->msgh_size);
        if (has_reply) {
            krisp_refuse(req, KRISP_RINGD_BAD_REQUEST);
            req->msgh_remote_port = MACH_PORT_NULL; /* consumed by the reply */
        }
        mach_msg_destroy(req); /* any other rights or memory a stranger sent us */
        return;
    }
    if (!has_reply) return;
    const char *who = "?";
    pid_t pid = audit_token_to_pid(tr->msgh_audit);
    if (!krisp_client_allowed(&tr->msgh_audit, &who)) {
        os_log_error(gLog, "refused the ring to pid %d (uid %u): not coreaudiod and not the signed Krisp app",
                     pid, audit_token_to_euid(tr->msgh_audit));
        krisp_refuse(req, KRISP_RINGD_REFUSED_CLIENT);
        return;
    }
    krisp_ringd_reply r = {0};
    r.header.msgh_bits = MACH_MSGH_BITS_COMPLEX;
    r.body.msgh_descriptor_count = 1;
    r.memory.name = gEntry;
    r.memory.disposition = MACH_MSG_TYPE_COPY_SEND; /* we keep our own right */
    r.memory.type = MACH_MSG_PORT_DESCRIPTOR;
    r.size = gEntrySize;
    krisp_send_reply(&r.header, sizeof(r), req);
    os_log(gLog, "ring handed to %{public}s (pid %d)", who, pid);
}

int main(void) {
    gLog = os_log_create("com.krisp.audio.ringd", "daemon");

    struct passwd *pw = getpwnam("_coreaudiod");
    if (!pw) {
        os_log_fault(gLog, "no _coreaudiod user: cannot recognise the driver");
        return EXIT_FAILURE;
    }
    gCoreAudioUid = pw->pw_uid;

    /* SecRequirementCreateWithString: code requirement language, Apple "Code Signing
       Requirement Language" (TN2206 / "Code Signing Guide"). */
    if (SecRequirementCreateWithString(CFSTR(KRISP_APP_REQUIREMENT), kSecCSDefaultFlags, &gAppRequirement) !=
            errSecSuccess ||
        SecRequirementCreateWithString(CFSTR("anchor apple"), kSecCSDefaultFlags, &gAppleRequirement) !=
            errSecSuccess) {
        os_log_fault(gLog, "bad code requirement string");
        return EXIT_FAILURE;
    }

    /* One anonymous memory object, created directly as a named entry: MAP_MEM_NAMED_CREATE
       (<mach/memory_object_types.h>) asks mach_make_memory_entry_64 for a new object of
       `size` bytes rather than an entry for an existing mapping (offset is then ignored).
       Zero-filled, so a reader sees an all-zero INIT header until the app publishes one.
       Apple: developer.apple.com/documentation/kernel/1585405-mach_make_memory_entry_64. */
    memory_object_size_t size = KRISP_RINGD_BYTES;
    kern_return_t kr = mach_make_memory_entry_64(mach_task_self(), &size, 0,
                                                 MAP_MEM_NAMED_CREATE | VM_PROT_READ | VM_PROT_WRITE, &gEntry,
                                                 MACH_PORT_NULL);
    if (kr != KERN_SUCCESS || size < KRISP_RINGD_BYTES) {
        os_log_fault(gLog, "cannot create the ring memory: %{public}s", mach_error_string(kr));
        return EXIT_FAILURE;
    }
    gEntrySize = size;

    /* The service's receive right comes from launchd, which created it from the MachServices
       key of our plist (launchd.plist(5)) and queues requests that arrive before we start.
       bootstrap_check_in: <servers/bootstrap.h>. */
    mach_port_t service = MACH_PORT_NULL;
    kr = bootstrap_check_in(bootstrap_port, KRISP_RINGD_SERVICE, &service);
    if (kr != KERN_SUCCESS) {
        os_log_fault(gLog, "bootstrap_check_in(%{public}s) failed: %{public}s", KRISP_RINGD_SERVICE,
                     bootstrap_strerror(kr));
        return EXIT_FAILURE;
    }
    os_log(gLog, "serving %{public}s: %llu-byte ring", KRISP_RINGD_SERVICE, (unsigned long long)gEntrySize);

    for (;;) {
        krisp_request_buffer buf;
        kr = mach_msg(&buf.header,
                      MACH_RCV_MSG | MACH_RCV_TRAILER_TYPE(MACH_MSG_TRAILER_FORMAT_0) |
                          MACH_RCV_TRAILER_ELEMENTS(MACH_RCV_TRAILER_AUDIT),
                      0, sizeof(buf), service, MACH_MSG_TIMEOUT_NONE, MACH_PORT_NULL);
        if (kr == MACH_RCV_TOO_LARGE) {
            /* Without MACH_RCV_LARGE the kernel already destroyed the oversized message. */
            os_log_error(gLog, "oversized request dropped");
            continue;
        }
        if (kr != MACH_MSG_SUCCESS) {
            os_log_error(gLog, "mach_msg receive: %{public}s", mach_error_string(kr));
            continue;
        }
        krisp_serve_one(&buf);
    }
}
