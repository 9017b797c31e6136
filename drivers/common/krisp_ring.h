/*
 * krisp_ring.h — the C side of the Krisp shared-memory ring, protocol version 1.
 *
 * The app (Rust, crates/krisp-vdev/src/shm) writes; the drivers (macOS AudioServerPlugIn,
 * Windows WaveRT miniport) read. The normative description is drivers/PROTOCOL.md. This
 * header must agree byte for byte with crates/krisp-vdev/src/shm/layout.rs: both sides assert
 * every offset at compile time, and crates/krisp-vdev/tests/c_reader.rs compiles a C reader
 * against this file on Linux and checks it against the Rust writer.
 *
 * Everything here is header-only, allocation-free and lock-free, so krisp_ring_read() may be
 * called from a realtime IO callback (Core Audio DoIOOperation, a WaveRT timer/DPC).
 *
 * Atomics: the shared fields are plain integers in memory. They are accessed with the
 * compiler's atomic builtins (GCC/Clang: __atomic_*; MSVC/WDK: ReadAcquire64 & co.), which
 * is what the Rust side's AtomicU64/AtomicU32 compile to. Acquire/release pairs are the same
 * as in Rust (see PROTOCOL.md, "Memory ordering").
 */
#ifndef KRISP_RING_H
#define KRISP_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "KRSPRING" as a little-endian u64: bytes 'K','R','S','P','R','I','N','G'. */
#define KRISP_RING_MAGIC 0x474E49525053524BULL
#define KRISP_RING_VERSION 1u
#define KRISP_RING_HEADER_BYTES 512u
#define KRISP_RING_FORMAT_F32_INTERLEAVED 1u

#define KRISP_RING_STATE_INIT 0u
#define KRISP_RING_STATE_READY 1u
#define KRISP_RING_STATE_RETIRED 2u

#define KRISP_RING_MIN_SAMPLE_RATE 8000u
#define KRISP_RING_MAX_SAMPLE_RATE 384000u
#define KRISP_RING_MAX_CHANNELS 8u
#define KRISP_RING_MIN_CAPACITY 64u
#define KRISP_RING_MAX_CAPACITY (1u << 22)

/* ---- atomics ------------------------------------------------------------------------------ */
#if defined(__GNUC__) || defined(__clang__)
#define KRISP_LOAD64_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define KRISP_LOAD64_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define KRISP_LOAD32_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define KRISP_LOAD32_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define KRISP_STORE64_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define KRISP_STORE64_RLX(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define KRISP_FENCE_ACQ() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#ifdef __cplusplus
#define KRISP_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define KRISP_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif
#define KRISP_INLINE static inline
#elif defined(_MSC_VER)
/* WDK / MSVC: wdm.h (kernel) or windows.h (user mode) provide these barriered accessors. On
 * x64 and ARM64 they compile to plain loads/stores plus the needed barriers. */
#define KRISP_LOAD64_ACQ(p) ((uint64_t)ReadAcquire64((volatile LONG64 *)(p)))
#define KRISP_LOAD64_RLX(p) ((uint64_t)ReadNoFence64((volatile LONG64 *)(p)))
#define KRISP_LOAD32_ACQ(p) ((uint32_t)ReadAcquire((volatile LONG *)(p)))
#define KRISP_LOAD32_RLX(p) ((uint32_t)ReadNoFence((volatile LONG *)(p)))
#define KRISP_STORE64_REL(p, v) WriteRelease64((volatile LONG64 *)(p), (LONG64)(v))
#define KRISP_STORE64_RLX(p, v) WriteNoFence64((volatile LONG64 *)(p), (LONG64)(v))
#define KRISP_FENCE_ACQ() MemoryBarrier()
#ifdef __cplusplus
#define KRISP_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define KRISP_STATIC_ASSERT(c, m) _Static_assert(c, m) /* /std:c11 or later */
#endif
#define KRISP_INLINE static __forceinline
#else
#error "krisp_ring.h needs GCC/Clang atomic builtins or the MSVC/WDK barriered accessors"
#endif

/* ---- layout ------------------------------------------------------------------------------- */
/* Three 128-byte blocks (config, writer-owned, reader-owned) and a reserved block, then
 * capacity_frames * channels float samples, interleaved, little-endian. */
