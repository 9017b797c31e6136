/*
 * KrispAudioDriver.c — "Krisp Microphone": an AudioServerPlugIn (user-space Core Audio driver
 * loaded by coreaudiod) that presents one input device whose audio comes from the Krisp app
 * through the shared ring described in drivers/PROTOCOL.md (C API: ../common/krisp_ring.h).
 *
 * Written against <CoreAudio/AudioServerPlugIn.h> (its header comments are the reference
 * documentation for every call below) and Apple's "Creating an Audio Server Driver Plug-in"
 * (developer.apple.com/documentation/coreaudio/creating_an_audio_server_driver_plug-in).
 *
 * Structure
 *   object 1  the plug-in           (kAudioPlugInClassID)
 *   object 2  "Krisp Microphone"    (kAudioDeviceClassID), input only, 48 kHz, mono f32
 *   object 3  its input stream      (kAudioStreamClassID)
 *   objects 4..6 are reserved for a future "Krisp Speaker" output device and its stream
 *   (KRISP_WITH_SPEAKER); nothing else in the driver assumes there is only one device.
 *
 * Where the shared memory comes from (the sandbox)
 *   coreaudiod runs plug-ins in a sandbox. Apple's Technical Q&A QA1811 ("The
 *   AudioServerPlugIn_MachServices plist Key") says a plug-in "may only read files in its
 *   bundle", may not write outside the system cache/temp directories, and may talk to other
 *   processes only through Mach services listed in its Info.plist under
 *   AudioServerPlugIn_MachServices. So the driver does NOT rely on shm_open()/a file path that
 *   the user's app creates: it looks up the Mach service "com.krisp.audio.ringd" (listed in
 *   Info.plist) and receives a Mach memory-entry send right for the ring, which it maps with
 *   mach_vm_map(). The service is a small LaunchDaemon (system bootstrap namespace, which is
 *   the namespace coreaudiod lives in; a per-user LaunchAgent's services are not visible to
 *   it) that owns the ring memory and hands the same memory entry to the app (writer) and to
 *   this driver (reader). See drivers/README.md for the status of that daemon.
 *   A development fallback (KRISP_DEV_POSIX_SHM=1) maps the POSIX segment "/krisp-mic-<uid>"
 *   directly; whether coreaudiod's sandbox profile permits ipc-posix-shm is not documented
 *   and has not been verified.
 *
 * Realtime rules: DoIOOperation only calls krisp_ring_read() (atomics and memcpy-like loops).
 * Connecting and mapping happen on a dispatch queue; the result is handed to the IO thread
 * through one atomic pointer.
 */

#include <CoreAudio/AudioServerPlugIn.h>
#include <dispatch/dispatch.h>
#include <mach/mach.h>
#include <mach/mach_time.h>
#include <mach/mach_vm.h>
#include <servers/bootstrap.h>
#include <os/log.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#include "krisp_ring.h"
#include "krisp_ringd.h" /* the messages of the ring daemon (krisp_ringd.c) */

#define KRISP_SERVICE_NAME KRISP_RINGD_SERVICE
#define KRISP_MSG_GET_RING KRISP_RINGD_MSG_GET_RING /* reply carries one port descriptor */

#ifndef KRISP_DEV_POSIX_SHM
#define KRISP_DEV_POSIX_SHM 0
#endif

enum {
    kObjectID_PlugIn = kAudioObjectPlugInObject, /* 1 */
    kObjectID_Device = 2,
    kObjectID_Stream_Input = 3,
    /* 4..6 reserved: Krisp Speaker device, its output stream, its volume control */
};

#define kDevice_UID "KrispMicrophone_UID"
#define kDevice_ModelUID "KrispMicrophone_ModelUID"
#define kDevice_Name "Krisp Microphone"
#define kManufacturer "Krisp"
#define kSampleRate 48000.0
#define kChannels 1u
#define kZeroTimeStampPeriod 8192u /* frames between zero time stamps of our virtual clock */

static os_log_t gLog;

/* ---- ring hand-off between the control queue and the IO thread ---------------------------- */

typedef struct krisp_mapping {
    krisp_ring_reader reader; /* touched only by the IO thread once published */
    void *base;
    size_t len;
    int is_mach; /* unmap with mach_vm_deallocate vs munmap */
} krisp_mapping;

