/*
 * KrispMic.cpp — "Krisp Microphone" for Windows: a PortCls adapter with one WaveRT capture
 * miniport (plus the minimal topology miniport an endpoint needs) whose audio comes from the
 * Krisp app through the shared ring of drivers/PROTOCOL.md (C API: ../common/krisp_ring.h).
 *
 * The design follows the shape of Microsoft's SysVAD sample (Windows-driver-samples,
 * audio/sysvad: an adapter creating WaveRT + topology subdevices joined by a physical
 * connection, a WaveRT stream that services its cyclic buffer from a timer) but is written
 * from the documented interfaces: IMiniportWaveRT / IMiniportWaveRTStream
 * (learn.microsoft.com/windows-hardware/drivers/audio/wavert-miniport-driver),
 * PcAddAdapterDevice / PcRegisterSubdevice / PcRegisterPhysicalConnection (portcls.h).
 *
 * Ring memory: the driver owns it. At start it creates a named, pagefile-backed section
 * "\BaseNamedObjects\KrispMicRing" (the global namespace: user mode's "Global\KrispMicRing")
 * with a DACL granting SYSTEM and Administrators full access and interactive users map
 * read/write (KrispRing_BuildSecurity), maps it into system space, and leaves the header at zero
 * (state INIT). The Krisp app opens it with OpenFileMappingW(FILE_MAP_READ | FILE_MAP_WRITE,
 * FALSE, L"Global\\KrispMicRing") and becomes the writer exactly as on Linux (RingWriter takes
 * over a same-size segment in place). Why the driver and not the app creates it: creating a
 * named object in the global namespace from a user session needs SeCreateGlobalPrivilege,
 * which an unelevated app lacks, while opening an existing one is governed by its DACL only
 * (learn.microsoft.com/windows/win32/api/memoryapi/nf-memoryapi-createfilemappingw, Remarks;
 * .../nf-memoryapi-openfilemappingw; "Kernel Object Namespaces"). drivers/PROTOCOL.md,
 * "Windows: the section object". The size is fixed at 512 + 8192 frames x 1 channel x 4
 * bytes, i.e. the app's default RingConfig at 48 kHz mono.
 *
 * Timing: the capture stream runs on the performance counter. A 10 ms timer DPC computes how
 * many frames the device clock has advanced since the last DPC, reads exactly that many frames
 * with krisp_ring_read() (silence when the app is absent: the endpoint stays present) and
 * writes them into the WaveRT cyclic buffer at the current position; GetPosition reports it.
 * krisp_ring_read() only touches atomics and the mapped memory: safe at DISPATCH_LEVEL because
 * the section view is nonpaged-backed once locked (see KrispRing_Create).
 */

extern "C" {
#include <ntifs.h> // ntddk.h plus the Rtl ACL/SID routines used for the section's DACL
}
#include <portcls.h>
#include <ksdebug.h>
#include <ksmedia.h>

extern "C" {
#include "krisp_ring.h"
}

#define KRISP_POOLTAG 'psrK'
#define KRISP_RATE 48000u
#define KRISP_CHANNELS 1u
#define KRISP_CAPACITY 8192u
#define KRISP_RING_BYTES (KRISP_RING_HEADER_BYTES + KRISP_CAPACITY * KRISP_CHANNELS * sizeof(float))
#define KRISP_DPC_MS 10

// ---- the ring section ------------------------------------------------------------------------

struct KrispRing {
    HANDLE section = nullptr;
    PVOID view = nullptr;
    SIZE_T viewSize = 0;
    PMDL mdl = nullptr;
};

static KrispRing g_Ring;

// The section's security descriptor, built once in nonpaged storage that outlives the
// ZwCreateSection call (the object manager copies it at creation).
struct KrispRingSecurity {
    SECURITY_DESCRIPTOR sd;
    // SIDs and ACLs hold ULONGs: keep each buffer aligned (RtlCreateAcl requires it).
    alignas(8) UCHAR system[SECURITY_MAX_SID_SIZE];
    alignas(8) UCHAR admins[SECURITY_MAX_SID_SIZE];
    alignas(8) UCHAR interactive[SECURITY_MAX_SID_SIZE];
    alignas(8) UCHAR acl[256];
};
static KrispRingSecurity g_RingSecurity;