typedef struct krisp_ring_header {
    /* config block: written by the writer only while generation is odd */
    uint64_t magic;              /*   0 */
    uint32_t version;            /*   8 */
    uint32_t header_bytes;       /*  12 */
    uint32_t sample_rate;        /*  16 */
    uint32_t channels;           /*  20 */
    uint32_t format;             /*  24 */
    uint32_t capacity_frames;    /*  28 power of two */
    uint32_t target_fill_frames; /*  32 */
    uint32_t max_fill_frames;    /*  36 */
    uint64_t total_bytes;        /*  40 */
    uint64_t generation;         /*  48 seqlock: odd while being rewritten */
    uint32_t state;              /*  56 */
    uint32_t checksum;           /*  60 FNV-1a 32 of the config fields */
    uint64_t reserved0[8];       /*  64 */
    /* writer block: stored only by the writer */
    uint64_t write_index;           /* 128 frames ever written (monotonic) */
    uint64_t heartbeat;             /* 136 changes whenever the writer is alive */
    uint64_t writer_dropped_frames; /* 144 frames dropped because the ring was full */
    uint64_t anchor_seq;            /* 152 seqlock for the anchor pair */
    uint64_t anchor_frame;          /* 160 */
    uint64_t anchor_host_ns;        /* 168 */
    uint64_t writer_pid;            /* 176 diagnostics only */
    uint64_t reserved1[9];          /* 184 */
    /* reader block: stored only by the reader */
    uint64_t read_index;       /* 256 frames ever consumed or skipped (monotonic) */
    uint64_t reader_heartbeat; /* 264 reader's clock, in frames */
    uint64_t underrun_frames;  /* 272 */
    uint64_t overrun_frames;   /* 280 */
    uint64_t resyncs;          /* 288 */
    uint64_t reserved2[11];    /* 296 */
    uint64_t reserved3[16];    /* 384 */
} krisp_ring_header;

KRISP_STATIC_ASSERT(sizeof(krisp_ring_header) == 512, "header is 512 bytes");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, version) == 8, "version");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, header_bytes) == 12, "header_bytes");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, sample_rate) == 16, "sample_rate");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, channels) == 20, "channels");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, format) == 24, "format");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, capacity_frames) == 28, "capacity_frames");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, target_fill_frames) == 32, "target");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, max_fill_frames) == 36, "max_fill");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, total_bytes) == 40, "total_bytes");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, generation) == 48, "generation");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, state) == 56, "state");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, checksum) == 60, "checksum");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, write_index) == 128, "write_index");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, heartbeat) == 136, "heartbeat");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, writer_dropped_frames) == 144, "dropped");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, anchor_seq) == 152, "anchor_seq");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, anchor_frame) == 160, "anchor_frame");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, anchor_host_ns) == 168, "anchor_host_ns");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, writer_pid) == 176, "writer_pid");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, read_index) == 256, "read_index");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, reader_heartbeat) == 264, "reader_heartbeat");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, underrun_frames) == 272, "underrun");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, overrun_frames) == 280, "overrun");
KRISP_STATIC_ASSERT(offsetof(krisp_ring_header, resyncs) == 288, "resyncs");
KRISP_STATIC_ASSERT(sizeof(float) == 4, "f32 samples");

/* ---- validation --------------------------------------------------------------------------- */
typedef enum krisp_ring_status {
    KRISP_RING_OK = 0,
    KRISP_RING_NOT_READY = 1,       /* being initialised: retry shortly */
    KRISP_RING_BAD_MAGIC = 2,       /* garbage or not ours: refuse */
    KRISP_RING_VERSION_MISMATCH = 3,/* other protocol version: refuse, log both versions */
    KRISP_RING_RETIRED = 4,         /* writer abandoned the segment: reopen by name */
    KRISP_RING_BAD_STATE = 5,
    KRISP_RING_BAD_FORMAT = 6,
    KRISP_RING_BAD_CHECKSUM = 7,    /* torn or corrupted header */
    KRISP_RING_BAD_GEOMETRY = 8,
    KRISP_RING_TOO_SMALL = 9        /* header claims more memory than is mapped */
} krisp_ring_status;

/* The validated, immutable part of a header (a local copy: never re-read from shm). */
typedef struct krisp_ring_info {
    uint32_t version, sample_rate, channels, capacity_frames, target_fill_frames, max_fill_frames;
    uint64_t total_bytes, generation;
} krisp_ring_info;

KRISP_INLINE uint32_t krisp_fnv_feed(uint32_t h, uint64_t v, int nbytes) {
    for (int i = 0; i < nbytes; i++) {
        h ^= (uint32_t)((v >> (8 * i)) & 0xffu);
        h *= 0x01000193u;
    }
    return h;
}