static _Atomic(krisp_mapping *) gPending; /* control → IO: a freshly attached ring */
static _Atomic(krisp_mapping *) gRetired; /* IO → control: a ring to unmap */
static krisp_mapping *gActive;            /* IO thread only */
static _Atomic(int) gActiveNeedsReopen;   /* IO → control */
static _Atomic(int) gActivePresent;
static _Atomic(int) gRestartPending;      /* StartIO → IO: drop the stale queue, prefill */
static dispatch_queue_t gControlQueue;
static dispatch_source_t gControlTimer;

static void krisp_unmap(krisp_mapping *m) {
    if (!m) return;
    if (m->is_mach)
        mach_vm_deallocate(mach_task_self(), (mach_vm_address_t)(uintptr_t)m->base, m->len);
    else
        munmap(m->base, m->len);
    free(m);
}

/* Asks the ring daemon for the memory entry and maps it. Control queue only. */
static krisp_mapping *krisp_connect_mach(void) {
    mach_port_t service = MACH_PORT_NULL;
    if (bootstrap_look_up(bootstrap_port, KRISP_SERVICE_NAME, &service) != KERN_SUCCESS)
        return NULL;
    mach_port_t reply = MACH_PORT_NULL;
    mach_port_allocate(mach_task_self(), MACH_PORT_RIGHT_RECEIVE, &reply);

    struct {
        mach_msg_header_t header;
    } request = {0};
    request.header.msgh_bits = MACH_MSGH_BITS(MACH_MSG_TYPE_COPY_SEND, MACH_MSG_TYPE_MAKE_SEND_ONCE);
    request.header.msgh_size = sizeof(request);
    request.header.msgh_remote_port = service;
    request.header.msgh_local_port = reply;
    request.header.msgh_id = KRISP_MSG_GET_RING;

    struct {
        krisp_ringd_reply r; /* memory: from mach_make_memory_entry_64 in the daemon */
        mach_msg_trailer_t trailer;
    } response = {0};

    kern_return_t kr = mach_msg(&request.header, MACH_SEND_MSG | MACH_SEND_TIMEOUT, sizeof(request), 0,
                                MACH_PORT_NULL, 100, MACH_PORT_NULL);
    if (kr == KERN_SUCCESS)
        kr = mach_msg(&response.r.header, MACH_RCV_MSG | MACH_RCV_TIMEOUT, 0, sizeof(response), reply, 500,
                      MACH_PORT_NULL);
    mach_port_mod_refs(mach_task_self(), reply, MACH_PORT_RIGHT_RECEIVE, -1);
    mach_port_deallocate(mach_task_self(), service);
    if (kr != KERN_SUCCESS || !(response.r.header.msgh_bits & MACH_MSGH_BITS_COMPLEX) ||
        response.r.body.msgh_descriptor_count != 1 || response.r.size < KRISP_RING_HEADER_BYTES ||
        response.r.size > (64u << 20)) {
        /* A refusal (krisp_ringd_refusal) is a simple message: the daemon logs why. */
        os_log_error(gLog, "ring daemon reply invalid (kr=%d)", kr);
        return NULL;
    }
    mach_vm_address_t addr = 0;
    kr = mach_vm_map(mach_task_self(), &addr, response.r.size, 0, VM_FLAGS_ANYWHERE, response.r.memory.name, 0,
                     FALSE, VM_PROT_READ | VM_PROT_WRITE, VM_PROT_READ | VM_PROT_WRITE, VM_INHERIT_NONE);
    mach_port_deallocate(mach_task_self(), response.r.memory.name);
    if (kr != KERN_SUCCESS) return NULL;
    krisp_mapping *m = calloc(1, sizeof(*m));
    m->base = (void *)(uintptr_t)addr;
    m->len = (size_t)response.r.size;
    m->is_mach = 1;
    return m;
}

#if KRISP_DEV_POSIX_SHM
static krisp_mapping *krisp_connect_posix(void) {
    char name[64];
    /* The app's uid: coreaudiod runs as _coreaudiod, so the console user's uid is needed here;
       a development build takes it from the environment of coreaudiod or defaults to 501. */
    const char *uid = getenv("KRISP_UID");
    snprintf(name, sizeof name, "/krisp-mic-%s", uid ? uid : "501");
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) return NULL;
    off_t len = lseek(fd, 0, SEEK_END);
    void *p = len > 0 ? mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    if (p == MAP_FAILED) return NULL;
    krisp_mapping *m = calloc(1, sizeof(*m));
    m->base = p;
    m->len = (size_t)len;
    return m;
}
#endif