// Writes a well-known SID of the NT authority (S-1-5-a[-b]) into `buf`.
static NTSTATUS KrispRing_Sid(UCHAR *buf, ULONG rid0, ULONG rid1)
{
    SID_IDENTIFIER_AUTHORITY nt = SECURITY_NT_AUTHORITY;
    UCHAR count = rid1 ? 2 : 1;
    NTSTATUS status = RtlInitializeSid(buf, &nt, count);
    if (!NT_SUCCESS(status)) return status;
    *RtlSubAuthoritySid(buf, 0) = rid0;
    if (rid1) *RtlSubAuthoritySid(buf, 1) = rid1;
    return STATUS_SUCCESS;
}

// DACL: SYSTEM and Administrators (S-1-5-18, S-1-5-32-544) full access; Interactive users
// (S-1-5-4: every process of a logged-on user, so the unelevated Krisp app) may query the section
// and map it read/write, nothing else (no WRITE_DAC, no DELETE). Well-known SIDs:
// learn.microsoft.com/windows/win32/secauthz/well-known-sids; section rights: "File Mapping
// Security and Access Rights" (SECTION_MAP_READ/WRITE are what FILE_MAP_READ/WRITE request);
// RtlCreateAcl / RtlAddAccessAllowedAce / RtlCreateSecurityDescriptor /
// RtlSetDaclSecurityDescriptor: learn.microsoft.com/windows-hardware/drivers/ddi/ntifs and /wdm.
// Trade-off: any interactive user's process may read or write the ring (hear the processed
// voice or inject audio); on a shared machine a narrower group SID is the fix.
static NTSTATUS KrispRing_BuildSecurity(PSECURITY_DESCRIPTOR *out)
{
    KrispRingSecurity *s = &g_RingSecurity;
    NTSTATUS status = KrispRing_Sid(s->system, SECURITY_LOCAL_SYSTEM_RID, 0);
    if (NT_SUCCESS(status))
        status = KrispRing_Sid(s->admins, SECURITY_BUILTIN_DOMAIN_RID, DOMAIN_ALIAS_RID_ADMINS);
    if (NT_SUCCESS(status)) status = KrispRing_Sid(s->interactive, SECURITY_INTERACTIVE_RID, 0);
    if (!NT_SUCCESS(status)) return status;
    PACL acl = reinterpret_cast<PACL>(s->acl);
    status = RtlCreateAcl(acl, sizeof(s->acl), ACL_REVISION);
    if (NT_SUCCESS(status)) status = RtlAddAccessAllowedAce(acl, ACL_REVISION, SECTION_ALL_ACCESS, s->system);
    if (NT_SUCCESS(status)) status = RtlAddAccessAllowedAce(acl, ACL_REVISION, SECTION_ALL_ACCESS, s->admins);
    if (NT_SUCCESS(status))
        status = RtlAddAccessAllowedAce(acl, ACL_REVISION, SECTION_QUERY | SECTION_MAP_READ | SECTION_MAP_WRITE,
                                        s->interactive);
    if (NT_SUCCESS(status)) status = RtlCreateSecurityDescriptor(&s->sd, SECURITY_DESCRIPTOR_REVISION);
    if (NT_SUCCESS(status)) status = RtlSetDaclSecurityDescriptor(&s->sd, TRUE, acl, FALSE);
    if (NT_SUCCESS(status)) *out = &s->sd;
    return status;
}

