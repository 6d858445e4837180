/* Ranks agree on what they run before they act (docs/training.md, "Every rank runs the same
 * config"). Ranks started with different configs used to crash inside a broadcast whose size
 * depended on the model (model.mode, fine_tune_at), hang (train.epochs, cache_features: one rank
 * waits in a collective the other never calls) or train on silently (learning rate, seed, dropout).
 *
 * So the first collective of a run is this one, of a fixed size whatever the config: every rank
 * hashes each row of the option table (the per-node ones excepted) plus the data and the initial
 * weights into AGREE_ROWS 64-bit values, and the ranks all-gather them. Any difference ends every
 * rank with one message naming the first row that differs and its value on both ranks, found by a
 * second fixed-size all-gather of that row's text. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mobiletune/files.h"
#include "trainer_internal.h"

enum {
    AGREE_ROWS = 160, /* > the option table + the extra rows; fixed, so every build exchanges the
                         same size (a rank whose table differs disagrees on row 0, not a crash) */
    AGREE_TEXT = 240, /* bytes of a row's value text in the second exchange */
};

/* Options that may differ between nodes: how this node uses its own cores. */
static bool per_node(const mt_config_option *option) {
    static const char *const keys[] = {"data.loader_threads", "data.prefetch", "train.threads"};
    char name[96];
    snprintf(name, sizeof name, "%s.%s", option->section, option->key);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(name, keys[i]) == 0) return true;
    return false;
}

/* The extra rows after the option table: the data each split holds, the initial weights. */
static const char *const extra_rows[] = {"data.train", "data.val", "data.test", "model.weights",
                                         "model.init_checkpoint"};
enum { EXTRA_ROWS = sizeof extra_rows / sizeof extra_rows[0] };

/* A database's class list and record count as text (paths may differ between nodes holding
 * their own copies; what they hold may not). */
static mt_status data_text(const char *path, char *out, size_t capacity) {
    if (!path[0]) {
        snprintf(out, capacity, "none");
        return MT_OK;
    }
    mt_dataset *dataset = NULL;
    MT_TRY(mt_dataset_open(path, &dataset));
    const mt_dataset_meta *meta = mt_dataset_meta_get(dataset);
    size_t used =
        (size_t)snprintf(out, capacity, "%llu records at %dx%d, classes",
                         (unsigned long long)meta->record_count, meta->width, meta->height);
    for (int k = 0; k < meta->class_count && used < capacity; k++)
        used += (size_t)snprintf(out + used, capacity - used, "%s%s", k ? "," : " ",
                                 meta->class_names[k]);
    mt_dataset_close(dataset);
    return MT_OK;
}

/* A weights file's contents as a checksum (its path may differ between nodes). */
static mt_status file_text(const char *path, const char *what, char *out, size_t capacity) {
    if (!path[0]) {
        snprintf(out, capacity, "none");
        return MT_OK;
    }
    int fd = -1;
    MT_TRY(mt_file_open_read(path, what, &fd));
    static unsigned char chunk[1 << 16];
    uint64_t hash = 0, bytes = 0;
    ssize_t got;
    while ((got = read(fd, chunk, sizeof chunk)) > 0) {
        hash = mt_checksum64(chunk, (size_t)got, hash);
        bytes += (uint64_t)got;
    }
    close(fd);
    if (got < 0) return MT_FAIL(MT_ERR_IO, "reading %s '%s'", what, path);
    snprintf(out, capacity, "%llu bytes, checksum %016" PRIx64, (unsigned long long)bytes, hash);
    return MT_OK;
}