/* Every 250 ms: reclaim retired mappings; connect if there is no usable ring. */
static void krisp_control_tick(void *ctx) {
    (void)ctx;
    krisp_unmap(atomic_exchange(&gRetired, NULL));
    if (atomic_load(&gActivePresent) && !atomic_load(&gActiveNeedsReopen)) return;
    if (atomic_load(&gPending)) return;
    krisp_mapping *m = krisp_connect_mach();
#if KRISP_DEV_POSIX_SHM
    if (!m) m = krisp_connect_posix();
#endif
    if (!m) return;
    krisp_ring_status st = krisp_ring_reader_attach(&m->reader, m->base, m->len);
    if (st != KRISP_RING_OK) {
        /* Refused: version mismatch, garbage, torn. Say so (once per tick is cheap enough). */
        if (st == KRISP_RING_VERSION_MISMATCH)
            os_log_error(gLog, "Krisp ring refused: protocol version %u, driver speaks %u",
                         ((krisp_ring_header *)m->base)->version, KRISP_RING_VERSION);
        else
            os_log_error(gLog, "Krisp ring refused: %{public}s", krisp_ring_status_text(st));
        krisp_unmap(m);
        return;
    }
    if (m->reader.info.sample_rate != (uint32_t)kSampleRate || m->reader.info.channels != kChannels) {
        os_log_error(gLog, "Krisp ring format %u Hz x %u does not match the device", m->reader.info.sample_rate,
                     m->reader.info.channels);
        krisp_unmap(m);
        return;
    }
    os_log(gLog, "Krisp ring attached, generation %llu", (unsigned long long)m->reader.info.generation);
    krisp_unmap(atomic_exchange(&gPending, m));
}

/* ---- plug-in state ------------------------------------------------------------------------ */

static AudioServerPlugInHostRef gHost;
static pthread_mutex_t gStateMutex = PTHREAD_MUTEX_INITIALIZER;
static UInt32 gIOCount;           /* StartIO minus StopIO */
static Float64 gHostTicksPerFrame;
static UInt64 gAnchorHostTime;
static UInt64 gNumberTimeStamps;
static _Atomic(UInt32) gRefCount = 1;

/* ---- the COM-style interface -------------------------------------------------------------- */

static HRESULT Krisp_QueryInterface(void *inDriver, REFIID inUUID, LPVOID *outInterface);
static ULONG Krisp_AddRef(void *inDriver);
static ULONG Krisp_Release(void *inDriver);
static OSStatus Krisp_Initialize(AudioServerPlugInDriverRef inDriver, AudioServerPlugInHostRef inHost);
static OSStatus Krisp_CreateDevice(AudioServerPlugInDriverRef, CFDictionaryRef, const AudioServerPlugInClientInfo *,
                                   AudioObjectID *);
static OSStatus Krisp_DestroyDevice(AudioServerPlugInDriverRef, AudioObjectID);
static OSStatus Krisp_AddDeviceClient(AudioServerPlugInDriverRef, AudioObjectID, const AudioServerPlugInClientInfo *);
static OSStatus Krisp_RemoveDeviceClient(AudioServerPlugInDriverRef, AudioObjectID,
                                         const AudioServerPlugInClientInfo *);
static OSStatus Krisp_PerformDeviceConfigurationChange(AudioServerPlugInDriverRef, AudioObjectID, UInt64, void *);
static OSStatus Krisp_AbortDeviceConfigurationChange(AudioServerPlugInDriverRef, AudioObjectID, UInt64, void *);
static Boolean Krisp_HasProperty(AudioServerPlugInDriverRef, AudioObjectID, pid_t, const AudioObjectPropertyAddress *);
static OSStatus Krisp_IsPropertySettable(AudioServerPlugInDriverRef, AudioObjectID, pid_t,
                                         const AudioObjectPropertyAddress *, Boolean *);
static OSStatus Krisp_GetPropertyDataSize(AudioServerPlugInDriverRef, AudioObjectID, pid_t,
                                          const AudioObjectPropertyAddress *, UInt32, const void *, UInt32 *);
static OSStatus Krisp_GetPropertyData(AudioServerPlugInDriverRef, AudioObjectID, pid_t,
                                      const AudioObjectPropertyAddress *, UInt32, const void *, UInt32, UInt32 *,
                                      void *);
static OSStatus Krisp_SetPropertyData(AudioServerPlugInDriverRef, AudioObjectID, pid_t,
                                      const AudioObjectPropertyAddress *, UInt32, const void *, UInt32, const void *);