/* FNV-1a 32 over the config fields' little-endian bytes, in field order (as the Rust side). */
KRISP_INLINE uint32_t krisp_ring_checksum(const krisp_ring_info *i) {
    uint32_t h = 0x811c9dc5u;
    h = krisp_fnv_feed(h, KRISP_RING_MAGIC, 8);
    h = krisp_fnv_feed(h, i->version, 4);
    h = krisp_fnv_feed(h, KRISP_RING_HEADER_BYTES, 4);
    h = krisp_fnv_feed(h, i->sample_rate, 4);
    h = krisp_fnv_feed(h, i->channels, 4);
    h = krisp_fnv_feed(h, KRISP_RING_FORMAT_F32_INTERLEAVED, 4);
    h = krisp_fnv_feed(h, i->capacity_frames, 4);
    h = krisp_fnv_feed(h, i->target_fill_frames, 4);
    h = krisp_fnv_feed(h, i->max_fill_frames, 4);
    h = krisp_fnv_feed(h, i->total_bytes, 8);
    h = krisp_fnv_feed(h, i->generation, 8);
    return h;
}

/* Reads and checks the header. `mapped_len` is what the caller actually mapped: the header's
 * own size claim is never trusted for memory bounds. Realtime-safe. */
KRISP_INLINE krisp_ring_status krisp_ring_validate(const krisp_ring_header *h, size_t mapped_len,
                                                   krisp_ring_info *out) {
    if (mapped_len < KRISP_RING_HEADER_BYTES) return KRISP_RING_TOO_SMALL;
    krisp_ring_info i;
    uint64_t gen = KRISP_LOAD64_ACQ(&h->generation);
    uint32_t state = KRISP_LOAD32_RLX(&h->state);
    uint64_t magic = KRISP_LOAD64_RLX(&h->magic);
    i.version = KRISP_LOAD32_RLX(&h->version);
    uint32_t header_bytes = KRISP_LOAD32_RLX(&h->header_bytes);
    uint32_t format = KRISP_LOAD32_RLX(&h->format);
    i.sample_rate = KRISP_LOAD32_RLX(&h->sample_rate);
    i.channels = KRISP_LOAD32_RLX(&h->channels);
    i.capacity_frames = KRISP_LOAD32_RLX(&h->capacity_frames);
    i.target_fill_frames = KRISP_LOAD32_RLX(&h->target_fill_frames);
    i.max_fill_frames = KRISP_LOAD32_RLX(&h->max_fill_frames);
    i.total_bytes = KRISP_LOAD64_RLX(&h->total_bytes);
    uint32_t sum = KRISP_LOAD32_RLX(&h->checksum);
    KRISP_FENCE_ACQ();
    uint64_t gen2 = KRISP_LOAD64_RLX(&h->generation);
    i.generation = gen;

    if (magic == 0 && state == KRISP_RING_STATE_INIT) return KRISP_RING_NOT_READY;
    if (magic != KRISP_RING_MAGIC) return KRISP_RING_BAD_MAGIC;
    if (i.version != KRISP_RING_VERSION) { if (out) *out = i; return KRISP_RING_VERSION_MISMATCH; }
    if ((gen & 1u) != 0 || gen2 != gen) return KRISP_RING_NOT_READY;
    if (state == KRISP_RING_STATE_RETIRED) return KRISP_RING_RETIRED;
    if (state == KRISP_RING_STATE_INIT) return KRISP_RING_NOT_READY;
    if (state != KRISP_RING_STATE_READY) return KRISP_RING_BAD_STATE;
    if (header_bytes != KRISP_RING_HEADER_BYTES) return KRISP_RING_BAD_GEOMETRY;
    if (format != KRISP_RING_FORMAT_F32_INTERLEAVED) return KRISP_RING_BAD_FORMAT;
    if (sum != krisp_ring_checksum(&i)) return KRISP_RING_BAD_CHECKSUM;
    if (i.sample_rate < KRISP_RING_MIN_SAMPLE_RATE || i.sample_rate > KRISP_RING_MAX_SAMPLE_RATE ||
        i.channels == 0 || i.channels > KRISP_RING_MAX_CHANNELS ||
        i.capacity_frames < KRISP_RING_MIN_CAPACITY || i.capacity_frames > KRISP_RING_MAX_CAPACITY ||
        (i.capacity_frames & (i.capacity_frames - 1u)) != 0 || i.target_fill_frames == 0 ||
        i.max_fill_frames <= i.target_fill_frames || i.max_fill_frames > i.capacity_frames)
        return KRISP_RING_BAD_GEOMETRY;
    if (i.total_bytes != (uint64_t)KRISP_RING_HEADER_BYTES +
                             (uint64_t)i.capacity_frames * i.channels * sizeof(float))
        return KRISP_RING_BAD_GEOMETRY;
    if (i.total_bytes > (uint64_t)mapped_len) return KRISP_RING_TOO_SMALL;
    if (out) *out = i;
    return KRISP_RING_OK;
}

