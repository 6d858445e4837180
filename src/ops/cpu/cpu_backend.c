/* The "cpu" backend's lifetime, memory, tensors and primitive cache, and its ops table.
 * oneDNN does the heavy ops (convolutions, batch norm, ReLU6); OpenMP loops the rest. Primitives
 * are made once per descriptor value and reused every step. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/cpu_internal.h"

enum { CPU_ALIGN = 64 };

static void *aligned_zeroed(size_t bytes) {
    size_t rounded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    if (rounded == 0) rounded = CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, rounded);
    if (p) memset(p, 0, rounded);
    return p;
}

/* ---- descriptors ---- */

mt_status cpu_tensor_md(const cpu_backend *cpu, mt_shape4 s, dnnl_memory_desc_t *md) {
    if (s.n <= 0 || s.h <= 0 || s.w <= 0 || s.c <= 0)
        return MT_FAIL(MT_ERR_INVALID, "tensor shape %dx%dx%dx%d (N,H,W,C) has an empty dimension",
                       s.n, s.h, s.w, s.c);
    dnnl_dims_t dims = {s.n, s.c, s.h, s.w};
    int block = cpu_block_of(cpu, s);
    dnnl_format_tag_t tag = block == s.c ? dnnl_nhwc : block == 8 ? dnnl_nChw8c : dnnl_nChw16c;
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, tag));
    return MT_OK;
}

mt_status cpu_vector_md(int count, dnnl_memory_desc_t *md) {
    dnnl_dims_t dims = {count};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(md, 1, dims, dnnl_f32, dnnl_a));
    return MT_OK;
}

mt_status cpu_check_tensor(const cpu_backend *cpu, const mt_tensor *t, mt_shape4 want,
                           const char *what) {
    mt_shape4 s = t->shape;
    if (s.n != want.n || s.h != want.h || s.w != want.w || s.c != want.c)
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: %s has shape %dx%dx%dx%d but the op needs %dx%dx%dx%d "
                       "(N,H,W,C)",
                       what, s.n, s.h, s.w, s.c, want.n, want.h, want.w, want.c);
    if (!t->data || t->bytes < mt_shape4_count(s) * sizeof(float))
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: %s holds %zu bytes, fewer than its shape %dx%dx%dx%d needs "
                       "(allocate it with tensor_alloc)",
                       what, t->bytes, s.n, s.h, s.w, s.c);
    (void)cpu;
    return MT_OK;
}

/* ---- the primitive cache ---- */

static uint64_t key_hash(const cpu_key *key) {
    const unsigned char *p = (const unsigned char *)key;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < sizeof *key; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

cpu_entry *cpu_cache_find(cpu_backend *cpu, const cpu_key *key) {
    if (cpu->capacity == 0) return NULL;
    uint64_t h = key_hash(key);
    for (size_t i = h & (cpu->capacity - 1);; i = (i + 1) & (cpu->capacity - 1)) {
        cpu_entry *e = cpu->slots[i];
        if (!e) return NULL;
        if (e->hash == h && memcmp(&e->key, key, sizeof *key) == 0) return e;
    }
}

static void slots_put(cpu_entry **slots, size_t capacity, cpu_entry *e) {
    size_t i = e->hash & (capacity - 1);
    while (slots[i])
        i = (i + 1) & (capacity - 1);
    slots[i] = e;
}

mt_status cpu_cache_insert(cpu_backend *cpu, cpu_entry *entry) {
    entry->hash = key_hash(&entry->key);
    if ((cpu->used + 1) * 2 > cpu->capacity) { /* keep the table at most half full */
        size_t capacity = cpu->capacity ? cpu->capacity * 2 : 64;
        cpu_entry **slots = calloc(capacity, sizeof *slots);
        if (!slots) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory growing its cache");
        for (size_t i = 0; i < cpu->capacity; i++)
            if (cpu->slots[i]) slots_put(slots, capacity, cpu->slots[i]);
        free(cpu->slots);
        cpu->slots = slots;
        cpu->capacity = capacity;
    }
    slots_put(cpu->slots, cpu->capacity, entry);
    cpu->used++;
    return MT_OK;
}

void cpu_entry_free(cpu_entry *e) {
    if (!e) return;
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->pd) dnnl_primitive_desc_destroy(e->pd);
    if (e->aux) dnnl_primitive_destroy(e->aux);
    if (e->aux_pd) dnnl_primitive_desc_destroy(e->aux_pd);
    if (e->act) dnnl_primitive_destroy(e->act);
    if (e->act_pd) dnnl_primitive_desc_destroy(e->act_pd);
    free(e->w_buf);
    free(e->act_buf);
    free(e);
}

