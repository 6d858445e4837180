/* The packing run, start to end: list and select the input, check the output paths, start the
 * decode workers (pack_decode.c) and write their slots to LMDB (pack_db.c) strictly in index order,
 * so the databases are byte-identical whatever --threads is and memory stays bounded by the ring
 * however many files there are; then the metadata, the skip report, and the publication.
 * Everything is written under OUT.tmp-<pid> and renamed into place only once complete. */
#include "core/clock.h"
#include "pack.h"
#include "pack_db.h"
#include "pack_decode.h"

#include "mobiletune/files.h"
#include "mobiletune/loader.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Set by SIGINT/SIGTERM: the run stops and removes its temporary folder. */
static volatile sig_atomic_t interrupted = 0;
static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

/* ---- progress -------------------------------------------------------------------------------- */

typedef struct progress {
    bool tty, enabled;
    double start, last;
} progress;

static void progress_update(progress *pr, size_t done, size_t total, size_t skipped, bool final) {
    if (!pr->enabled) return;
    double t = mt_clock_monotonic();
    double interval = pr->tty ? 0.2 : 10.0;
    if (!final && t - pr->last < interval) return;
    pr->last = t;
    double elapsed = t - pr->start;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    if (pr->tty) {
        if (final) {
            fputs("\r\033[K", stderr);
        } else {
            fprintf(stderr, "\r\033[Kpacking %zu/%zu (%.0f%%)  %.1f img/s  ETA %.0f s  skipped %zu",
                    done, total, total ? 100.0 * done / total : 100.0, rate, eta, skipped);
        }
    } else if (!final) {
        fprintf(stderr, "mobiletune-pack: %zu/%zu images, %.1f img/s, ETA %.0f s, skipped %zu\n",
                done, total, rate, eta, skipped);
    }
    fflush(stderr);
}

/* ---- the run --------------------------------------------------------------------------------- */

typedef struct skip_list {
    pack_skip *items;
    size_t count, capacity;
} skip_list;

static mt_status skip_list_add(skip_list *list, const char *name, const char *reason) {
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 32;
        pack_skip *grown = realloc(list->items, capacity * sizeof *grown);
        if (!grown) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
        list->items = grown;
        list->capacity = capacity;
    }
    pack_skip *s = &list->items[list->count];
    s->name = strdup(name);
    s->reason = strdup(reason);
    if (!s->name || !s->reason) {
        free(s->name);
        free(s->reason);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    list->count++;
    return MT_OK;
}

static void skip_list_free(skip_list *list) {
    for (size_t i = 0; i < list->count; i++) {
        free(list->items[i].name);
        free(list->items[i].reason);
    }
    free(list->items);
    *list = (skip_list){0};
}