KRISP_INLINE const char *krisp_ring_status_text(krisp_ring_status s) {
    switch (s) {
    case KRISP_RING_OK: return "ok";
    case KRISP_RING_NOT_READY: return "header being initialised (not ready)";
    case KRISP_RING_BAD_MAGIC: return "bad magic: not a Krisp ring or corrupted";
    case KRISP_RING_VERSION_MISMATCH: return "protocol version mismatch: update app and driver together";
    case KRISP_RING_RETIRED: return "segment retired by the writer: reopen";
    case KRISP_RING_BAD_STATE: return "unknown header state: corrupted";
    case KRISP_RING_BAD_FORMAT: return "unsupported sample format";
    case KRISP_RING_BAD_CHECKSUM: return "header checksum mismatch: torn or corrupted";
    case KRISP_RING_BAD_GEOMETRY: return "inconsistent geometry";
    case KRISP_RING_TOO_SMALL: return "segment smaller than the header claims";
    }
    return "unknown";
}

/* ---- reader ------------------------------------------------------------------------------- */
typedef enum krisp_read_state {
    KRISP_READ_PLAYING = 0,
    KRISP_READ_PREFILLING = 1,
    KRISP_READ_UNDERRUN = 2,
    KRISP_READ_WRITER_GONE = 3,
    KRISP_READ_NOT_READY = 4,
    KRISP_READ_NEEDS_REOPEN = 5
} krisp_read_state;

/* The reader's private state; lives in the driver, never in shared memory. */
typedef struct krisp_ring_reader {
    krisp_ring_header *hdr;
    const float *samples;
    size_t mapped_len;
    krisp_ring_info info;
    uint64_t r, clock, last_heartbeat, last_heartbeat_at, stale_after, last_dropped;
    int resync_pending, prefilling, writer_gone, needs_reopen;
    uint64_t played_frames, underrun_frames, overrun_frames, resyncs, discarded_frames,
        writer_gone_events;
} krisp_ring_reader;

/* Attaches to a mapping (not realtime: call from the control thread). On success the reader
 * will discard whatever is queued at its first read and prefill (no stale audio). */
KRISP_INLINE krisp_ring_status krisp_ring_reader_attach(krisp_ring_reader *rd, void *base,
                                                        size_t mapped_len) {
    krisp_ring_info info;
    krisp_ring_status st = krisp_ring_validate((const krisp_ring_header *)base, mapped_len, &info);
    if (st != KRISP_RING_OK) return st;
    { /* zero the private state without memset (no CRT in kernel builds) */
        unsigned char *b = (unsigned char *)rd;
        for (size_t k = 0; k < sizeof(*rd); k++) b[k] = 0;
    }
    rd->hdr = (krisp_ring_header *)base;
    rd->samples = (const float *)((const unsigned char *)base + KRISP_RING_HEADER_BYTES);
    rd->mapped_len = mapped_len;
    rd->info = info;
    rd->r = KRISP_LOAD64_RLX(&rd->hdr->read_index);
    rd->last_heartbeat = KRISP_LOAD64_ACQ(&rd->hdr->heartbeat);
    rd->last_dropped = KRISP_LOAD64_ACQ(&rd->hdr->writer_dropped_frames);
    rd->stale_after = info.sample_rate / 5; /* 200 ms of the reader's own clock */
    rd->resync_pending = 1;
    rd->prefilling = 1;
    return KRISP_RING_OK;
}

/* Fills `out` (frames * channels floats) with the next frames or silence. Never blocks,
 * allocates or fails. Returns what happened; *audio_frames gets the count of real frames at
 * the start of `out`. Same rules as RingReader::read in Rust (PROTOCOL.md, "Reader"). */