static OSStatus Krisp_StartIO(AudioServerPlugInDriverRef, AudioObjectID, UInt32);
static OSStatus Krisp_StopIO(AudioServerPlugInDriverRef, AudioObjectID, UInt32);
static OSStatus Krisp_GetZeroTimeStamp(AudioServerPlugInDriverRef, AudioObjectID, UInt32, Float64 *, UInt64 *,
                                       UInt64 *);
static OSStatus Krisp_WillDoIOOperation(AudioServerPlugInDriverRef, AudioObjectID, UInt32, UInt32, Boolean *,
                                        Boolean *);
static OSStatus Krisp_BeginIOOperation(AudioServerPlugInDriverRef, AudioObjectID, UInt32, UInt32, UInt32,
                                       const AudioServerPlugInIOCycleInfo *);
static OSStatus Krisp_DoIOOperation(AudioServerPlugInDriverRef, AudioObjectID, AudioObjectID, UInt32, UInt32,
                                    UInt32, const AudioServerPlugInIOCycleInfo *, void *, void *);
static OSStatus Krisp_EndIOOperation(AudioServerPlugInDriverRef, AudioObjectID, UInt32, UInt32, UInt32,
                                     const AudioServerPlugInIOCycleInfo *);

static AudioServerPlugInDriverInterface gInterface = {
    NULL,
    Krisp_QueryInterface, Krisp_AddRef, Krisp_Release,
    Krisp_Initialize, Krisp_CreateDevice, Krisp_DestroyDevice,
    Krisp_AddDeviceClient, Krisp_RemoveDeviceClient,
    Krisp_PerformDeviceConfigurationChange, Krisp_AbortDeviceConfigurationChange,
    Krisp_HasProperty, Krisp_IsPropertySettable, Krisp_GetPropertyDataSize, Krisp_GetPropertyData,
    Krisp_SetPropertyData,
    Krisp_StartIO, Krisp_StopIO, Krisp_GetZeroTimeStamp,
    Krisp_WillDoIOOperation, Krisp_BeginIOOperation, Krisp_DoIOOperation, Krisp_EndIOOperation,
};
static AudioServerPlugInDriverInterface *gInterfacePtr = &gInterface;
static AudioServerPlugInDriverRef gDriverRef = &gInterfacePtr;

/* CFPlugIn factory named in Info.plist (CFPlugInFactories). */
void *KrispAudio_Create(CFAllocatorRef inAllocator, CFUUIDRef inRequestedTypeUUID);
void *KrispAudio_Create(CFAllocatorRef inAllocator, CFUUIDRef inRequestedTypeUUID) {
    (void)inAllocator;
    return CFEqual(inRequestedTypeUUID, kAudioServerPlugInTypeUUID) ? gDriverRef : NULL;
}

static HRESULT Krisp_QueryInterface(void *inDriver, REFIID inUUID, LPVOID *outInterface) {
    if (inDriver != gDriverRef || !outInterface) return kAudioHardwareBadObjectError;
    CFUUIDRef requested = CFUUIDCreateFromUUIDBytes(NULL, inUUID);
    HRESULT result = E_NOINTERFACE;
    if (CFEqual(requested, IUnknownUUID) || CFEqual(requested, kAudioServerPlugInDriverInterfaceUUID)) {
        atomic_fetch_add(&gRefCount, 1);
        *outInterface = gDriverRef;
        result = S_OK;
    }
    CFRelease(requested);
    return result;
}

static ULONG Krisp_AddRef(void *inDriver) {
    return inDriver == gDriverRef ? atomic_fetch_add(&gRefCount, 1) + 1 : 0;
}

static ULONG Krisp_Release(void *inDriver) {
    /* The driver is static; the count is kept only to answer as COM expects. */
    return inDriver == gDriverRef ? atomic_fetch_sub(&gRefCount, 1) - 1 : 0;
}

static OSStatus Krisp_Initialize(AudioServerPlugInDriverRef inDriver, AudioServerPlugInHostRef inHost) {
    if (inDriver != gDriverRef) return kAudioHardwareBadObjectError;
    gHost = inHost;
    gLog = os_log_create("com.krisp.audio.driver", "ring");
    struct mach_timebase_info tb;
    mach_timebase_info(&tb);
    Float64 hostClockFrequency = (Float64)tb.denom / (Float64)tb.numer * 1e9;
    gHostTicksPerFrame = hostClockFrequency / kSampleRate;
    gControlQueue = dispatch_queue_create("com.krisp.audio.ring-control", DISPATCH_QUEUE_SERIAL);
    gControlTimer = dispatch_source_create(DISPATCH_SOURCE_TYPE_TIMER, 0, 0, gControlQueue);
    dispatch_source_set_timer(gControlTimer, DISPATCH_TIME_NOW, 250 * NSEC_PER_MSEC, 50 * NSEC_PER_MSEC);
    dispatch_source_set_event_handler_f(gControlTimer, krisp_control_tick);
    dispatch_resume(gControlTimer);
    return kAudioHardwareNoError;
}