/* The options line stored in the metadata: every option that shaped the pixels or the split. */
static void format_options(const pack_options *o, char *text, size_t capacity) {
    char splits[64] = "";
    if (o->folder_splits && o->test_from_val > 0)
        snprintf(splits, sizeof splits, " --test-from-val %g (split folders)", o->test_from_val);
    else if (o->folder_splits)
        snprintf(splits, sizeof splits, " (split folders)");
    int n =
        snprintf(text, capacity,
                 "--size %d --resize %s --decode %s%s --quality %d --seed %llu --fraction %g%s%s%s "
                 "input=%s",
                 o->size, mt_resize_mode_name(o->resize), mt_decode_mode_name(o->decode),
                 o->encoded ? " --encoded" : "", o->quality, (unsigned long long)o->seed,
                 o->fraction, o->split_count && !o->folder_splits ? " --split " : "",
                 o->split_count && !o->folder_splits ? o->split_text : "", splits, o->input);
    (void)n;
    for (char *p = text; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

/* A split's last record, its metadata (counts, per-channel mean and std), committed and synced. */
static mt_status write_metadata(split_db *db, const pack_options *o, const pack_input *in,
                                char *options_line) {
    char *text = NULL;
    size_t bytes = 0;
    mt_dataset_meta meta = {.version = MT_META_VERSION,
                            .record_count = db->records,
                            .height = o->size,
                            .width = o->size,
                            .channels = 3,
                            .encoding = o->encoded ? MT_ENCODING_JPEG : MT_ENCODING_RAW,
                            .class_count = in->class_count,
                            .class_names = in->class_names,
                            .class_counts = db->class_counts,
                            .split = (char *)db->name,
                            .options = options_line};
    double n = (double)db->records * o->size * o->size;
    for (int c = 0; c < 3 && n > 0; c++) {
        double mean = (double)db->sum[c] / n;
        double var = (double)db->sumsq[c] / n - mean * mean;
        meta.mean[c] = mean;
        meta.std[c] = var > 0 ? sqrt(var) : 0;
    }
    mt_status status = mt_meta_format(&meta, &text, &bytes);
    if (status == MT_OK) status = pack_db_add_copy(db, MT_META_KEY, text, bytes);
    free(text);
    MT_TRY(status);
    MT_TRY(pack_db_flush(db));
    int rc = mdb_env_sync(db->env, 1);
    if (rc != MDB_SUCCESS) return pack_db_write_failed(rc, "mdb_env_sync", db->path);
    return MT_OK;
}

/* Rename the complete TEMP to OUT; with --force the old OUT is moved aside first, so OUT is
 * never half old, half new, and removed once the new one is in place. */
static mt_status publish(const char *temp, const char *output) {
    struct stat st;
    if (stat(output, &st) == 0) {
        char old[8192];
        snprintf(old, sizeof old, "%s.old-%ld", output, (long)getpid());
        if (rename(output, old) != 0)
            return MT_FAIL(MT_ERR_IO, "%s: cannot move the existing output aside: %s", output,
                           strerror(errno));
        if (rename(temp, output) != 0) {
            mt_status status = MT_FAIL(MT_ERR_IO, "%s: cannot rename %s into place: %s", output,
                                       temp, strerror(errno));
            rename(old, output);
            return status;
        }
        pack_remove_tree(old);
    } else if (rename(temp, output) != 0) {
        return MT_FAIL(MT_ERR_IO, "%s: cannot rename %s into place: %s", output, temp,
                       strerror(errno));
    }
    return MT_OK;
}

mt_status pack_run(const pack_options *given) {
    double start = mt_clock_monotonic();
    pack_input in;
    MT_TRY(pack_input_list(given->input, &in));
    /* a pre-split input decides the splits: from here on, the options with them filled in */
    pack_options planned = *given;
    const pack_options *o = &planned;
    mt_status checked = pack_plan_folder_splits(&in, &planned);
    if (checked == MT_OK) checked = pack_check_output_paths(o, &in);
    if (checked != MT_OK) {
        pack_input_free(&in);
        return checked;
    }
    pack_input_select(&in, o);
    if (o->folder_splits) {
        static const char *const out_names[PACK_FOLDER_COUNT] = {"train", "val", "test"};
        printf("mobiletune-pack: %s is split into folders:", o->input);
        const char *separator = " ";
        for (int k = 0; k < PACK_FOLDER_COUNT; k++)
            if (in.split_folders[k][0]) {
                printf("%s%s/ -> %s/%s", separator, in.split_folders[k], o->output, out_names[k]);
                separator = ", ";
            }
        if (o->test_from_val > 0)
            printf("; test: a seeded stratified %g of %s/ -> %s/test", o->test_from_val,
                   in.split_folders[PACK_FOLDER_VAL], o->output);
        printf("\n");
    }

    int split_count = o->split_count > 0 ? o->split_count : 1;
    split_db *dbs = calloc((size_t)split_count, sizeof *dbs);
    job *jobs = malloc((in.item_count ? in.item_count : 1) * sizeof *jobs);
    int workers = o->threads;
    size_t slot_count = (size_t)workers * 4 + 4;
    slot *slots = calloc(slot_count, sizeof *slots);
    worker_state *states = calloc((size_t)workers, sizeof *states);
    pthread_t *threads = calloc((size_t)workers, sizeof *threads);
    char *temp = malloc(strlen(o->output) + 32);
    char *options_line =
        malloc(strlen(o->input) + strlen(o->split_text ? o->split_text : "") + 256);
    skip_list skips = {0};
    mt_status status = MT_OK;
    int started = 0;
    bool temp_made = false, published = false;
    write_behind wb = {0};
    pipeline p = {.options = o, .slots = slots, .slot_count = slot_count};
    pthread_mutex_init(&p.mutex, NULL);
    pthread_cond_init(&p.ready_cond, NULL);
    pthread_cond_init(&p.free_cond, NULL);
    if (!dbs || !jobs || !slots || !states || !threads || !temp || !options_line) {
        status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    format_options(o, options_line,
                   strlen(o->input) + strlen(o->split_text ? o->split_text : "") + 256);
    for (size_t i = 0; i < in.skip_count && status == MT_OK; i++)
        status = skip_list_add(&skips, in.skips[i].name, in.skips[i].reason);

    /* Jobs in output order: split by split, each in listing order. */
    size_t job_count = 0;
    for (int s = 0; s < split_count; s++) {
        dbs[s].name = o->split_count ? o->splits[s].name : "all";
        for (size_t i = 0; i < in.item_count; i++) {
            if (in.items[i].split != s) continue;
            jobs[job_count++] = (job){.item = &in.items[i], .split = s};
            dbs[s].planned++;
        }
        dbs[s].class_counts = calloc((size_t)in.class_count, sizeof(uint64_t));
        if (!dbs[s].class_counts && status == MT_OK)
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    if (status != MT_OK) goto done;
    if (job_count == 0) {
        status = MT_FAIL(MT_ERR_INVALID, "%s: nothing to pack: no image files were found%s",
                         o->input, o->fraction < 1 ? " (or --fraction selected none)" : "");
        goto done;
    }
    /* Refuse class names the metadata cannot hold now, not after decoding everything. */
    {
        char *text;
        size_t bytes;
        split_db probe = {.name = dbs[0].name, .class_counts = dbs[0].class_counts};
        mt_dataset_meta meta = {.version = MT_META_VERSION,
                                .height = o->size,
                                .width = o->size,
                                .channels = 3,
                                .class_count = in.class_count,
                                .class_names = in.class_names,
                                .class_counts = probe.class_counts,
                                .split = (char *)probe.name,
                                .options = options_line,
                                .encoding = o->encoded ? MT_ENCODING_JPEG : MT_ENCODING_RAW};
        status = mt_meta_format(&meta, &text, &bytes);
        if (status != MT_OK) {
            mt_error_context(status,
                             "%s: the classes cannot be recorded (rename the class "
                             "folders or labels)",
                             o->input);
            goto done;
        }
        free(text);
    }

    pack_remove_stale_temps(o->output);
    {
        char parent[4096]; /* mkdir -p for the folder that will hold OUT */
        status = mt_path_parent(o->output, parent, sizeof parent);
        if (status == MT_OK) status = mt_make_dirs(parent);
    }
    if (status != MT_OK) goto done;
    snprintf(temp, strlen(o->output) + 32, "%s.tmp-%ld", o->output, (long)getpid());
    if (mkdir(temp, 0777) != 0) {
        status =
            MT_FAIL(MT_ERR_IO, "%s: cannot create the temporary folder: %s", temp, strerror(errno));
        goto done;
    }
    temp_made = true;
    size_t estimate_record =
        (o->encoded ? (size_t)o->size * o->size * 3 / 4 : (size_t)o->size * o->size * 3) + 320;
    for (int s = 0; s < split_count && status == MT_OK; s++) {
        if (o->split_count) {
            snprintf(dbs[s].path, sizeof dbs[s].path, "%s/%s", temp, dbs[s].name);
            if (mkdir(dbs[s].path, 0777) != 0) {
                status = MT_FAIL(MT_ERR_IO, "%s: cannot create folder: %s", dbs[s].path,
                                 strerror(errno));
                break;
            }
        } else {
            snprintf(dbs[s].path, sizeof dbs[s].path, "%s", temp);
        }
        /* LMDB stores pages of 4 KiB: a record takes whole overflow pages, hence the margin. */
        size_t map = o->map_size
                         ? o->map_size
                         : (size_t)(dbs[s].planned * (estimate_record + 4096) * 1.1) + (1 << 20);
        status = pack_db_open(&dbs[s], map);
        dbs[s].write_behind = &wb;
    }
    if (status != MT_OK) goto done;
    pack_write_behind_start(&wb);

    for (int i = 0; i < workers; i++) {
        states[i].p = &p;
        states[i].pixels = malloc((size_t)o->size * o->size * 3);
        if (!states[i].pixels) {
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    p.jobs = jobs;
    p.job_count = job_count;
    struct sigaction action = {.sa_handler = on_signal}, old_int, old_term;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int);
    sigaction(SIGTERM, &action, &old_term);
    for (; started < workers; started++) {
        if (pthread_create(&threads[started], NULL, pack_worker_main, &states[started]) != 0) {
            status = MT_FAIL(MT_ERR_NOMEM, "cannot start worker thread %d", started);
            break;
        }
    }
    const char *fail_after_text = getenv("MT_PACK_FAIL_AFTER"); /* a test hook, see docs */
    long long fail_after = fail_after_text ? atoll(fail_after_text) : -1;
    progress pr = {.tty = isatty(STDERR_FILENO) != 0, .start = mt_clock_monotonic()};
    pr.enabled = o->progress < 0 ? true : o->progress == 1;
    if (o->progress < 0 && !pr.tty) pr.enabled = true; /* plain lines, every 10 s */
    pr.last = pr.start;
    size_t packed = 0, decode_skips = 0;
    for (size_t i = 0; i < job_count && status == MT_OK; i++) {
        slot *s = &slots[i % slot_count];
        pthread_mutex_lock(&p.mutex);
        while (!s->ready)
            pthread_cond_wait(&p.ready_cond, &p.mutex);
        pthread_mutex_unlock(&p.mutex);
        split_db *db = &dbs[jobs[i].split];
        if (s->skipped) {
            status = skip_list_add(&skips, jobs[i].item->name, s->reason);
            decode_skips++;
        } else {
            char key[MT_RECORD_KEY_BYTES + 1];
            mt_record_key(db->records, key);
            /* The slot gets the batch's spare buffer: it is not read again until refilled. */
            status = pack_db_add_record(db, key, &s->record, &s->record_capacity, s->record_bytes);
            if (status == MT_OK) {
                db->records++;
                db->class_counts[jobs[i].item->label]++;
                for (int c = 0; c < 3; c++) {
                    db->sum[c] += s->sum[c];
                    db->sumsq[c] += s->sumsq[c];
                }
                packed++;
            }
        }
        pthread_mutex_lock(&p.mutex);
        s->ready = false;
        p.written = i + 1;
        pthread_cond_broadcast(&p.free_cond);
        pthread_mutex_unlock(&p.mutex);
        if (status == MT_OK && interrupted)
            status = MT_FAIL(MT_ERR_IO, "interrupted: nothing was written to %s", o->output);
        if (status == MT_OK && fail_after >= 0 && (long long)packed >= fail_after)
            status = MT_FAIL(MT_ERR_IO, "injected failure after %zu records (MT_PACK_FAIL_AFTER)",
                             packed);
        progress_update(&pr, i + 1, job_count, skips.count, false);
    }
    pack_workers_stop(&p, threads, &started);
    progress_update(&pr, job_count, job_count, skips.count, true);
    int write_error = pack_write_behind_stop(&wb);
    if (status == MT_OK && write_error != 0)
        status = MT_FAIL(MT_ERR_IO,
                         "%s: writing the database to disk failed: %s (nothing was written to "
                         "%s; check the disk and run again)",
                         o->output, strerror(mt_write_errno(temp, write_error)), o->output);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (status != MT_OK) goto done;
    if (packed == 0) {
        for (size_t i = 0; i < skips.count && i < 10; i++)
            fprintf(stderr, "  skipped %s: %s\n", skips.items[i].name, skips.items[i].reason);
        if (o->report) pack_write_report(o->report, o->input, skips.items, skips.count);
        status = MT_FAIL(MT_ERR_FORMAT,
                         "%s: nothing packed: all %zu file(s) were skipped (reasons "
                         "above%s%s)",
                         o->input, skips.count, o->report ? ", report in " : "",
                         o->report ? o->report : "");
        goto done;
    }

    /* Metadata, sync, report, then publish by rename. */
    for (int s = 0; s < split_count && status == MT_OK; s++)
        status = write_metadata(&dbs[s], o, &in, options_line);
    if (status != MT_OK) goto done;
    for (int s = 0; s < split_count; s++)
        pack_db_close(&dbs[s]);
    char report[8192];
    snprintf(report, sizeof report, "%s/skipped.txt", temp);
    status = pack_write_report(o->report ? o->report : report, o->input, skips.items, skips.count);
    for (int s = 0; s < split_count && status == MT_OK; s++)
        status = mt_sync_path(dbs[s].path);
    if (status == MT_OK) status = mt_sync_path(temp);
    if (status != MT_OK) goto done;
    status = publish(temp, o->output);
    if (status != MT_OK) goto done;
    published = true;
    mt_sync_parent(o->output); /* published either way: the rename is atomic */

    double seconds = mt_clock_monotonic() - start;
    printf("mobiletune-pack: packed %zu image(s), skipped %zu;", packed, skips.count);
    for (int s = 0; s < split_count; s++)
        printf(" %s %llu%s", dbs[s].name, (unsigned long long)dbs[s].records,
               s + 1 < split_count ? "," : ";");
    printf(" %.1f s, %.1f img/s, %d thread(s) -> %s (skip report: %s%s)\n", seconds,
           seconds > 0 ? packed / seconds : 0.0, workers, o->output,
           o->report ? o->report : o->output, o->report ? "" : "/skipped.txt");
    fflush(stdout);
    for (int s = 0; s < split_count; s++)
        if (dbs[s].records == 0)
            fprintf(stderr,
                    "mobiletune-pack: warning: split '%s' has no records (too few images "
                    "per class for its fraction)\n",
                    dbs[s].name);
    (void)decode_skips;

done:
    pack_write_behind_stop(&wb); /* before db_close: the thread may hold a descriptor */
    pack_workers_stop(&p, threads, &started);
    for (int s = 0; dbs && s < split_count; s++)
        pack_db_close(&dbs[s]);
    if (temp_made && !published) pack_remove_tree(temp);
    for (size_t i = 0; slots && i < slot_count; i++)
        free(slots[i].record);
    for (int i = 0; states && i < workers; i++) {
        free(states[i].file);
        free(states[i].pixels);
    }
    pthread_mutex_destroy(&p.mutex);
    pthread_cond_destroy(&p.ready_cond);
    pthread_cond_destroy(&p.free_cond);
    skip_list_free(&skips);
    free(dbs);
    free(jobs);
    free(slots);
    free(states);
    free(threads);
    free(temp);
    free(options_line);
    pack_input_free(&in);
    return status;
}