static mt_status grow_scratch(cpu_backend *cpu, const_dnnl_primitive_desc_t pd) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t bytes = md ? dnnl_memory_desc_get_size(md) : 0;
    if (bytes <= cpu->scratch_bytes) return MT_OK;
    void *p = aligned_zeroed(bytes);
    if (!p)
        return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory for a %zu-byte scratchpad", bytes);
    free(cpu->scratch);
    cpu->scratch = p;
    cpu->scratch_bytes = bytes;
    return MT_OK;
}

mt_status cpu_make_primitive(cpu_backend *cpu, const_dnnl_op_desc_t op_desc,
                             const_dnnl_primitive_attr_t attr, const_dnnl_primitive_desc_t hint,
                             dnnl_primitive_desc_t *pd, dnnl_primitive_t *prim) {
    *pd = NULL;
    *prim = NULL;
    mt_status status = MT_OK;
    dnnl_primitive_attr_t own_attr = NULL;
    if (!attr) {
        DNNL_CHECK(dnnl_primitive_attr_create(&own_attr));
        attr = own_attr;
    }
    DNNL_CHECK_GOTO(dnnl_primitive_attr_set_scratchpad_mode((dnnl_primitive_attr_t)attr,
                                                            dnnl_scratchpad_mode_user),
                    status, done);
    DNNL_CHECK_GOTO(dnnl_primitive_desc_create(pd, op_desc, attr, cpu->engine, hint), status, done);
    DNNL_CHECK_GOTO(dnnl_primitive_create(prim, *pd), status, done);
    status = grow_scratch(cpu, *pd);
done:
    if (own_attr) dnnl_primitive_attr_destroy(own_attr);
    if (status != MT_OK) {
        if (*prim) dnnl_primitive_destroy(*prim);
        if (*pd) dnnl_primitive_desc_destroy(*pd);
        *pd = NULL;
        *prim = NULL;
    }
    return status;
}

mt_status cpu_make_reorder(cpu_backend *cpu, const dnnl_memory_desc_t *from,
                           const dnnl_memory_desc_t *to, dnnl_primitive_desc_t *pd,
                           dnnl_primitive_t *prim) {
    *pd = NULL;
    *prim = NULL;
    mt_status status = MT_OK;
    dnnl_primitive_attr_t attr = NULL;
    DNNL_CHECK(dnnl_primitive_attr_create(&attr));
    DNNL_CHECK_GOTO(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user),
                    status, done);
    DNNL_CHECK_GOTO(
        dnnl_reorder_primitive_desc_create(pd, from, cpu->engine, to, cpu->engine, attr), status,
        done);
    DNNL_CHECK_GOTO(dnnl_primitive_create(prim, *pd), status, done);
    status = grow_scratch(cpu, *pd);
done:
    dnnl_primitive_attr_destroy(attr);
    if (status != MT_OK) {
        if (*prim) dnnl_primitive_destroy(*prim);
        if (*pd) dnnl_primitive_desc_destroy(*pd);
        *pd = NULL;
        *prim = NULL;
    }
    return status;
}