/* Devices are static: the host never asks us to create or destroy them. */
static OSStatus Krisp_CreateDevice(AudioServerPlugInDriverRef d, CFDictionaryRef desc,
                                   const AudioServerPlugInClientInfo *ci, AudioObjectID *out) {
    (void)d; (void)desc; (void)ci; (void)out;
    return kAudioHardwareUnsupportedOperationError;
}
static OSStatus Krisp_DestroyDevice(AudioServerPlugInDriverRef d, AudioObjectID id) {
    (void)d; (void)id;
    return kAudioHardwareUnsupportedOperationError;
}
static OSStatus Krisp_AddDeviceClient(AudioServerPlugInDriverRef d, AudioObjectID id,
                                      const AudioServerPlugInClientInfo *ci) {
    (void)ci;
    return (d == gDriverRef && id == kObjectID_Device) ? kAudioHardwareNoError : kAudioHardwareBadObjectError;
}
static OSStatus Krisp_RemoveDeviceClient(AudioServerPlugInDriverRef d, AudioObjectID id,
                                         const AudioServerPlugInClientInfo *ci) {
    (void)ci;
    return (d == gDriverRef && id == kObjectID_Device) ? kAudioHardwareNoError : kAudioHardwareBadObjectError;
}
static OSStatus Krisp_PerformDeviceConfigurationChange(AudioServerPlugInDriverRef d, AudioObjectID id, UInt64 a,
                                                       void *i) {
    (void)d; (void)id; (void)a; (void)i;
    return kAudioHardwareNoError; /* fixed format: nothing is ever requested */
}
static OSStatus Krisp_AbortDeviceConfigurationChange(AudioServerPlugInDriverRef d, AudioObjectID id, UInt64 a,
                                                     void *i) {
    (void)d; (void)id; (void)a; (void)i;
    return kAudioHardwareNoError;
}

/* ---- properties --------------------------------------------------------------------------- */

static AudioStreamBasicDescription krisp_format(void) {
    AudioStreamBasicDescription f = {0};
    f.mSampleRate = kSampleRate;
    f.mFormatID = kAudioFormatLinearPCM;
    f.mFormatFlags = kAudioFormatFlagIsFloat | kAudioFormatFlagsNativeEndian | kAudioFormatFlagIsPacked;
    f.mBytesPerPacket = 4 * kChannels;
    f.mFramesPerPacket = 1;
    f.mBytesPerFrame = 4 * kChannels;
    f.mChannelsPerFrame = kChannels;
    f.mBitsPerChannel = 32;
    return f;
}

static Boolean Krisp_HasProperty(AudioServerPlugInDriverRef d, AudioObjectID obj, pid_t pid,
                                 const AudioObjectPropertyAddress *a) {
    UInt32 size = 0;
    (void)pid;
    return d == gDriverRef && a &&
           Krisp_GetPropertyDataSize(d, obj, 0, a, 0, NULL, &size) == kAudioHardwareNoError;
}

static OSStatus Krisp_IsPropertySettable(AudioServerPlugInDriverRef d, AudioObjectID obj, pid_t pid,
                                         const AudioObjectPropertyAddress *a, Boolean *out) {
    if (!Krisp_HasProperty(d, obj, pid, a) || !out) return kAudioHardwareUnknownPropertyError;
    *out = false; /* nothing is settable: fixed 48 kHz mono f32 */
    return kAudioHardwareNoError;
}

