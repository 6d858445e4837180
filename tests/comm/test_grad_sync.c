/* The bucketed gradient all-reduce (grad_sync.h) with real ranks (mpirun -np 2, 3) or alone.
 *
 * 1. Synthetic layers: a buffer cut into "layers" of very different sizes, reported top down
 *    with some work in between, for bucket sizes from one element (smaller than every layer) to
 *    more than the whole buffer, and 0 (one call after backward). Values are multiples of 1/64
 *    below 2^10, so any summation order gives the same sum: the result must equal the one-call
 *    mt_comm_allreduce_mean_f32 bit for bit, whatever algorithm MPI picks for each bucket. The
 *    trace must show every bucket started right after the range that completes it (its lowest
 *    layer), in decreasing offset order, whole layers only, each as small as the size allows.
 *    The same once more on a "device" backend whose gradient buffer is mapped inaccessible except
 *    inside its upload/download (a stand-in for GPU memory with train.comm = mpi): every bucket
 *    must be staged through those copies, and a host access to the buffer crashes the test.
 * 2. The model's own backward (reference backend, scratch at 32x32: 150-odd layer ranges) with the
 *    synchronizer as its hook: the same mean as one call on the same gradients, buckets started
 *    while backward still had layers to go.
 * 3. Frozen mode: the head's 5 KB gradient is one bucket, one call.
 * With the argument "synthetic", only 1. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mobiletune/grad_sync.h"
#include "mobiletune/model.h"
#include "test_util.h"

static volatile float sink;

/* Stands for backward's compute between two layers (keeps the host away from MPI a while). */
static void busy_work(int rounds) {
    float x = 0;
    for (int i = 0; i < rounds * 1000; i++) x += sinf((float)i);
    sink = x;
}

/* The trace's structural promises for one backward with buckets of `bucket_elems` elements. */
static void check_trace(mt_grad_sync *sync, size_t total, size_t bucket_elems, const char *what) {
    size_t n = 0;
    const mt_grad_sync_event *e = mt_grad_sync_trace(sync, &n);
    size_t launched_end = total; /* buckets cover [launched_end, total) so far */
    size_t pending = 0;          /* elements reported since the last launch */
    size_t last_layer = 0;       /* the last reported range's size */
    int launches = 0, readies = 0, total_readies = 0;
    bool finished = false;
    for (size_t i = 0; i < n; i++)
        total_readies += e[i].kind == MT_GRAD_EVENT_READY;
    for (size_t i = 0; i < n; i++) {
        switch (e[i].kind) {
        case MT_GRAD_EVENT_READY:
            readies++;
            pending += e[i].count;
            last_layer = e[i].count;
            break;
        case MT_GRAD_EVENT_LAUNCH:
            launches++;
            CHECK_MSG(e[i].offset + e[i].count == launched_end, "%s: bucket [%zu, %zu) started "
                      "after [%zu, ...)", what, e[i].offset, e[i].offset + e[i].count,
                      launched_end);
            if (bucket_elems == 0) {
                CHECK_MSG(finished, "%s: bucket size 0 started a bucket during backward", what);
            } else {
                /* started by the READY just before it: as soon as its lowest layer was final */
                CHECK_MSG(i > 0 && e[i - 1].kind == MT_GRAD_EVENT_READY &&
                              e[i - 1].offset == e[i].offset,
                          "%s: bucket at %zu not started right after its last layer", what,
                          e[i].offset);
                CHECK_MSG(pending == e[i].count, "%s: bucket of %zu elements, %zu reported",
                          what, e[i].count, pending);
                /* whole layers, and no bigger than needed: without its lowest layer it would be
                 * under the size (the last bucket, at offset 0, may be smaller) */
                CHECK_MSG(e[i].offset == 0 || e[i].count >= bucket_elems, "%s: bucket at %zu "
                          "holds %zu < %zu", what, e[i].offset, e[i].count, bucket_elems);
                CHECK_MSG(e[i].count - last_layer < bucket_elems, "%s: bucket at %zu holds %zu, "
                          "more layers than %zu needs", what, e[i].offset, e[i].count,
                          bucket_elems);
                if (launches == 1 && total_readies > 1 && e[i].offset > 0)
                    CHECK_MSG(readies < total_readies, "%s: first bucket after backward", what);
            }
            launched_end = e[i].offset;
            pending = 0;
            break;
        case MT_GRAD_EVENT_DONE: break;
        case MT_GRAD_EVENT_END_BACKWARD: finished = true; break;
        }
    }
    CHECK_MSG(launched_end == 0, "%s: buckets cover [%zu, %zu) only", what, launched_end, total);
    CHECK_MSG(launches == mt_grad_sync_bucket_count(sync), "%s: %d launches, count says %d", what,
              launches, mt_grad_sync_bucket_count(sync));
}