mt_status cpu_execute(cpu_backend *cpu, dnnl_primitive_desc_t pd, dnnl_primitive_t prim, int count,
                      const cpu_arg *args) {
    dnnl_exec_arg_t exec[CPU_MAX_ARGS + 1];
    int n = 0;
    mt_status status = MT_OK;
    MT_ASSERT(count <= CPU_MAX_ARGS);
    for (int i = 0; i < count; i++) {
        const dnnl_memory_desc_t *md =
            dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, args[i].arg);
        if (!md || md->ndims == 0) {
            status =
                MT_FAIL(MT_ERR_INTERNAL, "cpu backend: primitive has no argument %d", args[i].arg);
            goto done;
        }
        exec[n].arg = args[i].arg;
        DNNL_CHECK_GOTO(dnnl_memory_create(&exec[n].memory, md, cpu->engine, (void *)args[i].data),
                        status, done);
        n++;
    }
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (smd && dnnl_memory_desc_get_size(smd) > 0) {
        exec[n].arg = DNNL_ARG_SCRATCHPAD;
        DNNL_CHECK_GOTO(dnnl_memory_create(&exec[n].memory, smd, cpu->engine, cpu->scratch), status,
                        done);
        n++;
    }
    DNNL_CHECK_GOTO(dnnl_primitive_execute(prim, cpu->stream, n, exec), status, done);
    DNNL_CHECK_GOTO(dnnl_stream_wait(cpu->stream), status, done);
done:
    for (int i = 0; i < n; i++)
        dnnl_memory_destroy(exec[i].memory);
    return status;
}

mt_status cpu_temp(cpu_backend *cpu, size_t floats, float **out) {
    if (floats > cpu->temp_floats) {
        float *p = aligned_zeroed(floats * sizeof *p);
        if (!p) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory (%zu floats)", floats);
        free(cpu->temp);
        cpu->temp = p;
        cpu->temp_floats = floats;
    }
    *out = cpu->temp;
    return MT_OK;
}

mt_status cpu_reduce_buffer(cpu_backend *cpu, size_t doubles, double **out) {
    if (doubles > cpu->reduce_doubles) {
        double *p = aligned_zeroed(doubles * sizeof *p);
        if (!p) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory (%zu doubles)", doubles);
        free(cpu->reduce);
        cpu->reduce = p;
        cpu->reduce_doubles = doubles;
    }
    *out = cpu->reduce;
    return MT_OK;
}

/* ---- lifetime ---- */

static void cpu_shutdown(mt_backend *backend) {
    cpu_backend *cpu = cpu_of(backend);
    if (!cpu) return;
    for (size_t i = 0; i < cpu->capacity; i++)
        cpu_entry_free(cpu->slots[i]);
    free(cpu->slots);
    if (cpu->stream) dnnl_stream_destroy(cpu->stream);
    if (cpu->engine) dnnl_engine_destroy(cpu->engine);
    free(cpu->scratch);
    free(cpu->temp);
    free(cpu->reduce);
    for (int slot = 0; slot < 2; slot++)
        free(cpu->input[slot].buffer);
    free(cpu);
    backend->impl = NULL;
}