/* One table-driven answer for both size and data. */
static OSStatus krisp_property(AudioObjectID obj, const AudioObjectPropertyAddress *a, UInt32 qsize,
                               const void *qdata, UInt32 capacity, UInt32 *outSize, void *out) {
#define ANSWER(type, value)                                                   \
    do {                                                                      \
        *outSize = sizeof(type);                                              \
        if (out) {                                                            \
            if (capacity < sizeof(type)) return kAudioHardwareBadPropertySizeError; \
            *(type *)out = (value);                                           \
        }                                                                     \
        return kAudioHardwareNoError;                                         \
    } while (0)
#define ANSWER_IDS(list, n)                                                   \
    do {                                                                      \
        UInt32 count = out ? (capacity / sizeof(AudioObjectID) < (n) ? capacity / sizeof(AudioObjectID) : (n)) : (n); \
        if (out) memcpy(out, (list), count * sizeof(AudioObjectID));          \
        *outSize = count * sizeof(AudioObjectID);                             \
        return kAudioHardwareNoError;                                         \
    } while (0)
    (void)qsize;
    const AudioObjectID device[] = {kObjectID_Device};
    const AudioObjectID stream[] = {kObjectID_Stream_Input};
    const Boolean inputScope = a->mScope == kAudioObjectPropertyScopeGlobal || a->mScope == kAudioObjectPropertyScopeInput;

    switch (obj) {
    case kObjectID_PlugIn:
        switch (a->mSelector) {
        case kAudioObjectPropertyBaseClass: ANSWER(AudioClassID, kAudioObjectClassID);
        case kAudioObjectPropertyClass: ANSWER(AudioClassID, kAudioPlugInClassID);
        case kAudioObjectPropertyOwner: ANSWER(AudioObjectID, kAudioObjectUnknown);
        case kAudioObjectPropertyManufacturer: ANSWER(CFStringRef, CFSTR(kManufacturer));
        case kAudioObjectPropertyOwnedObjects:
        case kAudioPlugInPropertyDeviceList: ANSWER_IDS(device, 1u);
        case kAudioPlugInPropertyTranslateUIDToDevice: {
            CFStringRef uid = (qdata && qsize == sizeof(CFStringRef)) ? *(const CFStringRef *)qdata : NULL;
            ANSWER(AudioObjectID, (uid && CFEqual(uid, CFSTR(kDevice_UID))) ? kObjectID_Device : kAudioObjectUnknown);
        }
        case kAudioPlugInPropertyResourceBundle: ANSWER(CFStringRef, CFSTR(""));
        }
        break;
    case kObjectID_Device:
        switch (a->mSelector) {
        case kAudioObjectPropertyBaseClass: ANSWER(AudioClassID, kAudioObjectClassID);
        case kAudioObjectPropertyClass: ANSWER(AudioClassID, kAudioDeviceClassID);
        case kAudioObjectPropertyOwner: ANSWER(AudioObjectID, kObjectID_PlugIn);
        case kAudioObjectPropertyName: ANSWER(CFStringRef, CFSTR(kDevice_Name));
        case kAudioObjectPropertyManufacturer: ANSWER(CFStringRef, CFSTR(kManufacturer));
        case kAudioObjectPropertyOwnedObjects:
        case kAudioDevicePropertyStreams:
            if (inputScope) ANSWER_IDS(stream, 1u);
            ANSWER_IDS(stream, 0u);
        case kAudioObjectPropertyControlList: ANSWER_IDS(stream, 0u);
        case kAudioDevicePropertyDeviceUID: ANSWER(CFStringRef, CFSTR(kDevice_UID));
        case kAudioDevicePropertyModelUID: ANSWER(CFStringRef, CFSTR(kDevice_ModelUID));
        case kAudioDevicePropertyTransportType: ANSWER(UInt32, kAudioDeviceTransportTypeVirtual);
        case kAudioDevicePropertyRelatedDevices: ANSWER_IDS(device, 1u);
        case kAudioDevicePropertyClockDomain: ANSWER(UInt32, 0);
        /* Alive even when the app is not running: the device stays, it plays silence. */
        case kAudioDevicePropertyDeviceIsAlive: ANSWER(UInt32, 1);
        case kAudioDevicePropertyDeviceIsRunning: ANSWER(UInt32, gIOCount > 0);
        case kAudioDevicePropertyDeviceCanBeDefaultDevice: ANSWER(UInt32, inputScope ? 1 : 0);
        case kAudioDevicePropertyDeviceCanBeDefaultSystemDevice: ANSWER(UInt32, 0);
        case kAudioDevicePropertyLatency: ANSWER(UInt32, 0);
        case kAudioDevicePropertySafetyOffset: ANSWER(UInt32, 0);
        case kAudioDevicePropertyNominalSampleRate: ANSWER(Float64, kSampleRate);
        case kAudioDevicePropertyAvailableNominalSampleRates: {
            AudioValueRange r = {kSampleRate, kSampleRate};
            ANSWER(AudioValueRange, r);
        }
        case kAudioDevicePropertyIsHidden: ANSWER(UInt32, 0);
        case kAudioDevicePropertyZeroTimeStampPeriod: ANSWER(UInt32, kZeroTimeStampPeriod);
        }
        break;
    case kObjectID_Stream_Input:
        switch (a->mSelector) {
        case kAudioObjectPropertyBaseClass: ANSWER(AudioClassID, kAudioObjectClassID);
        case kAudioObjectPropertyClass: ANSWER(AudioClassID, kAudioStreamClassID);
        case kAudioObjectPropertyOwner: ANSWER(AudioObjectID, kObjectID_Device);
        case kAudioObjectPropertyOwnedObjects: ANSWER_IDS(stream, 0u);
        case kAudioStreamPropertyIsActive: ANSWER(UInt32, 1);
        case kAudioStreamPropertyDirection: ANSWER(UInt32, 1); /* 1 = input */
        case kAudioStreamPropertyTerminalType: ANSWER(UInt32, kAudioStreamTerminalTypeMicrophone);
        case kAudioStreamPropertyStartingChannel: ANSWER(UInt32, 1);
        case kAudioStreamPropertyLatency: ANSWER(UInt32, 0);
        case kAudioStreamPropertyVirtualFormat:
        case kAudioStreamPropertyPhysicalFormat: ANSWER(AudioStreamBasicDescription, krisp_format());
        case kAudioStreamPropertyAvailableVirtualFormats:
        case kAudioStreamPropertyAvailablePhysicalFormats: {
            AudioStreamRangedDescription r;
            r.mFormat = krisp_format();
            r.mSampleRateRange.mMinimum = kSampleRate;
            r.mSampleRateRange.mMaximum = kSampleRate;
            ANSWER(AudioStreamRangedDescription, r);
        }
        }
        break;
    default:
        return kAudioHardwareBadObjectError;
    }
    return kAudioHardwareUnknownPropertyError;
#undef ANSWER
#undef ANSWER_IDS
}