/* ---- a backend whose memory the host cannot touch ---- */

static void *device_region;
static size_t device_region_bytes;
static int device_copies;

static void device_open(bool open) {
    if (mprotect(device_region, device_region_bytes, open ? PROT_READ | PROT_WRITE : PROT_NONE))
        abort();
}

static bool in_device(const void *p, size_t bytes) {
    const char *c = p, *base = device_region;
    return c >= base && c + bytes <= base + device_region_bytes;
}

static mt_status device_upload(mt_backend *backend, void *dst, const void *host_src,
                               size_t bytes) {
    if (!in_device(dst, bytes)) return MT_FAIL(MT_ERR_INTERNAL, "upload outside device memory");
    device_open(true);
    memcpy(dst, host_src, bytes);
    device_open(false);
    device_copies++;
    return MT_OK;
}

static mt_status device_download(mt_backend *backend, void *host_dst, const void *src,
                                 size_t bytes) {
    if (!in_device(src, bytes)) return MT_FAIL(MT_ERR_INTERNAL, "download outside device memory");
    device_open(true);
    memcpy(host_dst, src, bytes);
    device_open(false);
    device_copies++;
    return MT_OK;
}

/* The gradient buffer: host memory, or the guarded region of the device backend. */
static float *grad_buffer(mt_backend *backend, size_t count) {
    if (!backend->ops->device_memory) return malloc(count * sizeof(float));
    long page = sysconf(_SC_PAGESIZE);
    device_region_bytes = (count * sizeof(float) + (size_t)page - 1) / (size_t)page * (size_t)page;
    device_region = mmap(NULL, device_region_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return device_region == MAP_FAILED ? NULL : device_region;
}

static void grad_buffer_free(mt_backend *backend, float *buffer) {
    if (!backend->ops->device_memory) free(buffer);
    else munmap(buffer, device_region_bytes);
}

static void synthetic(mt_comm *comm, mt_backend *backend) {
    const mt_comm_info who = mt_comm_get_info(comm);
    /* layer sizes, bottom (offset 0) to top; reported from the top */
    static const size_t layers[] = {3, 4000, 17, 1, 250, 9000, 64, 2, 1281};
    enum { LAYERS = sizeof layers / sizeof layers[0] };
    size_t offsets[LAYERS], total = 0;
    for (int l = 0; l < LAYERS; l++) {
        offsets[l] = total;
        total += layers[l];
    }
    float *grads = malloc(total * sizeof *grads), *want = malloc(total * sizeof *want);
    for (size_t i = 0; i < total; i++)
        grads[i] = (float)((int)((i * 7 + (size_t)who.rank * 13) % 1000) - 500) / 64.0f;
    memcpy(want, grads, total * sizeof *want);
    if (mt_comm_allreduce_mean_f32(comm, want, total) != MT_OK) {
        CHECK_MSG(false, "one-call mean: %s", mt_last_error());
        return;
    }
    const size_t sizes[] = {1, 100, 4000, 5000, 12000, total, 10 * total, 0};
    float *reduced = grad_buffer(backend, total), *back = malloc(total * sizeof *back);
    if (!reduced) {
        CHECK_MSG(false, "no memory for the gradients");
        return;
    }
    const mt_ops *ops = backend->ops;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        char what[96];
        snprintf(what, sizeof what, "synthetic%s, buckets of %zu floats",
                 ops->device_memory ? " (device memory)" : "", sizes[k]);
        mt_grad_sync *sync = NULL;
        if (mt_grad_sync_create(comm, backend, reduced, total, sizes[k] * sizeof(float), &sync) !=
            MT_OK) {
            CHECK_MSG(false, "%s: create: %s", what, mt_last_error());
            continue;
        }
        for (int step = 0; step < 2; step++) { /* the second step reuses the buckets */
            if (ops->upload(backend, reduced, grads, total * sizeof *grads) != MT_OK) break;
            device_copies = 0;
            mt_grad_sync_begin(sync);
            mt_status status = MT_OK;
            for (int l = LAYERS - 1; status == MT_OK && l >= 0; l--) {
                busy_work(2);
                status = mt_grad_sync_ready(sync, offsets[l], layers[l]);
            }
            if (step == 0) {
                if (status == MT_OK) status = mt_grad_sync_finish(sync);
            } else {
                /* bucket by bucket, as the optimizer takes them: the top first, each one's mean
                 * in place when it is handed out, every element once */
                CHECK(mt_grad_sync_wait_bucket(sync, &(size_t){0}, &(size_t){0}) ==
                      MT_ERR_INTERNAL); /* before the end of backward */
                if (status == MT_OK) status = mt_grad_sync_end_backward(sync);
                size_t offset, count, end = total;
                while (status == MT_OK &&
                       (status = mt_grad_sync_wait_bucket(sync, &offset, &count)) == MT_OK) {
                    CHECK_MSG(offset + count == end, "%s: bucket [%zu, %zu) handed out after "
                              "[%zu, ...)", what, offset, offset + count, end);
                    end = offset;
                    if (ops->download(backend, back, reduced + offset, count * sizeof *back) ==
                        MT_OK)
                        CHECK_MSG(memcmp(back, want + offset, count * sizeof *back) == 0,
                                  "%s: bucket [%zu, %zu) handed out before its mean was in "
                                  "place", what, offset, offset + count);
                }
                if (status == MT_END) status = MT_OK;
                CHECK_MSG(end == 0, "%s: buckets handed out down to %zu only", what, end);
                CHECK(mt_grad_sync_wait_bucket(sync, &offset, &count) == MT_END);
            }
            CHECK_MSG(status == MT_OK, "%s: %s", what, mt_last_error());
            /* staged: one download and one upload per bucket (one rank moves nothing), plus the
             * test's own look at each bucket in step 1 */
            if (ops->device_memory)
                CHECK_MSG(device_copies == (who.world_size > 1 ? 2 : 0) *
                                                   mt_grad_sync_bucket_count(sync) +
                                               step * mt_grad_sync_bucket_count(sync),
                          "%s: %d copies for %d buckets", what, device_copies,
                          mt_grad_sync_bucket_count(sync));
            if (ops->download(backend, back, reduced, total * sizeof *back) != MT_OK) break;
            CHECK_MSG(memcmp(back, want, total * sizeof *want) == 0,
                      "%s, step %d: not the one-call mean", what, step);
            check_trace(sync, total, sizes[k], what);
        }
        mt_grad_sync_stats stats = mt_grad_sync_get_stats(sync);
        CHECK(stats.steps == 2 && stats.buckets == 2 * (uint64_t)mt_grad_sync_bucket_count(sync));
        if (sizes[k] == 1) CHECK(mt_grad_sync_bucket_count(sync) == LAYERS);
        if (sizes[k] >= total || sizes[k] == 0) CHECK(mt_grad_sync_bucket_count(sync) == 1);
        if (sizes[k] > 0 && sizes[k] < total)
            CHECK_MSG(stats.launched_in_backward > 0, "%s: nothing started during backward",
                      what);
        mt_grad_sync_destroy(sync);
    }

    /* a range out of order is refused, naming both ranges */
    mt_grad_sync *sync = NULL;
    if (mt_grad_sync_create(comm, backend, reduced, total, 400, &sync) == MT_OK) {
        CHECK(mt_grad_sync_ready(sync, 0, 3) == MT_ERR_INTERNAL);
        CHECK(strstr(mt_last_error(), "[0, 3)") != NULL);
        mt_grad_sync_begin(sync);
        CHECK(mt_grad_sync_finish(sync) == MT_ERR_INTERNAL); /* nothing reported */
        mt_grad_sync_destroy(sync);
    } else {
        CHECK_MSG(false, "create: %s", mt_last_error());
    }
    free(grads);
    free(want);
    free(back);
    grad_buffer_free(backend, reduced);
}