static mt_status cpu_init(mt_backend *backend, const mt_backend_options *options) {
    /* oneDNN could run bf16 on AVX512-BF16/AMX machines only, and none of its primitives here is
     * set up for it: refuse rather than train in fp32 under a bf16 label. tf32 has no CPU
     * meaning: fp32, as ops.h documents. */
    if (options && (options->precision == MT_COMPUTE_BF16 || options->precision == MT_COMPUTE_FP16))
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: train.precision = %s is not supported (oneDNN runs fp32 "
                       "here): set train.backend = cuda (or reference, which emulates it, "
                       "slowly), or train.precision = fp32",
                       mt_compute_precision_name(options->precision));
    cpu_backend *cpu = calloc(1, sizeof *cpu);
    if (!cpu) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory");
    backend->impl = cpu;
    if (options && options->num_threads > 0) omp_set_num_threads(options->num_threads);
    mt_status status = MT_OK;
    DNNL_CHECK_GOTO(dnnl_engine_create(&cpu->engine, dnnl_cpu, 0), status, fail);
    DNNL_CHECK_GOTO(dnnl_stream_create(&cpu->stream, cpu->engine, dnnl_stream_default_flags),
                    status, fail);
    /* nChw8c on every AVX2 machine, AVX-512 ones included (oneDNN runs its AVX2 kernels there).
     * nChw16c would suit AVX-512 better, but MobileNetV2 has channel counts that are multiples
     * of 8 and not of 16 (24; most of them at alpha 0.35), whose tensors would fall back to nhwc
     * and mix layouts at every such layer; MT_ONEDNN_LAYOUT=blocked16 tries it. Below AVX2 the
     * blocked kernels don't pay: nhwc. MT_ONEDNN_LAYOUT=nhwc forces nhwc (bench/ops). */
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    cpu->block = (isa & dnnl_cpu_isa_avx2) == dnnl_cpu_isa_avx2 ? 8 : 0;
    const char *layout = getenv("MT_ONEDNN_LAYOUT");
    if (layout && strcmp(layout, "nhwc") == 0) cpu->block = 0;
    if (layout && strcmp(layout, "blocked16") == 0 &&
        (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core)
        cpu->block = 16;
    return MT_OK;
fail:
    cpu_shutdown(backend);
    return status;
}

/* ---- memory ---- */

static mt_status cpu_buffer_alloc(mt_backend *backend, size_t bytes, void **out) {
    *out = aligned_zeroed(bytes);
    if (!*out)
        return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory allocating %zu bytes", bytes);
    return MT_OK;
}

static void cpu_buffer_free(mt_backend *backend, void *buffer) {
    free(buffer);
}

static mt_status cpu_upload(mt_backend *backend, void *dst, const void *host_src, size_t bytes) {
    if (bytes) memmove(dst, host_src, bytes);
    return MT_OK;
}

static mt_status cpu_download(mt_backend *backend, void *host_dst, const void *src, size_t bytes) {
    if (bytes) memmove(host_dst, src, bytes);
    return MT_OK;
}

static mt_status cpu_tensor_alloc(mt_backend *backend, mt_shape4 shape, mt_tensor *out) {
    cpu_backend *cpu = cpu_of(backend);
    memset(out, 0, sizeof *out);
    dnnl_memory_desc_t md;
    MT_TRY(cpu_tensor_md(cpu, shape, &md));
    size_t bytes = dnnl_memory_desc_get_size(&md);
    void *data = aligned_zeroed(bytes);
    if (!data)
        return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory for a %dx%dx%dx%d tensor", shape.n,
                       shape.h, shape.w, shape.c);
    *out = (mt_tensor){.shape = shape,
                       .data = data,
                       .bytes = bytes,
                       .layout = cpu_block_of(cpu, shape) == shape.c ? 0 : cpu_block_of(cpu, shape),
                       .impl = NULL};
    return MT_OK;
}

static void cpu_tensor_free(mt_backend *backend, mt_tensor *tensor) {
    if (!tensor) return;
    free(tensor->data);
    memset(tensor, 0, sizeof *tensor);
}

/* nhwc <-> the tensor's layout: a memcpy when the layout is nhwc, else a cached reorder. */
static mt_status convert(mt_backend *backend, mt_shape4 shape, int kind, const void *src,
                         void *dst) {
    cpu_backend *cpu = cpu_of(backend);
    if (cpu_block_of(cpu, shape) == shape.c) {
        memcpy(dst, src, mt_shape4_count(shape) * sizeof(float));
        return MT_OK;
    }
    cpu_key key = {.kind = kind, .v = {shape.n, shape.h, shape.w, shape.c}};
    cpu_entry *e = cpu_cache_find(cpu, &key);
    if (!e) {
        dnnl_memory_desc_t plain, native;
        dnnl_dims_t dims = {shape.n, shape.c, shape.h, shape.w};
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(&plain, 4, dims, dnnl_f32, dnnl_nhwc));
        MT_TRY(cpu_tensor_md(cpu, shape, &native));
        e = calloc(1, sizeof *e);
        if (!e) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory");
        e->key = key;
        mt_status status = kind == CPU_REORDER_FROM_NHWC
                               ? cpu_make_reorder(cpu, &plain, &native, &e->pd, &e->prim)
                               : cpu_make_reorder(cpu, &native, &plain, &e->pd, &e->prim);
        if (status == MT_OK) status = cpu_cache_insert(cpu, e);
        if (status != MT_OK) {
            cpu_entry_free(e);
            return status;
        }
    }
    cpu_arg args[] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
    return cpu_execute(cpu, e->pd, e->prim, 2, args);
}