KRISP_INLINE krisp_read_state krisp_ring_read(krisp_ring_reader *rd, float *out, uint32_t frames,
                                              uint32_t *audio_frames) {
    const uint32_t ch = rd->info.channels;
    uint32_t avail = 0;
    krisp_read_state result = KRISP_READ_PLAYING;
    krisp_ring_header *h = rd->hdr;
    rd->clock += frames;

    if (rd->needs_reopen) { result = KRISP_READ_NEEDS_REOPEN; goto done; }
    {
        uint64_t gen = KRISP_LOAD64_ACQ(&h->generation);
        uint32_t state = KRISP_LOAD32_ACQ(&h->state);
        if (state == KRISP_RING_STATE_RETIRED) {
            rd->needs_reopen = 1; result = KRISP_READ_NEEDS_REOPEN; goto done;
        }
        if (gen != rd->info.generation || state != KRISP_RING_STATE_READY) {
            krisp_ring_info ni;
            if (krisp_ring_validate(h, rd->mapped_len, &ni) != KRISP_RING_OK) {
                result = KRISP_READ_NOT_READY; goto done;
            }
            if (ni.capacity_frames != rd->info.capacity_frames || ni.channels != ch ||
                ni.sample_rate != rd->info.sample_rate) {
                rd->needs_reopen = 1; result = KRISP_READ_NEEDS_REOPEN; goto done;
            }
            rd->info = ni;
            rd->resync_pending = 1;
        }
    }
    {
        uint64_t beat = KRISP_LOAD64_ACQ(&h->heartbeat);
        if (beat != rd->last_heartbeat) {
            rd->last_heartbeat = beat;
            rd->last_heartbeat_at = rd->clock;
            if (rd->writer_gone) { rd->writer_gone = 0; rd->resync_pending = 1; }
        } else if (rd->clock - rd->last_heartbeat_at > rd->stale_after) {
            if (!rd->writer_gone) { rd->writer_gone = 1; rd->writer_gone_events++; }
            result = KRISP_READ_WRITER_GONE; goto done;
        }
    }
    {
        const uint64_t cap = rd->info.capacity_frames;
        uint64_t w = KRISP_LOAD64_ACQ(&h->write_index);
        uint64_t dropped = KRISP_LOAD64_ACQ(&h->writer_dropped_frames);
        uint64_t fill = w - rd->r;
        if (rd->resync_pending || fill > cap || dropped != rd->last_dropped) {
            rd->last_dropped = dropped;
            if (fill <= cap) rd->discarded_frames += fill;
            rd->r = w;
            fill = 0;
            rd->resync_pending = 0;
            rd->prefilling = 1;
            rd->resyncs++;
            KRISP_STORE64_RLX(&h->resyncs, rd->resyncs);
        }
        if (fill > rd->info.max_fill_frames) {
            uint64_t skip = fill - rd->info.target_fill_frames;
            rd->r += skip;
            fill = rd->info.target_fill_frames;
            rd->overrun_frames += skip;
            KRISP_STORE64_RLX(&h->overrun_frames, rd->overrun_frames);
        }
        if (rd->prefilling) {
            if (fill >= rd->info.target_fill_frames) {
                rd->prefilling = 0;
            } else {
                KRISP_STORE64_REL(&h->read_index, rd->r);
                result = KRISP_READ_PREFILLING; goto done;
            }
        }
        avail = fill < frames ? (uint32_t)fill : frames;
        {
            uint32_t slot = (uint32_t)(rd->r & (cap - 1));
            uint32_t first = avail < (uint32_t)cap - slot ? avail : (uint32_t)cap - slot;
            const float *src = rd->samples;
            for (uint32_t i = 0; i < first * ch; i++) out[i] = src[(size_t)slot * ch + i];
            for (uint32_t i = 0; i < (avail - first) * ch; i++) out[first * ch + i] = src[i];
            /* The writer is another process: never pass NaN/Inf to the device. */
            for (uint32_t i = 0; i < avail * ch; i++) {
                float v = out[i];
                if (!(v == v) || v > 3.4e38f || v < -3.4e38f) out[i] = 0.0f;
            }
        }
        rd->r += avail;
        KRISP_STORE64_REL(&h->read_index, rd->r);
        rd->played_frames += avail;
        if (avail < frames) {
            rd->underrun_frames += frames - avail;
            KRISP_STORE64_RLX(&h->underrun_frames, rd->underrun_frames);
            rd->prefilling = 1;
            result = KRISP_READ_UNDERRUN;
        }
    }
done:
    for (uint32_t i = avail * ch; i < frames * ch; i++) out[i] = 0.0f;
    KRISP_STORE64_RLX(&h->reader_heartbeat, rd->clock);
    if (audio_frames) *audio_frames = avail;
    return result;
}

/* Device (re)starts IO: drop whatever is queued, prefill afresh. */
KRISP_INLINE void krisp_ring_reader_restart(krisp_ring_reader *rd) { rd->resync_pending = 1; }

#ifdef __cplusplus
}
#endif
#endif /* KRISP_RING_H */