/* Scratch at 32x32 (every layer trains) or frozen, one backward through the model with the
 * synchronizer as its hook, against the one-call mean of the same gradients. */
static void model_case(mt_comm *comm, mt_backend *backend, mt_train_mode mode,
                       size_t bucket_bytes) {
    const mt_comm_info who = mt_comm_get_info(comm);
    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = 32;
    config.mode = mode;
    config.batch_size = 2;
    config.dropout = 0;
    mt_model *model = NULL;
    if (mt_model_create(backend, &config, 11, &model) != MT_OK) {
        CHECK_MSG(false, "model: %s", mt_last_error());
        return;
    }
    float *params, *grads;
    size_t count;
    mt_model_trainable(model, &params, &grads, &count);
    const size_t pixels = 2 * 32 * 32 * 3;
    float *images = malloc(pixels * sizeof *images);
    for (size_t i = 0; i < pixels; i++) /* a different batch on each rank */
        images[i] = sinf(0.01f * (float)i * (float)(who.rank + 1));
    int32_t labels[2] = {who.rank % 2, 1};
    float *own = malloc(count * sizeof *own), *want = malloc(count * sizeof *want);
    float *magnitude = malloc(count * sizeof *magnitude);
    mt_step_result result;
    mt_grad_sync *sync = NULL;
    char what[64];
    snprintf(what, sizeof what, "model %s, buckets of %zu bytes", mt_train_mode_name(mode),
             bucket_bytes);
    if (mt_model_forward(model, images, labels, 2, true, 0, NULL, &result) != MT_OK ||
        mt_model_backward(model) != MT_OK) {
        CHECK_MSG(false, "%s: step: %s", what, mt_last_error());
        goto done;
    }
    memcpy(own, grads, count * sizeof *own); /* the reference backend's memory is the host's */
    memcpy(want, own, count * sizeof *own);
    for (size_t i = 0; i < count; i++) magnitude[i] = fabsf(own[i]);
    if (mt_comm_allreduce_mean_f32(comm, want, count) != MT_OK ||
        mt_comm_allreduce_sum_f32(comm, magnitude, count) != MT_OK ||
        mt_grad_sync_create(comm, backend, grads, count, bucket_bytes, &sync) != MT_OK) {
        CHECK_MSG(false, "%s: %s", what, mt_last_error());
        goto done;
    }
    mt_model_set_grad_hook(model, mt_grad_sync_ready, sync);
    mt_grad_sync_begin(sync);
    if (mt_model_forward(model, images, labels, 2, true, 0, NULL, &result) != MT_OK ||
        mt_model_backward(model) != MT_OK || mt_grad_sync_finish(sync) != MT_OK) {
        CHECK_MSG(false, "%s: synchronized step: %s", what, mt_last_error());
        goto done;
    }
    /* Two ranks: a + b is the same sum in either order and both paths scale by the same 1/2, so
     * bit for bit. Three: MPI may add the three terms in another order per bucket; each order is
     * within 2 roundings of the exact sum, so two orders differ by at most 4u * sum |g_r| (u =
     * 2^-24), divided by 3 like the mean. */
    int bad = 0;
    size_t worst = 0;
    for (size_t i = 0; i < count; i++) {
        double bound = who.world_size <= 2 ? 0.0 : 4.0 * 0x1p-24 * magnitude[i] / who.world_size;
        if (!(fabs((double)grads[i] - (double)want[i]) <= bound)) {
            if (!bad) worst = i;
            bad++;
        }
    }
    CHECK_MSG(bad == 0, "%s: %d of %zu elements differ from the one-call mean (first at %zu: "
              "%.9g vs %.9g)", what, bad, count, worst, grads[worst], want[worst]);
    check_trace(sync, count, bucket_bytes / sizeof(float), what);
    mt_grad_sync_stats stats = mt_grad_sync_get_stats(sync);
    if (mode == MT_TRAIN_FROZEN) {
        CHECK_MSG(count == 1281 && mt_grad_sync_bucket_count(sync) == 1 && stats.buckets == 1,
                  "%s: %zu floats in %d buckets, not one call", what, count,
                  mt_grad_sync_bucket_count(sync));
    } else if (bucket_bytes > 0 && bucket_bytes < count * sizeof(float)) {
        CHECK_MSG(mt_grad_sync_bucket_count(sync) > 1 && stats.launched_in_backward > 0,
                  "%s: %d buckets, %llu started during backward", what,
                  mt_grad_sync_bucket_count(sync), (unsigned long long)stats.launched_in_backward);
    }
    if (who.rank == 0)
        printf("%s: %zu floats, %d buckets, %llu started and %llu complete during backward\n",
               what, count, mt_grad_sync_bucket_count(sync),
               (unsigned long long)stats.launched_in_backward,
               (unsigned long long)stats.done_in_backward);
done:
    mt_grad_sync_destroy(sync);
    mt_model_destroy(model);
    free(images);
    free(own);
    free(want);
    free(magnitude);
}