static mt_status cpu_tensor_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst) {
    MT_TRY(cpu_check_tensor(cpu_of(backend), dst, dst->shape, "tensor_from_nhwc's destination"));
    return convert(backend, dst->shape, CPU_REORDER_FROM_NHWC, host_src, dst->data);
}

/* the loader's batch buffers: plain host memory (malloc aligns for float) */
static mt_status cpu_host_alloc(mt_backend *backend, size_t bytes, void **out) {
    (void)backend;
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return MT_FAIL(MT_ERR_NOMEM, "out of memory for %zu bytes of host buffer", bytes);
    return MT_OK;
}

static void cpu_host_free(mt_backend *backend, void *buffer) {
    (void)backend;
    free(buffer);
}

/* ---- the input pipeline: two host staging slots, copied into at once ---- */

static mt_status input_slot_check(const char *op, int slot) {
    if (slot != 0 && slot != 1)
        return MT_FAIL(MT_ERR_INVALID, "cpu backend %s: staging slot %d, want 0 or 1", op, slot);
    return MT_OK;
}

static mt_status cpu_input_upload(mt_backend *backend, int slot, const mt_input_batch *batch) {
    MT_TRY(input_slot_check("input_upload", slot));
    cpu_input_slot *s = &cpu_of(backend)->input[slot];
    if (s->full)
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend input_upload: staging slot %d still holds a batch nobody "
                       "converted (input_convert empties it; alternate the slots)",
                       slot);
    if (batch->n <= 0 || batch->height <= 0 || batch->width <= 0 || !batch->pixels ||
        !batch->labels)
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend input_upload: a batch of %d images of %dx%d without "
                       "pixels or labels",
                       batch->n, batch->height, batch->width);
    const size_t n = (size_t)batch->n, pixels = n * (size_t)batch->height * batch->width * 3;
    const size_t bytes = n * sizeof(int32_t) + n + pixels;
    if (bytes > s->bytes) {
        free(s->buffer);
        s->bytes = 0;
        s->buffer = malloc(bytes);
        if (!s->buffer)
            return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory staging a %zu-byte batch",
                           bytes);
        s->bytes = bytes;
    }
    memcpy(s->buffer, batch->labels, n * sizeof(int32_t));
    if (batch->flips)
        memcpy(s->buffer + n * sizeof(int32_t), batch->flips, n);
    else
        memset(s->buffer + n * sizeof(int32_t), 0, n);
    memcpy(s->buffer + n * sizeof(int32_t) + n, batch->pixels, pixels);
    s->n = batch->n, s->height = batch->height, s->width = batch->width;
    s->full = true;
    return MT_OK;
}

/* Scaled (and mirrored) on the host, one image row per iteration across the threads, straight
 * into the tensor when its layout is plain NHWC (3 channels always are), else into a float copy
 * that the usual reorder converts. */
static mt_status cpu_input_convert(mt_backend *backend, int slot, mt_tensor *images,
                                   int32_t *labels) {
    MT_TRY(input_slot_check("input_convert", slot));
    cpu_backend *cpu = cpu_of(backend);
    cpu_input_slot *s = &cpu->input[slot];
    if (!s->full)
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend input_convert: staging slot %d is empty (input_upload a "
                       "batch into it first)",
                       slot);
    const mt_shape4 shape = {s->n, s->height, s->width, 3};
    MT_TRY(cpu_check_tensor(cpu, images, shape, "input_convert's images"));
    const bool plain = cpu_block_of(cpu, shape) == shape.c;
    const size_t count = mt_shape4_count(shape);
    float *scaled = plain ? images->data : malloc(count * sizeof *scaled);
    if (!scaled) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory scaling a batch");
    const size_t n = (size_t)s->n;
    const uint8_t *flips = s->buffer + n * sizeof(int32_t), *pixels = flips + n;
    const int h = s->height, w = s->width;
#pragma omp parallel for schedule(static)
    for (int row = 0; row < s->n * h; row++) {
        const bool flip = flips[row / h] != 0;
        const uint8_t *from = pixels + (size_t)row * w * 3;
        float *to = scaled + (size_t)row * w * 3;
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                to[x * 3 + c] = mt_u8_to_input(from[(flip ? w - 1 - x : x) * 3 + c]);
    }
    mt_status status = MT_OK;
    if (!plain) {
        status = convert(backend, shape, CPU_REORDER_FROM_NHWC, scaled, images->data);
        free(scaled);
    }
    if (labels) memcpy(labels, s->buffer, n * sizeof *labels);
    s->full = false;
    return status;
}

