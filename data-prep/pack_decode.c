/* The decode pipeline's workers: each takes the next file in output order, reads, decodes,
 * resizes (and re-encodes) it into its slot of the bounded ring, and sums its pixels for the
 * metadata's statistics; a file that fails becomes a skip reason, not an error. pack_decode.h
 * says how the slots change hands with the writer. */
#include "pack_decode.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { MAX_NAME_BYTES = 65535 }; /* the record's name field is 16 bits */

static void set_reason(slot *s, const char *name, const char *message) {
    /* Decoder messages start with the name; the report has its own name column. */
    size_t n = strlen(name), m = strlen(message);
    if (m > n + 1 && memcmp(message, name, n) == 0 && message[n] == ':' && message[n + 1] == ' ')
        message += n + 2;
    snprintf(s->reason, sizeof s->reason, "%s", message);
    s->skipped = true;
}

static mt_status read_whole_file(const char *path, worker_state *w, size_t *size) {
    /* Without blocking on a file replaced by a FIFO since the listing. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return MT_FAIL(MT_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return MT_FAIL(MT_ERR_IO, "not a regular file");
    }
    size_t want = (size_t)st.st_size;
    if (want + 1 > w->file_capacity) {
        uint8_t *grown = realloc(w->file, want + 1);
        if (!grown) {
            close(fd);
            return MT_FAIL(MT_ERR_NOMEM, "out of memory for a %zu-byte file", want);
        }
        w->file = grown;
        w->file_capacity = want + 1;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, w->file + got, want - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            mt_status status = n < 0 ? MT_FAIL(MT_ERR_IO, "read error: %s", strerror(errno))
                                     : MT_FAIL(MT_ERR_IO, "file shrank while reading");
            close(fd);
            return status;
        }
        got += (size_t)n;
    }
    close(fd);
    *size = got;
    return MT_OK;
}

/* Per-channel sum and sum of squares of interleaved RGB. 48 lanes (a multiple of 3 and of the
 * vector width) of 32-bit accumulators let the compiler vectorize; they are emptied into 64-bit
 * totals every 4096 rounds, before 4096 * 255^2 could overflow. */
static void channel_sums(const uint8_t *pixels, size_t count, uint64_t sum[3], uint64_t sumsq[3]) {
    enum { LANES = 48, ROUNDS = 4096 };
    size_t bytes = count * 3, i = 0;
    for (int c = 0; c < 3; c++)
        sum[c] = sumsq[c] = 0;
    while (bytes - i >= LANES) {
        uint32_t s[LANES] = {0}, q[LANES] = {0};
        for (int r = 0; r < ROUNDS && bytes - i >= LANES; r++, i += LANES) {
            for (int k = 0; k < LANES; k++) {
                uint32_t v = pixels[i + k];
                s[k] += v;
                q[k] += v * v;
            }
        }
        for (int k = 0; k < LANES; k++) {
            sum[k % 3] += s[k];
            sumsq[k % 3] += q[k];
        }
    }
    for (; i < bytes; i++) {
        uint64_t v = pixels[i];
        sum[i % 3] += v;
        sumsq[i % 3] += v * v;
    }
}

/* Make the slot's record buffer hold `bytes`, keeping what it holds; false when out of memory. */
static bool slot_reserve(slot *s, size_t bytes) {
    if (bytes <= s->record_capacity) return true;
    uint8_t *grown = realloc(s->record, bytes);
    if (!grown) return false;
    s->record = grown;
    s->record_capacity = bytes;
    return true;
}

/* Read, decode, resize (and re-encode) one file into its slot; failures become a skip reason. */
static void process_job(worker_state *w, const job *j, slot *s) {
    const pack_options *o = w->p->options;
    const char *name = j->item->name;
    s->skipped = false;
    size_t name_bytes = strlen(name);
    if (name_bytes > MAX_NAME_BYTES) {
        set_reason(s, name, "path longer than 65535 bytes");
        return;
    }
    size_t size = 0;
    if (read_whole_file(j->item->path, w, &size) != MT_OK) {
        set_reason(s, name, mt_last_error());
        return;
    }
    /* Raw pixels are resized straight into the record's payload, saving a copy. */
    size_t raw_bytes = (size_t)o->size * o->size * 3;
    if (!o->encoded && !slot_reserve(s, MT_RECORD_HEADER_BYTES + raw_bytes + name_bytes)) {
        set_reason(s, name, "out of memory for its record");
        return;
    }
    uint8_t *pixels = o->encoded ? w->pixels : s->record + MT_RECORD_HEADER_BYTES;
    const mt_preprocess prep = {.size = o->size, .resize = o->resize, .decode = o->decode};
    if (mt_image_preprocess(w->file, size, name, &prep, pixels) != MT_OK) {
        set_reason(s, name, mt_last_error());
        return;
    }
    const uint8_t *payload = pixels;
    size_t payload_bytes = raw_bytes;
    uint8_t *jpeg = NULL;
    if (o->encoded) {
        mt_image check;
        if (mt_image_encode_jpeg(pixels, o->size, o->size, o->quality, &jpeg, &payload_bytes) !=
                MT_OK ||
            mt_image_decode(jpeg, payload_bytes, name, 0, &check) != MT_OK) {
            set_reason(s, name, mt_last_error());
            free(jpeg);
            return;
        }
        /* The statistics describe what the loader will decode, not the pixels before JPEG. */
        channel_sums(check.pixels, (size_t)o->size * o->size, s->sum, s->sumsq);
        mt_image_free(&check);
        payload = jpeg;
    } else {
        channel_sums(pixels, (size_t)o->size * o->size, s->sum, s->sumsq);
    }
    mt_record record = {.encoding = o->encoded ? MT_ENCODING_JPEG : MT_ENCODING_RAW,
                        .channels = 3,
                        .height = o->size,
                        .width = o->size,
                        .label = j->item->label,
                        .payload = payload,
                        .payload_bytes = payload_bytes,
                        .name = name,
                        .name_bytes = name_bytes};
    size_t bytes = mt_record_encoded_size(&record);
    if (!slot_reserve(s, bytes)) {
        set_reason(s, name, "out of memory for its record");
        free(jpeg);
        return;
    }
    mt_record_encode(&record, s->record);
    s->record_bytes = bytes;
    free(jpeg);
}

void *pack_worker_main(void *arg) {
    worker_state *w = arg;
    pipeline *p = w->p;
    for (;;) {
        pthread_mutex_lock(&p->mutex);
        while (!p->stop && p->next < p->job_count && p->next >= p->written + p->slot_count)
            pthread_cond_wait(&p->free_cond, &p->mutex);
        if (p->stop || p->next >= p->job_count) {
            pthread_mutex_unlock(&p->mutex);
            break;
        }
        size_t index = p->next++;
        pthread_mutex_unlock(&p->mutex);
        slot *s = &p->slots[index % p->slot_count];
        process_job(w, &p->jobs[index], s);
        pthread_mutex_lock(&p->mutex);
        s->ready = true;
        pthread_cond_signal(&p->ready_cond);
        pthread_mutex_unlock(&p->mutex);
    }
    return NULL;
}

/* Tell the `started` workers to stop, wake those waiting for a free slot, and join them; then
 * none is started. Used at the end of the records and on every early exit. */
void pack_workers_stop(pipeline *p, pthread_t *threads, int *started) {
    if (*started == 0) return;
    pthread_mutex_lock(&p->mutex);
    p->stop = true;
    pthread_cond_broadcast(&p->free_cond);
    pthread_mutex_unlock(&p->mutex);
    for (int i = 0; i < *started; i++)
        pthread_join(threads[i], NULL);
    *started = 0;
}