static NTSTATUS KrispRing_Create()
{
    // The global namespace directly; user mode reaches it as "Global\KrispMicRing".
    UNICODE_STRING name = RTL_CONSTANT_STRING(L"\\BaseNamedObjects\\KrispMicRing");
    PSECURITY_DESCRIPTOR sd = nullptr;
    NTSTATUS status = KrispRing_BuildSecurity(&sd);
    if (!NT_SUCCESS(status)) return status;
    OBJECT_ATTRIBUTES oa;
    // OBJ_OPENIF: a section left by a previous instance of the driver is reused (same size).
    InitializeObjectAttributes(&oa, &name, OBJ_KERNEL_HANDLE | OBJ_OPENIF, nullptr, sd);
    LARGE_INTEGER size;
    size.QuadPart = KRISP_RING_BYTES;
    status = ZwCreateSection(&g_Ring.section, SECTION_ALL_ACCESS, &oa, &size, PAGE_READWRITE, SEC_COMMIT, nullptr);
    if (!NT_SUCCESS(status)) return status;
    PVOID object = nullptr;
    status = ObReferenceObjectByHandle(g_Ring.section, SECTION_MAP_READ | SECTION_MAP_WRITE, nullptr, KernelMode,
                                       &object, nullptr);
    if (!NT_SUCCESS(status)) return status;
    g_Ring.viewSize = KRISP_RING_BYTES;
    status = MmMapViewInSystemSpace(object, &g_Ring.view, &g_Ring.viewSize);
    ObDereferenceObject(object);
    if (!NT_SUCCESS(status)) return status;
    // Lock the pages so the DPC may touch them at DISPATCH_LEVEL.
    g_Ring.mdl = IoAllocateMdl(g_Ring.view, (ULONG)g_Ring.viewSize, FALSE, FALSE, nullptr);
    if (!g_Ring.mdl) return STATUS_INSUFFICIENT_RESOURCES;
    __try {
        MmProbeAndLockPages(g_Ring.mdl, KernelMode, IoModifyAccess);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        IoFreeMdl(g_Ring.mdl);
        g_Ring.mdl = nullptr;
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    return STATUS_SUCCESS;
}

static void KrispRing_Destroy()
{
    if (g_Ring.mdl) { MmUnlockPages(g_Ring.mdl); IoFreeMdl(g_Ring.mdl); g_Ring.mdl = nullptr; }
    if (g_Ring.view) { MmUnmapViewInSystemSpace(g_Ring.view); g_Ring.view = nullptr; }
    if (g_Ring.section) { ZwClose(g_Ring.section); g_Ring.section = nullptr; }
}

// ---- pin and format description --------------------------------------------------------------

static KSDATARANGE_AUDIO g_CaptureRange = {
    {sizeof(KSDATARANGE_AUDIO), 0, 0, 0, STATICGUIDOF(KSDATAFORMAT_TYPE_AUDIO),
     STATICGUIDOF(KSDATAFORMAT_SUBTYPE_IEEE_FLOAT), STATICGUIDOF(KSDATAFORMAT_SPECIFIER_WAVEFORMATEX)},
    KRISP_CHANNELS, 32, 32, KRISP_RATE, KRISP_RATE};
static PKSDATARANGE g_CaptureRanges[] = {PKSDATARANGE(&g_CaptureRange)};

static KSDATARANGE g_BridgeRange = {
    sizeof(KSDATARANGE), 0, 0, 0, STATICGUIDOF(KSDATAFORMAT_TYPE_AUDIO),
    STATICGUIDOF(KSDATAFORMAT_SUBTYPE_ANALOG), STATICGUIDOF(KSDATAFORMAT_SPECIFIER_NONE)};
static PKSDATARANGE g_BridgeRanges[] = {&g_BridgeRange};

// WaveRT filter: pin 0 = bridge (from topology), pin 1 = capture stream to the host.
static PCPIN_DESCRIPTOR g_WavePins[] = {
    {0, 0, 0, nullptr,
     {0, nullptr, 0, nullptr, SIZEOF_ARRAY(g_BridgeRanges), g_BridgeRanges, KSPIN_DATAFLOW_IN,
      KSPIN_COMMUNICATION_NONE, &KSCATEGORY_AUDIO, nullptr, 0}},
    {1, 1, 0, nullptr,
     {0, nullptr, 0, nullptr, SIZEOF_ARRAY(g_CaptureRanges), g_CaptureRanges, KSPIN_DATAFLOW_OUT,
      KSPIN_COMMUNICATION_SINK, &KSCATEGORY_AUDIO, &KSAUDFNAME_RECORDING_CONTROL, 0}},
};
static PCCONNECTION_DESCRIPTOR g_WaveConnections[] = {{PCFILTER_NODE, 0, PCFILTER_NODE, 1}};
static PCFILTER_DESCRIPTOR g_WaveFilter = {
    0, nullptr, sizeof(PCPIN_DESCRIPTOR), SIZEOF_ARRAY(g_WavePins), g_WavePins, 0, 0, nullptr,
    SIZEOF_ARRAY(g_WaveConnections), g_WaveConnections, 0, nullptr};

// Topology filter: pin 0 = the (virtual) microphone jack, pin 1 = bridge to the wave filter.
static PCPIN_DESCRIPTOR g_TopoPins[] = {
    {0, 0, 0, nullptr,
     {0, nullptr, 0, nullptr, SIZEOF_ARRAY(g_BridgeRanges), g_BridgeRanges, KSPIN_DATAFLOW_IN,
      KSPIN_COMMUNICATION_NONE, &KSNODETYPE_MICROPHONE, nullptr, 0}},
    {0, 0, 0, nullptr,
     {0, nullptr, 0, nullptr, SIZEOF_ARRAY(g_BridgeRanges), g_BridgeRanges, KSPIN_DATAFLOW_OUT,
      KSPIN_COMMUNICATION_NONE, &KSCATEGORY_AUDIO, nullptr, 0}},
};
static PCCONNECTION_DESCRIPTOR g_TopoConnections[] = {{PCFILTER_NODE, 0, PCFILTER_NODE, 1}};
static PCFILTER_DESCRIPTOR g_TopoFilter = {
    0, nullptr, sizeof(PCPIN_DESCRIPTOR), SIZEOF_ARRAY(g_TopoPins), g_TopoPins, 0, 0, nullptr,
    SIZEOF_ARRAY(g_TopoConnections), g_TopoConnections, 0, nullptr};

// ---- the capture stream --------------------------------------------------------------------

class KrispStream : public IMiniportWaveRTStream, public CUnknown {
public:
    DECLARE_STD_UNKNOWN();
    KrispStream(PUNKNOWN outer) : CUnknown(outer) {}
    ~KrispStream();
    NTSTATUS Init(PPORTWAVERTSTREAM port);
    IMP_IMiniportWaveRTStream;

private:
    static KDEFERRED_ROUTINE TimerDpc;
    void Service();

    PPORTWAVERTSTREAM m_Port = nullptr;
    PMDL m_BufferMdl = nullptr;
    float *m_Buffer = nullptr;
    ULONG m_BufferBytes = 0;
    ULONG m_Position = 0; // bytes, within the cyclic buffer
    ULONGLONG m_LinearPosition = 0;
    KSSTATE m_State = KSSTATE_STOP;
    KTIMER m_Timer;
    KDPC m_Dpc;
    LARGE_INTEGER m_LastCounter = {};
    LARGE_INTEGER m_Frequency = {};
    ULONGLONG m_FrameRemainder = 0; // counter ticks * rate not yet turned into frames
    krisp_ring_reader m_Reader = {};
    bool m_Attached = false;
    ULONG m_AttachBackoff = 0;
};

NTSTATUS KrispStream::Init(PPORTWAVERTSTREAM port)
{
    m_Port = port;
    m_Port->AddRef();
    KeInitializeTimerEx(&m_Timer, NotificationTimer);
    KeInitializeDpc(&m_Dpc, TimerDpc, this);
    return STATUS_SUCCESS;
}

KrispStream::~KrispStream()
{
    KeCancelTimer(&m_Timer);
    KeFlushQueuedDpcs();
    if (m_BufferMdl) {
        m_Port->UnmapAllocatedPages(m_Buffer, m_BufferMdl);
        m_Port->FreePagesFromMdl(m_BufferMdl);
    }
    if (m_Port) m_Port->Release();
}

STDMETHODIMP_(NTSTATUS) KrispStream::NonDelegatingQueryInterface(REFIID iid, PVOID *out)
{
    if (IsEqualGUIDAligned(iid, IID_IUnknown) || IsEqualGUIDAligned(iid, IID_IMiniportWaveRTStream)) {
        *out = PVOID(PMINIPORTWAVERTSTREAM(this));
        PUNKNOWN(*out)->AddRef();
        return STATUS_SUCCESS;
    }
    *out = nullptr;
    return STATUS_INVALID_PARAMETER;
}

STDMETHODIMP_(NTSTATUS) KrispStream::AllocateAudioBuffer(ULONG requested, PMDL *mdl, ULONG *size, ULONG *offset,
                                                         MEMORY_CACHING_TYPE *caching)
{
    ULONG frameBytes = KRISP_CHANNELS * sizeof(float);
    ULONG bytes = (requested / frameBytes) * frameBytes;
    if (bytes == 0) bytes = KRISP_RATE / 100 * frameBytes * 4; // 40 ms default
    PHYSICAL_ADDRESS low = {}, high = {}, skip = {};
    high.QuadPart = MAXULONGLONG;
    m_BufferMdl = m_Port->AllocatePagesForMdl(high, bytes);
    if (!m_BufferMdl) return STATUS_INSUFFICIENT_RESOURCES;
    UNREFERENCED_PARAMETER(low); UNREFERENCED_PARAMETER(skip);
    m_Buffer = (float *)m_Port->MapAllocatedPages(m_BufferMdl, MmCached);
    m_BufferBytes = bytes;
    RtlZeroMemory(m_Buffer, bytes);
    *mdl = m_BufferMdl;
    *size = bytes;
    *offset = 0;
    *caching = MmCached;
    return STATUS_SUCCESS;
}

STDMETHODIMP_(VOID) KrispStream::FreeAudioBuffer(PMDL mdl, ULONG size)
{
    UNREFERENCED_PARAMETER(size);
    if (mdl && mdl == m_BufferMdl) {
        m_Port->UnmapAllocatedPages(m_Buffer, m_BufferMdl);
        m_Port->FreePagesFromMdl(m_BufferMdl);
        m_BufferMdl = nullptr;
        m_Buffer = nullptr;
    }
}

STDMETHODIMP_(VOID) KrispStream::GetHWLatency(KSRTAUDIO_HWLATENCY *latency)
{
    latency->FifoSize = 0;
    latency->ChipsetDelay = 0;
    latency->CodecDelay = 0;
}

STDMETHODIMP_(NTSTATUS) KrispStream::GetPositionRegister(KSRTAUDIO_HWREGISTER *) { return STATUS_NOT_SUPPORTED; }
STDMETHODIMP_(NTSTATUS) KrispStream::GetClockRegister(KSRTAUDIO_HWREGISTER *) { return STATUS_NOT_SUPPORTED; }

STDMETHODIMP_(NTSTATUS) KrispStream::GetPosition(KSAUDIO_POSITION *position)
{
    // Capture: both positions are where the next frame will be written.
    position->PlayOffset = m_Position;
    position->WriteOffset = m_Position;
    return STATUS_SUCCESS;
}

STDMETHODIMP_(NTSTATUS) KrispStream::SetFormat(PKSDATAFORMAT) { return STATUS_NOT_SUPPORTED; }

STDMETHODIMP_(NTSTATUS) KrispStream::SetState(KSSTATE state)
{
    if (state == KSSTATE_RUN && m_State != KSSTATE_RUN) {
        m_LastCounter = KeQueryPerformanceCounter(&m_Frequency);
        m_FrameRemainder = 0;
        if (m_Attached) krisp_ring_reader_restart(&m_Reader); // queued audio is stale
        LARGE_INTEGER due;
        due.QuadPart = -10000LL * KRISP_DPC_MS;
        KeSetTimerEx(&m_Timer, due, KRISP_DPC_MS, &m_Dpc);
    } else if (state != KSSTATE_RUN && m_State == KSSTATE_RUN) {
        KeCancelTimer(&m_Timer);
        KeFlushQueuedDpcs();
    }
    if (state == KSSTATE_STOP) {
        m_Position = 0;
        m_LinearPosition = 0;
    }
    m_State = state;
    return STATUS_SUCCESS;
}

void KrispStream::TimerDpc(PKDPC, PVOID ctx, PVOID, PVOID) { static_cast<KrispStream *>(ctx)->Service(); }

// DISPATCH_LEVEL: no allocation, no paging, no waiting.
void KrispStream::Service()
{
    if (!m_Buffer || m_BufferBytes == 0) return;
    LARGE_INTEGER now = KeQueryPerformanceCounter(nullptr);
    ULONGLONG ticks = (ULONGLONG)(now.QuadPart - m_LastCounter.QuadPart);
    m_LastCounter = now;
    ULONGLONG scaled = ticks * KRISP_RATE + m_FrameRemainder;
    ULONG frames = (ULONG)(scaled / (ULONGLONG)m_Frequency.QuadPart);
    m_FrameRemainder = scaled % (ULONGLONG)m_Frequency.QuadPart;

    if (!m_Attached && g_Ring.view && m_AttachBackoff-- == 0) {
        // Validation is atomics and arithmetic: fine here. Retry every ~250 ms until the app
        // has published a valid header; refusals (version, garbage) simply keep us silent.
        m_AttachBackoff = 25;
        m_Attached = krisp_ring_reader_attach(&m_Reader, g_Ring.view, g_Ring.viewSize) == KRISP_RING_OK &&
                     m_Reader.info.sample_rate == KRISP_RATE && m_Reader.info.channels == KRISP_CHANNELS;
    }
    const ULONG frameBytes = KRISP_CHANNELS * sizeof(float);
    const ULONG bufferFrames = m_BufferBytes / frameBytes;
    while (frames > 0) {
        ULONG at = m_Position / frameBytes;
        ULONG chunk = min(frames, bufferFrames - at);
        float *dst = m_Buffer + (SIZE_T)at * KRISP_CHANNELS;
        if (m_Attached) {
            uint32_t audio = 0;
            if (krisp_ring_read(&m_Reader, dst, chunk, &audio) == KRISP_READ_NEEDS_REOPEN) m_Attached = false;
        } else {
            RtlZeroMemory(dst, (SIZE_T)chunk * frameBytes);
        }
        m_Position = ((at + chunk) % bufferFrames) * frameBytes;
        m_LinearPosition += (ULONGLONG)chunk * frameBytes;
        frames -= chunk;
    }
}

// ---- the WaveRT miniport -------------------------------------------------------------------

class KrispWave : public IMiniportWaveRT, public CUnknown {
public:
    DECLARE_STD_UNKNOWN();
    DEFINE_STD_CONSTRUCTOR(KrispWave);
    IMP_IMiniportWaveRT;
};

STDMETHODIMP_(NTSTATUS) KrispWave::NonDelegatingQueryInterface(REFIID iid, PVOID *out)
{
    if (IsEqualGUIDAligned(iid, IID_IUnknown) || IsEqualGUIDAligned(iid, IID_IMiniport) ||
        IsEqualGUIDAligned(iid, IID_IMiniportWaveRT)) {
        *out = PVOID(PMINIPORTWAVERT(this));
        PUNKNOWN(*out)->AddRef();
        return STATUS_SUCCESS;
    }
    *out = nullptr;
    return STATUS_INVALID_PARAMETER;
}

STDMETHODIMP_(NTSTATUS) KrispWave::Init(PUNKNOWN, PRESOURCELIST, PPORTWAVERT) { return STATUS_SUCCESS; }

STDMETHODIMP_(NTSTATUS) KrispWave::GetDescription(PPCFILTER_DESCRIPTOR *description)
{
    *description = &g_WaveFilter;
    return STATUS_SUCCESS;
}

STDMETHODIMP_(NTSTATUS) KrispWave::DataRangeIntersection(ULONG, PKSDATARANGE, PKSDATARANGE, ULONG, PVOID, PULONG)
{
    return STATUS_NOT_IMPLEMENTED; // PortCls' default intersection handles our single fixed range
}

STDMETHODIMP_(NTSTATUS) KrispWave::NewStream(PMINIPORTWAVERTSTREAM *stream, PPORTWAVERTSTREAM port, ULONG pin,
                                             BOOLEAN capture, PKSDATAFORMAT format)
{
    UNREFERENCED_PARAMETER(format);
    if (pin != 1 || !capture) return STATUS_INVALID_PARAMETER;
    KrispStream *s = new (POOL_FLAG_NON_PAGED, KRISP_POOLTAG) KrispStream(nullptr);
    if (!s) return STATUS_INSUFFICIENT_RESOURCES;
    s->AddRef();
    NTSTATUS status = s->Init(port);
    if (!NT_SUCCESS(status)) { s->Release(); return status; }
    *stream = PMINIPORTWAVERTSTREAM(s);
    return STATUS_SUCCESS;
}

STDMETHODIMP_(NTSTATUS) KrispWave::GetDeviceDescription(PDEVICE_DESCRIPTION description)
{
    RtlZeroMemory(description, sizeof(*description));
    description->Version = DEVICE_DESCRIPTION_VERSION;
    description->Master = TRUE;
    description->ScatterGather = TRUE;
    description->Dma32BitAddresses = TRUE;
    description->InterfaceType = PNPBus;
    description->MaximumLength = 0xFFFFFFFF;
    return STATUS_SUCCESS;
}

// ---- the topology miniport (no nodes: a fixed virtual microphone) ---------------------------

class KrispTopo : public IMiniportTopology, public CUnknown {
public:
    DECLARE_STD_UNKNOWN();
    DEFINE_STD_CONSTRUCTOR(KrispTopo);
    IMP_IMiniportTopology;
};

STDMETHODIMP_(NTSTATUS) KrispTopo::NonDelegatingQueryInterface(REFIID iid, PVOID *out)
{
    if (IsEqualGUIDAligned(iid, IID_IUnknown) || IsEqualGUIDAligned(iid, IID_IMiniport) ||
        IsEqualGUIDAligned(iid, IID_IMiniportTopology)) {
        *out = PVOID(PMINIPORTTOPOLOGY(this));
        PUNKNOWN(*out)->AddRef();
        return STATUS_SUCCESS;
    }
    *out = nullptr;
    return STATUS_INVALID_PARAMETER;
}
STDMETHODIMP_(NTSTATUS) KrispTopo::Init(PUNKNOWN, PRESOURCELIST, PPORTTOPOLOGY) { return STATUS_SUCCESS; }
STDMETHODIMP_(NTSTATUS) KrispTopo::GetDescription(PPCFILTER_DESCRIPTOR *description)
{
    *description = &g_TopoFilter;
    return STATUS_SUCCESS;
}
STDMETHODIMP_(NTSTATUS) KrispTopo::DataRangeIntersection(ULONG, PKSDATARANGE, PKSDATARANGE, ULONG, PVOID, PULONG)
{
    return STATUS_NOT_IMPLEMENTED;
}

// ---- adapter ---------------------------------------------------------------------------------

template <class Miniport>
static NTSTATUS InstallSubdevice(PDEVICE_OBJECT device, PIRP irp, PWSTR name, REFGUID portClass,
                                 PUNKNOWN *outPort)
{
    PPORT port = nullptr;
    NTSTATUS status = PcNewPort(&port, portClass);
    if (!NT_SUCCESS(status)) return status;
    Miniport *miniport = new (POOL_FLAG_NON_PAGED, KRISP_POOLTAG) Miniport(nullptr);
    if (!miniport) { port->Release(); return STATUS_INSUFFICIENT_RESOURCES; }
    miniport->AddRef();
    status = port->Init(device, irp, PUNKNOWN(PMINIPORT(miniport)), nullptr, nullptr);
    if (NT_SUCCESS(status)) status = PcRegisterSubdevice(device, name, port);
    miniport->Release();
    if (NT_SUCCESS(status)) *outPort = port; else port->Release();
    return status;
}

static NTSTATUS StartDevice(PDEVICE_OBJECT device, PIRP irp, PRESOURCELIST resources)
{
    UNREFERENCED_PARAMETER(resources);
    NTSTATUS status = KrispRing_Create();
    if (!NT_SUCCESS(status)) return status;
    PUNKNOWN wave = nullptr, topo = nullptr;
    status = InstallSubdevice<KrispTopo>(device, irp, (PWSTR)L"TopologyKrispMic", CLSID_PortTopology, &topo);
    if (NT_SUCCESS(status))
        status = InstallSubdevice<KrispWave>(device, irp, (PWSTR)L"WaveKrispMic", CLSID_PortWaveRT, &wave);
    if (NT_SUCCESS(status)) // topology bridge (pin 1) -> wave bridge (pin 0)
        status = PcRegisterPhysicalConnection(device, topo, 1, wave, 0);
    if (wave) wave->Release();
    if (topo) topo->Release();
    return status;
}

static NTSTATUS AddDevice(PDRIVER_OBJECT driver, PDEVICE_OBJECT pdo)
{
    return PcAddAdapterDevice(driver, pdo, PCPFNSTARTDEVICE(StartDevice), 2, 0);
}

static DRIVER_UNLOAD DriverUnload;
static PDRIVER_UNLOAD g_PcUnload;
static void DriverUnload(PDRIVER_OBJECT driver)
{
    KrispRing_Destroy();
    if (g_PcUnload) g_PcUnload(driver);
}

extern "C" DRIVER_INITIALIZE DriverEntry;
extern "C" NTSTATUS DriverEntry(PDRIVER_OBJECT driver, PUNICODE_STRING registryPath)
{
    ExInitializeDriverRuntime(DrvRtPoolNxOptIn);
    NTSTATUS status = PcInitializeAdapterDriver(driver, registryPath, PDRIVER_ADD_DEVICE(AddDevice));
    if (NT_SUCCESS(status)) {
        g_PcUnload = driver->DriverUnload;
        driver->DriverUnload = DriverUnload;
    }
    return status;
}