static mt_status cpu_input_wait(mt_backend *backend, int slot) {
    (void)backend;
    return input_slot_check("input_wait", slot); /* input_upload copied before it returned */
}

static mt_status cpu_tensor_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst) {
    MT_TRY(cpu_check_tensor(cpu_of(backend), src, src->shape, "tensor_to_nhwc's source"));
    return convert(backend, src->shape, CPU_REORDER_TO_NHWC, src->data, host_dst);
}

static mt_status cpu_synchronize(mt_backend *backend) {
    DNNL_CHECK(dnnl_stream_wait(cpu_of(backend)->stream));
    return MT_OK;
}

const mt_ops mt_ops_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .tensor_alloc = cpu_tensor_alloc,
    .tensor_free = cpu_tensor_free,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .input_upload = cpu_input_upload,
    .input_convert = cpu_input_convert,
    .input_wait = cpu_input_wait,
    .tensor_from_nhwc = cpu_tensor_from_nhwc,
    .tensor_to_nhwc = cpu_tensor_to_nhwc,
    .synchronize = cpu_synchronize,
    .buffer_copy = mt_cpu_buffer_copy,
    .buffer_copy_if = mt_cpu_buffer_copy_if,
    .buffer_scale = mt_cpu_buffer_scale,
    .scalars_write = mt_cpu_scalars_write,
    .readback_start = cpu_download, /* the copy at once */
    .readback_wait = mt_cpu_readback_wait,
    .tensor_zero = mt_cpu_tensor_zero,
    .tensor_copy = mt_cpu_tensor_copy,
    .add = mt_cpu_add,
    .relu6_forward = mt_cpu_relu6_forward,
    .relu6_backward = mt_cpu_relu6_backward,
    .conv_forward = mt_cpu_conv_forward,
    .conv_backward_data = mt_cpu_conv_backward_data,
    .conv_backward_weights = mt_cpu_conv_backward_weights,
    .batchnorm_forward_training = mt_cpu_batchnorm_forward_training,
    .batchnorm_forward_inference = mt_cpu_batchnorm_forward_inference,
    .batchnorm_backward_training = mt_cpu_batchnorm_backward_training,
    .batchnorm_backward_inference = mt_cpu_batchnorm_backward_inference,
    .zero_pad_forward = mt_cpu_zero_pad_forward,
    .zero_pad_backward = mt_cpu_zero_pad_backward,
    .global_avg_pool_forward = mt_cpu_global_avg_pool_forward,
    .global_avg_pool_backward = mt_cpu_global_avg_pool_backward,
    .dropout_forward = mt_cpu_dropout_forward,
    .dropout_backward = mt_cpu_dropout_backward,
    .dense_forward = mt_cpu_dense_forward,
    .dense_backward = mt_cpu_dense_backward,
    .loss_forward_backward = mt_cpu_loss_forward_backward,
    .loss_accumulate = mt_cpu_loss_accumulate,
    .optimizer_update = mt_cpu_optimizer_update,
    .conv_bn_relu6_inference_forward = mt_cpu_conv_bn_relu6_inference_forward,
    .batchnorm_relu6_forward_training = mt_cpu_batchnorm_relu6_forward_training,
    .relu6_batchnorm_backward_training = mt_cpu_relu6_batchnorm_backward_training,
};