int main(int argc, char **argv) {
    mt_comm *comm = NULL;
    CHECK_OK(mt_comm_init(&argc, &argv, &comm));
    mt_backend *backend = NULL;
    CHECK_OK(mt_backend_create("reference", NULL, &backend));
    synthetic(comm, backend);
    /* the reference backend with its memory made "device" memory (see device_upload) */
    mt_ops device_ops = *backend->ops;
    device_ops.name = "guarded test device";
    device_ops.device_memory = true;
    device_ops.upload = device_upload;
    device_ops.download = device_download;
    mt_backend device = {.ops = &device_ops, .impl = backend->impl};
    synthetic(comm, &device);
    /* "synthetic": the above only (seconds even under the sanitizers); the model's backward
     * through the reference backend is the slow part */
    if (argc > 1 && strcmp(argv[1], "synthetic") == 0) goto finish;
    /* 4 KB: smaller than many layers (block_16's 1x1 convs hold 100 KB at alpha 0.35) */
    model_case(comm, backend, MT_TRAIN_SCRATCH, 4096);
    model_case(comm, backend, MT_TRAIN_SCRATCH, 64 * 1024);
    model_case(comm, backend, MT_TRAIN_SCRATCH, 1 << 30); /* more than everything */
    model_case(comm, backend, MT_TRAIN_SCRATCH, 0);
    model_case(comm, backend, MT_TRAIN_FROZEN, 4 << 20);
finish:
    mt_backend_destroy(backend);
    int rc = mt_test_finish();
    mt_comm_finalize(comm);
    return rc;
}