static OSStatus Krisp_GetPropertyDataSize(AudioServerPlugInDriverRef d, AudioObjectID obj, pid_t pid,
                                          const AudioObjectPropertyAddress *a, UInt32 qsize, const void *qdata,
                                          UInt32 *outSize) {
    (void)pid;
    if (d != gDriverRef) return kAudioHardwareBadObjectError;
    if (!a || !outSize) return kAudioHardwareIllegalOperationError;
    return krisp_property(obj, a, qsize, qdata, 0, outSize, NULL);
}

static OSStatus Krisp_GetPropertyData(AudioServerPlugInDriverRef d, AudioObjectID obj, pid_t pid,
                                      const AudioObjectPropertyAddress *a, UInt32 qsize, const void *qdata,
                                      UInt32 inSize, UInt32 *outSize, void *out) {
    (void)pid;
    if (d != gDriverRef) return kAudioHardwareBadObjectError;
    if (!a || !outSize || !out) return kAudioHardwareIllegalOperationError;
    return krisp_property(obj, a, qsize, qdata, inSize, outSize, out);
}

static OSStatus Krisp_SetPropertyData(AudioServerPlugInDriverRef d, AudioObjectID obj, pid_t pid,
                                      const AudioObjectPropertyAddress *a, UInt32 qsize, const void *qdata,
                                      UInt32 inSize, const void *in) {
    (void)d; (void)obj; (void)pid; (void)a; (void)qsize; (void)qdata; (void)inSize; (void)in;
    return kAudioHardwareUnsupportedOperationError;
}

/* ---- IO ----------------------------------------------------------------------------------- */

static OSStatus Krisp_StartIO(AudioServerPlugInDriverRef d, AudioObjectID id, UInt32 client) {
    (void)client;
    if (d != gDriverRef || id != kObjectID_Device) return kAudioHardwareBadObjectError;
    pthread_mutex_lock(&gStateMutex);
    if (gIOCount++ == 0) {
        gNumberTimeStamps = 0;
        gAnchorHostTime = mach_absolute_time();
        atomic_store(&gRestartPending, 1); /* whatever was queued while stopped is stale */
    }
    pthread_mutex_unlock(&gStateMutex);
    return kAudioHardwareNoError;
}

static OSStatus Krisp_StopIO(AudioServerPlugInDriverRef d, AudioObjectID id, UInt32 client) {
    (void)client;
    if (d != gDriverRef || id != kObjectID_Device) return kAudioHardwareBadObjectError;
    pthread_mutex_lock(&gStateMutex);
    if (gIOCount > 0) gIOCount--;
    pthread_mutex_unlock(&gStateMutex);
    return kAudioHardwareNoError;
}

