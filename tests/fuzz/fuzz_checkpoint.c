/* Fuzz target for the checkpoint reader (src/io/safetensors*.c): any bytes, read as a
 * safetensors checkpoint, must load or fail with MT_ERR_FORMAT (never a crash, a leak or an
 * undefined operation), and whatever loads must be consistent: tensors inside the data, bytes
 * matching shapes, every checksum checked or none present, and the finiteness check answering
 * OK or MT_ERR_FORMAT.
 *
 * The reader takes a path, so the bytes go to a temporary file (one per process). With
 * MT_FUZZ_EXPECT=ok|refused (the replay test of a named seed) the outcome is checked as well. */
#define _XOPEN_SOURCE 700
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_temp_file.h"
#include "mobiletune/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what) {
    fprintf(stderr, "fuzz_checkpoint: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *temp_path = fuzz_temp_write("fuzz_ckpt", data, size);
    const char *expect = getenv("MT_FUZZ_EXPECT");
    mt_checkpoint *c = NULL;
    mt_status status = mt_checkpoint_read(temp_path, &c);
    if (status != MT_OK) {
        if (c) fail("a failed read returned a checkpoint");
        if (status != MT_ERR_FORMAT && status != MT_ERR_NOMEM) fail("a read failed oddly");
        if (!strstr(mt_last_error(), temp_path)) fail("the error does not name the file");
        if (expect && strcmp(expect, "ok") == 0) {
            fprintf(stderr, "refused: %s\n", mt_last_error());
            fail("a seed that must load was refused");
        }
        return 0;
    }
    if (expect && strcmp(expect, "refused") == 0) fail("a seed that must be refused loaded");
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--)
        header = (header << 8) | data[i];
    uint64_t total = 0;
    const int count = mt_checkpoint_tensor_count(c);
    for (int i = 0; i < count; i++) {
        const mt_checkpoint_tensor *t = mt_checkpoint_tensor_at(c, i);
        if (t->bytes != t->count * mt_checkpoint_dtype_size(t->dtype))
            fail("a tensor's bytes do not match its shape");
        if (t->bytes && t->data == NULL) fail("a tensor without data");
        if (mt_checkpoint_find(c, t->name) != t) fail("a name finds another tensor");
        total += t->bytes;
    }
    if (total != size - 8 - header) fail("the tensors do not cover the data");
    int verified = mt_checkpoint_checksums_verified(c);
    if (verified != 0 && verified != count) fail("some tensors' checksums were not checked");
    for (int i = 0; i < mt_checkpoint_meta_count(c); i++) {
        const char *key, *value;
        mt_checkpoint_meta_at(c, i, &key, &value);
        if (!key || !value || strncmp(key, "crc32:", 6) == 0) fail("a bad metadata entry");
    }
    mt_status finite = mt_checkpoint_check_finite(c, NULL);
    if (finite != MT_OK && finite != MT_ERR_FORMAT) fail("the finiteness check failed oddly");
    mt_checkpoint_free(c);
    return 0;
}
