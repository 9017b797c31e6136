/*
 * A minimal C reader built only from krisp_ring.h, used on Linux by
 * crates/krisp-vdev/tests/c_reader.rs to prove the C drivers and the Rust app agree on the
 * layout, the checksum and the index protocol.
 *
 *   c_reader offsets                  print "name offset" for every field
 *   c_reader validate NAME            print the validation status of segment NAME
 *   c_reader drain NAME               read everything queued from the current read index
 *                                     (no resync) and print it as one line of numbers
 *   c_reader play NAME FRAMES PERIOD  attach like a driver (resync + prefill), read PERIOD-frame
 *                                     periods until FRAMES frames of audio arrived, check the
 *                                     counting signal, print a summary
 */
#define _POSIX_C_SOURCE 200809L
#include "krisp_ring.h"

#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define OFF(f) printf("%s %zu\n", #f, offsetof(krisp_ring_header, f))

static void *map(const char *name, size_t *len) {
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) { perror("shm_open"); exit(2); }
    struct stat st;
    if (fstat(fd, &st) != 0) { perror("fstat"); exit(2); }
    *len = (size_t)st.st_size;
    void *p = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "offsets") == 0) {
        OFF(magic); OFF(version); OFF(header_bytes); OFF(sample_rate); OFF(channels); OFF(format);
        OFF(capacity_frames); OFF(target_fill_frames); OFF(max_fill_frames); OFF(total_bytes);
        OFF(generation); OFF(state); OFF(checksum); OFF(write_index); OFF(heartbeat);
        OFF(writer_dropped_frames); OFF(anchor_seq); OFF(anchor_frame); OFF(anchor_host_ns);
        OFF(writer_pid); OFF(read_index); OFF(reader_heartbeat); OFF(underrun_frames);
        OFF(overrun_frames); OFF(resyncs);
        printf("sizeof_header %zu\n", sizeof(krisp_ring_header));
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "validate") == 0) {
        size_t len;
        void *p = map(argv[2], &len);
        krisp_ring_info info;
        krisp_ring_status s = krisp_ring_validate((krisp_ring_header *)p, len, &info);
        printf("status=%d text=\"%s\" version=%u\n", (int)s, krisp_ring_status_text(s),
               s == KRISP_RING_OK || s == KRISP_RING_VERSION_MISMATCH ? info.version : 0u);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "drain") == 0) {
        size_t len;
        void *p = map(argv[2], &len);
        krisp_ring_header *h = (krisp_ring_header *)p;
        krisp_ring_info info;
        krisp_ring_status s = krisp_ring_validate(h, len, &info);
        if (s != KRISP_RING_OK) { printf("refused %s\n", krisp_ring_status_text(s)); return 3; }
        const float *samples = (const float *)((const char *)p + KRISP_RING_HEADER_BYTES);
        uint64_t r = KRISP_LOAD64_RLX(&h->read_index);
        uint64_t w = KRISP_LOAD64_ACQ(&h->write_index);
        printf("rate=%u channels=%u capacity=%u frames=%llu samples=", info.sample_rate,
               info.channels, info.capacity_frames, (unsigned long long)(w - r));
        for (uint64_t i = r; i < w; i++)
            for (uint32_t c = 0; c < info.channels; c++)
                printf("%s%g", (i == r && c == 0) ? "" : ",",
                       (double)samples[(i & (info.capacity_frames - 1)) * info.channels + c]);
        printf("\n");
        KRISP_STORE64_REL(&h->read_index, w);
        return 0;
    }
    if (argc >= 5 && strcmp(argv[1], "play") == 0) {
        size_t len;
        void *p = map(argv[2], &len);
        unsigned long want = strtoul(argv[3], NULL, 10);
        uint32_t period = (uint32_t)strtoul(argv[4], NULL, 10);
        krisp_ring_reader rd;
        krisp_ring_status s;
        while ((s = krisp_ring_reader_attach(&rd, p, len)) == KRISP_RING_NOT_READY) sched_yield();
        if (s != KRISP_RING_OK) { printf("refused %s\n", krisp_ring_status_text(s)); return 3; }
        rd.stale_after = (uint64_t)1 << 40; /* no simulated clock here: never call it gone */
        float *out = calloc((size_t)period * rd.info.channels, sizeof(float));
        unsigned long got = 0, discontinuities = 0, channel_errors = 0;
        float expect = 0.0f;
        printf("attached\n");
        fflush(stdout);
        while (got < want) {
            uint32_t n = 0;
            krisp_ring_read(&rd, out, period, &n);
            for (uint32_t f = 0; f < n; f++) {
                float v = out[f * rd.info.channels];
                if (rd.info.channels > 1 && out[f * rd.info.channels + 1] != -v) channel_errors++;
                if (expect != 0.0f && v != expect) discontinuities++;
                expect = v + 1.0f;
            }
            got += n;
            if (n == 0) sched_yield();
        }
        printf("RESULT played=%lu discontinuities=%lu channel_errors=%lu underrun=%llu overrun=%llu "
               "resyncs=%llu\n",
               got, discontinuities, channel_errors, (unsigned long long)rd.underrun_frames,
               (unsigned long long)rd.overrun_frames, (unsigned long long)rd.resyncs);
        free(out);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of c_reader.c\n");
    return 1;
}