/* Our clock is the host clock divided into 48 kHz frames. The header documents that the HAL
 * calls this on the IO thread and that a new zero time stamp must be returned only once a full
 * kZeroTimeStampPeriod has elapsed. The Krisp app, not the driver, absorbs the drift between
 * this clock and the microphone's (PROTOCOL.md, "Clock drift"). */
static OSStatus Krisp_GetZeroTimeStamp(AudioServerPlugInDriverRef d, AudioObjectID id, UInt32 client,
                                       Float64 *outSampleTime, UInt64 *outHostTime, UInt64 *outSeed) {
    (void)client;
    if (d != gDriverRef || id != kObjectID_Device) return kAudioHardwareBadObjectError;
    UInt64 now = mach_absolute_time();
    Float64 ticksPerPeriod = gHostTicksPerFrame * kZeroTimeStampPeriod;
    UInt64 next = gAnchorHostTime + (UInt64)((gNumberTimeStamps + 1) * ticksPerPeriod);
    if (next <= now) gNumberTimeStamps++;
    *outSampleTime = (Float64)(gNumberTimeStamps * kZeroTimeStampPeriod);
    *outHostTime = gAnchorHostTime + (UInt64)(gNumberTimeStamps * ticksPerPeriod);
    *outSeed = 1;
    return kAudioHardwareNoError;
}

static OSStatus Krisp_WillDoIOOperation(AudioServerPlugInDriverRef d, AudioObjectID id, UInt32 client, UInt32 op,
                                        Boolean *willDo, Boolean *inPlace) {
    (void)client;
    if (d != gDriverRef || id != kObjectID_Device) return kAudioHardwareBadObjectError;
    *willDo = op == kAudioServerPlugInIOOperationReadInput;
    *inPlace = true;
    return kAudioHardwareNoError;
}

static OSStatus Krisp_BeginIOOperation(AudioServerPlugInDriverRef d, AudioObjectID id, UInt32 client, UInt32 op,
                                       UInt32 frames, const AudioServerPlugInIOCycleInfo *info) {
    (void)client; (void)op; (void)frames; (void)info;
    return (d == gDriverRef && id == kObjectID_Device) ? kAudioHardwareNoError : kAudioHardwareBadObjectError;
}

/* Realtime: no locks, no allocation, no logging. */
static OSStatus Krisp_DoIOOperation(AudioServerPlugInDriverRef d, AudioObjectID id, AudioObjectID stream,
                                    UInt32 client, UInt32 op, UInt32 frames, const AudioServerPlugInIOCycleInfo *info,
                                    void *mainBuffer, void *secondaryBuffer) {
    (void)client; (void)info; (void)secondaryBuffer;
    if (d != gDriverRef || id != kObjectID_Device) return kAudioHardwareBadObjectError;
    if (op != kAudioServerPlugInIOOperationReadInput || stream != kObjectID_Stream_Input) return kAudioHardwareNoError;

    krisp_mapping *fresh = atomic_exchange(&gPending, NULL);
    if (fresh) {
        krisp_mapping *old = gActive;
        gActive = fresh;
        atomic_store(&gActiveNeedsReopen, 0);
        atomic_store(&gActivePresent, 1);
        /* The control queue unmaps it; if it has not collected the previous one yet, keep the
           old mapping alive one more cycle rather than unmapping here. */
        krisp_mapping *expected = NULL;
        if (old && !atomic_compare_exchange_strong(&gRetired, &expected, old)) {
            gActive = old;
            atomic_store(&gPending, fresh);
        }
    }
    if (gActive && atomic_exchange(&gRestartPending, 0)) krisp_ring_reader_restart(&gActive->reader);
    float *out = (float *)mainBuffer;
    if (!gActive) {
        memset(out, 0, (size_t)frames * kChannels * sizeof(float));
        return kAudioHardwareNoError;
    }
    uint32_t audio = 0;
    krisp_read_state st = krisp_ring_read(&gActive->reader, out, frames, &audio);
    if (st == KRISP_READ_NEEDS_REOPEN) atomic_store(&gActiveNeedsReopen, 1);
    return kAudioHardwareNoError;
}

static OSStatus Krisp_EndIOOperation(AudioServerPlugInDriverRef d, AudioObjectID id, UInt32 client, UInt32 op,
                                     UInt32 frames, const AudioServerPlugInIOCycleInfo *info) {
    (void)client; (void)op; (void)frames; (void)info;
    return (d == gDriverRef && id == kObjectID_Device) ? kAudioHardwareNoError : kAudioHardwareBadObjectError;
}