/* Row `row`'s name and value text on this rank. Row 0 is the option table itself. */
static mt_status row_text(const mt_train_config *c, int row, char *name, size_t name_capacity,
                          char *value, size_t capacity) {
    const int options = mt_config_option_count();
    if (row == 0) {
        snprintf(name, name_capacity, "the option table (mobiletune builds)");
        size_t used = (size_t)snprintf(value, capacity, "%d options", options);
        uint64_t hash = 0;
        for (int i = 0; i < options; i++) {
            const mt_config_option *o = mt_config_option_at(i);
            hash = mt_checksum64(o->section, strlen(o->section) + 1, hash);
            hash = mt_checksum64(o->key, strlen(o->key) + 1, hash);
        }
        snprintf(value + used, capacity - used, ", names %016" PRIx64, hash);
        return MT_OK;
    }
    if (row <= options) {
        const mt_config_option *o = mt_config_option_at(row - 1);
        snprintf(name, name_capacity, "%s.%s", o->section, o->key);
        if (per_node(o)) {
            snprintf(value, capacity, "(per node)");
            return MT_OK;
        }
        if (o->type == MT_CONFIG_PATH) {
            /* the path itself may differ between nodes; whether one is set may not, and what it
             * holds is compared in the extra rows */
            const char *path = (const char *)c + o->offset;
            snprintf(value, capacity, "%s", path[0] ? "set" : "none");
            return MT_OK;
        }
        return mt_config_value_text(c, o, value, capacity);
    }
    int extra = row - options - 1;
    switch (extra) {
    case 0:
    case 1:
    case 2: {
        const char *path = extra == 0 ? c->data.train : extra == 1 ? c->data.val : c->data.test;
        snprintf(name, name_capacity, "what %s holds", extra_rows[extra]);
        return data_text(path, value, capacity);
    }
    case 3:
        snprintf(name, name_capacity, "the contents of %s", extra_rows[extra]);
        return file_text(c->model.weights, "model.weights file", value, capacity);
    case 4:
        snprintf(name, name_capacity, "the contents of %s", extra_rows[extra]);
        return file_text(c->model.init_checkpoint, "model.init_checkpoint", value, capacity);
    }
    snprintf(name, name_capacity, "(unused)");
    snprintf(value, capacity, "-");
    return MT_OK;
}

mt_status trainer_agree_on_config(trainer *t) {
    if (t->who.world_size <= 1) return MT_OK;
    const mt_train_config *c = t->config;
    const int rows = 1 + mt_config_option_count() + EXTRA_ROWS;
    if (rows > AGREE_ROWS)
        return MT_FAIL(MT_ERR_INTERNAL,
                       "the option table has outgrown the agreement exchange "
                       "(%d rows > %d): raise AGREE_ROWS",
                       rows, AGREE_ROWS);
    /* a local failure (a database that does not open) still takes part in the exchange, so no
     * rank is left waiting; the error is reported after it */
    uint64_t mine[AGREE_ROWS] = {0};
    mt_status local = MT_OK;
    char name[128], value[AGREE_TEXT];
    for (int r = 0; r < rows; r++) {
        mt_status status = row_text(c, r, name, sizeof name, value, sizeof value);
        if (status != MT_OK && local == MT_OK) local = status;
        /* an unreadable row hashes to 0 on every rank: ranks failing alike report their own
         * error after the exchange, a rank failing alone differs from the others here */
        mine[r] = status == MT_OK ? mt_checksum64(value, strlen(value), (uint64_t)r) : 0;
    }
    char local_error[2048] = "";
    if (local != MT_OK) snprintf(local_error, sizeof local_error, "%s", mt_last_error());
    const size_t ranks = (size_t)t->who.world_size;
    uint64_t *all = malloc(ranks * sizeof mine);
    char *texts = malloc(ranks * AGREE_TEXT);
    if (!all || !texts) {
        free(all);
        free(texts);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory comparing the ranks' configs");
    }
    mt_status status = mt_comm_allgather(t->comm, mine, all, sizeof mine);
    int row = -1, other = -1;
    for (int r = 0; status == MT_OK && row < 0 && r < AGREE_ROWS; r++)
        for (size_t k = 1; row < 0 && k < ranks; k++)
            if (all[k * AGREE_ROWS + (size_t)r] != all[(size_t)r]) {
                row = r;
                other = (int)k;
            }
    if (status == MT_OK && row >= 0) {
        /* every rank saw the same tables, so every rank takes part in this second exchange */
        char text[AGREE_TEXT] = "";
        if (row_text(c, row, name, sizeof name, text, sizeof text) != MT_OK)
            snprintf(text, sizeof text, "(cannot be read on this rank)");
        status = mt_comm_allgather(t->comm, text, texts, AGREE_TEXT);
        if (status == MT_OK) {
            texts[AGREE_TEXT - 1] = '\0';
            texts[(size_t)other * AGREE_TEXT + AGREE_TEXT - 1] = '\0';
            status = MT_FAIL(MT_ERR_INVALID,
                             "the ranks run different configs: %s is '%s' on rank "
                             "0 but '%s' on rank %d; start every rank with the same config and "
                             "data (only data.loader_threads, data.prefetch and train.threads "
                             "may differ)%s%s",
                             name, texts, texts + (size_t)other * AGREE_TEXT, other,
                             local_error[0] ? "; on this rank: " : "", local_error);
        }
    }
    if (status == MT_OK && local != MT_OK) status = MT_FAIL(local, "%s", local_error);
    free(all);
    free(texts);
    return status;
}
