/* One whole training step of MobileNetV2 (forward in training mode + backward, default alpha 1.0,
 * 160x160, batch 32, scratch mode: every layer trains, BN on batch statistics) from fixed inputs,
 * written to a "golden" file on a CPU backend and checked on another backend (the cuda backend on
 * the lent GPU machine, tests/gpu/run.sh), so the GPU is compared with the CPU's truth without
 * the CPU computing it there.
 *
 *   gpu_golden_step write FILE [options]   the step on --backend (default reference), stored
 *   gpu_golden_step check FILE [options]   the step on --backend (default cuda), compared
 *   gpu_golden_step probe BACKEND          creates the backend, says whether it started (0/2)
 * options: --backend NAME --weights H5|none --alpha A --size S --batch N
 *          --break TENSOR (check: scale that tensor's computed gradient by 1.01, to see it fail)
 * check exits 0 when every comparison holds, 1 when one does not, 77 when the backend cannot be
 * created and MT_GOLDEN_SKIP_OK=1 (a CPU-only try of tests/gpu/run.sh), else 2.
 *
 * `write` first moves the BN betas off the ReLU6 kinks (kink_shift.h) on its backend; the file
 * keeps those betas and `check` runs its step with them, so both sides compute the same function
 * and the limits are the rounding error model's (below).
 *
 * The file (format 2): text lines (the configuration, the loss, then one line per tensor: kind,
 * name, count, L2 norm) up to "data", then the raw float32 values in the same order: logits,
 * every trainable tensor's gradient (whole, in the Keras layout of the trainable buffer), the
 * step's change of the BN moving statistics, every BN beta the step ran with. About 9 MB at the
 * default size. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kink_shift.h"
#include "mobiletune/model.h"

enum { MAX_LOGITS = 4096 };

typedef struct options {
    const char *command, *file, *backend, *weights, *broken;
    float alpha;
    int size, batch;
} options;

/* The model's step inputs: deterministic noise images in [-1, 1] and alternating labels. Noise
 * keeps the activations spread (few values sit at a ReLU6 kink by construction). */
static void make_inputs(int n, int size, float *images, int32_t *labels) {
    size_t pixels = (size_t)n * size * size * 3;
    uint64_t s = 1234;
    for (size_t i = 0; i < pixels; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        images[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    for (int i = 0; i < n; i++)
        labels[i] = i % 2;
}

/* a BN beta: moved off the ReLU6 kinks by `write`, stored, and loaded by `check` */
static bool is_beta(const mt_param_tensor *t) {
    return strcmp(t->weight, "beta") == 0;
}

static double l2(const float *v, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)v[i] * v[i];
    return sqrt(s);
}

static double l2_diff(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        s += d * d;
    }
    return sqrt(s);
}

/* ---- the limits: docs/model.md, "How close to Keras, and why: the error model" -------------
 * Per quantity a relative L2 error of HEADROOM x C x u x sqrt(D) (HEADROOM 16, D = 52 layers, u =
 * 2^-24, C what one layer contributes, measured against float64 Keras), twice: each fp32 run is
 * within that of the exact result, so two runs are within twice it of each other (as in
 * test_gpu_model.c). The step is in scratch mode, BN on batch statistics: C = 10 for the whole
 * gradient, 160 per tensor (relative to max(its norm, 0.1 x the median tensor norm): a BN beta
 * that reaches a batch-statistics BN through linear layers only has an analytically zero
 * gradient, and what a float run gives there is rounding of sums the size of a typical
 * gradient), 6 for the logits and the loss (the pooled features' C: the head's dense adds one
 * layer), 12 for the change of the BN moving statistics (the features' max-norm C).
 * The ReLU6 kinks are outside the model; `write` removes them (kink_shift.h: the betas feeding a
 * ReLU6 move until no pre-activation is within KINK_MARGIN_U u x its layer's RMS of 0 or 6) and
 * stores those betas in the file, and `check` runs with them. */
static const double unit_roundoff = 5.9604644775390625e-08; /* 2^-24 */
static const double kink_margin_u = 512.0;                  /* docs/model.md */

static double model_limit(double c) {
    return 2.0 * 16.0 * c * unit_roundoff * sqrt(52.0);
}

static int norm_order(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- the step ------------------------------------------------------------------------------ */

typedef struct step_output {
    mt_model *model;
    const mt_model_layout *layout;
    mt_step_result result;
    float logits[MAX_LOGITS];
    float *images;
    int32_t *labels;
    float *grads; /* trainable_count, host */
    float *state; /* state_count: the step's change of the BN moving statistics, host */
    float *betas; /* beta_count: every BN beta as the step ran with it, host */
    size_t beta_count;
} step_output;

/* the model with its weights, and the step's inputs */
static int step_setup(const options *o, mt_backend *backend, step_output *s) {
    mt_model_config config = mt_model_config_default();
    config.alpha = o->alpha;
    config.input_size = o->size;
    config.batch_size = o->batch;
    config.classes = 2;
    config.mode = MT_TRAIN_SCRATCH;
    config.dropout = 0.2f;
    if (mt_model_create(backend, &config, 5, &s->model) != MT_OK) {
        fprintf(stderr, "gpu_golden_step: model: %s\n", mt_last_error());
        return 2;
    }
    s->layout = mt_model_get_layout(s->model);
    if (strcmp(o->weights, "none") != 0 && mt_model_load_keras(s->model, o->weights) != MT_OK) {
        fprintf(stderr, "gpu_golden_step: weights '%s': %s\n", o->weights, mt_last_error());
        return 2;
    }
    if ((size_t)o->batch * s->layout->logit_count > MAX_LOGITS) {
        fprintf(stderr, "gpu_golden_step: --batch %d: at most %d logits\n", o->batch, MAX_LOGITS);
        return 2;
    }
    for (int i = 0; i < s->layout->tensor_count; i++)
        if (is_beta(&s->layout->tensors[i])) s->beta_count += s->layout->tensors[i].count;
    size_t pixels = (size_t)o->batch * o->size * o->size * 3;
    s->images = malloc(pixels * sizeof *s->images);
    s->labels = malloc((size_t)o->batch * sizeof *s->labels);
    s->grads = malloc(s->layout->trainable_count * sizeof *s->grads);
    s->state = malloc((s->layout->state_count + 1) * sizeof *s->state);
    s->betas = malloc((s->beta_count + 1) * sizeof *s->betas);
    if (!s->images || !s->labels || !s->grads || !s->state || !s->betas) {
        fprintf(stderr, "gpu_golden_step: out of memory\n");
        return 2;
    }
    make_inputs(o->batch, o->size, s->images, s->labels);
    return 0;
}

/* the model's betas to s->betas (upload false) or from it (upload true), in layout order */
static int betas_copy(step_output *s, bool upload) {
    float *b = s->betas;
    for (int i = 0; i < s->layout->tensor_count; i++) {
        const mt_param_tensor *t = &s->layout->tensors[i];
        if (!is_beta(t)) continue;
        if ((upload ? mt_model_tensor_upload(s->model, t, b)
                    : mt_model_tensor_download(s->model, t, b)) != MT_OK) {
            fprintf(stderr, "gpu_golden_step: %s: %s\n", t->name, mt_last_error());
            return 2;
        }
        b += t->count;
    }
    return 0;
}

/* one forward (training) + backward; the logits, gradients and the change of the moving
 * statistics to the host */
static int step_run(const options *o, mt_backend *backend, step_output *s) {
    float *grads, *state;
    size_t count, state_count;
    mt_model_trainable(s->model, NULL, &grads, &count);
    mt_model_state(s->model, &state, &state_count);
    float *before = malloc((state_count + 1) * sizeof *before);
    int rc = 0;
    if (!before) {
        fprintf(stderr, "gpu_golden_step: out of memory\n");
        return 2;
    }
    /* explicit downloads: the buffers live in backend memory */
    if (backend->ops->download(backend, before, state, state_count * sizeof *state) != MT_OK ||
        mt_model_forward(s->model, s->images, s->labels, o->batch, true, 11, s->logits,
                         &s->result) != MT_OK ||
        mt_model_backward(s->model) != MT_OK ||
        backend->ops->download(backend, s->grads, grads, count * sizeof *grads) != MT_OK ||
        backend->ops->download(backend, s->state, state, state_count * sizeof *state) != MT_OK) {
        fprintf(stderr, "gpu_golden_step: step on '%s': %s\n", o->backend, mt_last_error());
        rc = 2;
    } else {
        for (size_t i = 0; i < state_count; i++)
            s->state[i] -= before[i];
    }
    free(before);
    return rc;
}

/* write: move the betas off the ReLU6 kinks on this backend (the reference), then the step */
static int write_step(const options *o, mt_backend *backend, step_output *s) {
    kink_report k;
    if (!kink_shift(s->model, NULL, s->images, s->labels, o->batch, kink_margin_u, true, &k)) {
        fprintf(stderr, "gpu_golden_step: the ReLU6 kink shifts on '%s' failed\n", o->backend);
        return 2;
    }
    printf("kinks: %ld pre-activations within %.0f u x RMS of 0 or 6 in %d layers before, %ld "
           "after (%d layers' betas moved)\n",
           k.before, kink_margin_u, k.layers, k.after, k.shifted);
    if (k.after != 0) {
        fprintf(stderr,
                "gpu_golden_step: %ld pre-activations still within %.0f u x RMS of a ReLU6 kink "
                "after the beta shifts: the step would be outside the error model\n",
                k.after, kink_margin_u);
        return 2;
    }
    int rc = betas_copy(s, false);
    return rc ? rc : step_run(o, backend, s);
}

/* ---- the file ------------------------------------------------------------------------------ */

static const char *const golden_magic = "mobiletune golden step 2\n";

/* the tensor lines and the data blocks: 0 gradients, 1 the moving statistics' change, 2 betas */
static bool in_block(const mt_param_tensor *t, int block) {
    return block == 0   ? t->buffer == MT_PARAM_TRAINABLE
           : block == 1 ? t->buffer == MT_PARAM_STATE
                        : is_beta(t);
}

static const float *block_data(const step_output *s, const mt_param_tensor *t, int block,
                               const float *betas_at) {
    return block == 0 ? s->grads + t->offset : block == 1 ? s->state + t->offset : betas_at;
}

static const char *const block_kind[3] = {"grad", "state", "beta"};

static int write_golden(const options *o, const step_output *s) {
    const mt_model_layout *layout = s->layout;
    size_t logits = (size_t)o->batch * layout->logit_count;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", o->file);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "gpu_golden_step: cannot write '%s': %s\n", tmp, strerror(errno));
        return 2;
    }
    fprintf(f, "%sbackend %s\nalpha %.9g\nsize %d\nbatch %d\n", golden_magic, o->backend, o->alpha,
            o->size, o->batch);
    fprintf(f, "loss %.9g\ncorrect %d\nvalid %d\nlogits %zu\n", s->result.loss, s->result.correct,
            s->result.valid, logits);
    for (int block = 0; block < 3; block++) {
        const float *b = s->betas;
        for (int i = 0; i < layout->tensor_count; i++) {
            const mt_param_tensor *t = &layout->tensors[i];
            if (!in_block(t, block)) continue;
            fprintf(f, "%s %s %zu %.9g\n", block_kind[block], t->name, t->count,
                    l2(block_data(s, t, block, b), t->count));
            if (block == 2) b += t->count;
        }
    }
    fputs("data\n", f);
    bool ok = fwrite(s->logits, sizeof(float), logits, f) == logits;
    for (int block = 0; block < 3; block++) {
        const float *b = s->betas;
        for (int i = 0; ok && i < layout->tensor_count; i++) {
            const mt_param_tensor *t = &layout->tensors[i];
            if (!in_block(t, block)) continue;
            ok = fwrite(block_data(s, t, block, b), sizeof(float), t->count, f) == t->count;
            if (block == 2) b += t->count;
        }
    }
    if (fclose(f) != 0 || !ok || rename(tmp, o->file) != 0) {
        fprintf(stderr, "gpu_golden_step: writing '%s' failed: %s\n", o->file, strerror(errno));
        remove(tmp);
        return 2;
    }
    printf("wrote %s: backend %s, loss %.6f, %zu gradient values, %zu betas\n", o->file, o->backend,
           s->result.loss, layout->trainable_count, s->beta_count);
    return 0;
}

/* read a header line "KEY VALUE" and check the value against ours */
static bool header_expect(FILE *f, const char *key, const char *want) {
    char line[512], k[64], v[400];
    if (!fgets(line, sizeof line, f) || sscanf(line, "%63s %399s", k, v) != 2 || strcmp(k, key)) {
        fprintf(stderr, "gpu_golden_step: golden file: expected '%s' line, got '%s'\n", key, line);
        return false;
    }
    if (want && strcmp(v, want) != 0) {
        fprintf(stderr,
                "gpu_golden_step: golden file has %s %s, this check %s %s: rerun "
                "tests/gpu/prepare.sh or pass the same options\n",
                key, v, key, want);
        return false;
    }
    return true;
}

/* The per-tensor comparison of the gradients (see the limits above); the number of tensors over
 * `limit`, printing the first 20; the worst ratio to the limit and its tensor. */
static int compare_gradients(const mt_model_layout *layout, const float *got, const float *want,
                             double limit, double *worst, const char **worst_name) {
    int k = 0;
    *worst = 0, *worst_name = "-";
    double *norms = malloc((size_t)layout->tensor_count * sizeof *norms);
    if (!norms) return layout->tensor_count; /* counted as failures */
    for (int i = 0; i < layout->tensor_count; i++)
        if (layout->tensors[i].buffer == MT_PARAM_TRAINABLE)
            norms[k++] = l2(want + layout->tensors[i].offset, layout->tensors[i].count);
    qsort(norms, (size_t)k, sizeof *norms, norm_order);
    double floor = k ? 0.1 * norms[k / 2] : 0.0;
    free(norms);
    int bad = 0;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer != MT_PARAM_TRAINABLE) continue;
        double n = l2(want + t->offset, t->count);
        double d = l2_diff(got + t->offset, want + t->offset, t->count);
        double rel = d / fmax(fmax(n, floor), 1e-30);
        if (rel / limit > *worst) *worst = rel / limit, *worst_name = t->name;
        if (rel > limit && ++bad <= 20)
            printf("FAIL gradient %-44s rel L2 %.2e (limit %.2e, norm %.3e, floor %.3e)\n", t->name,
                   rel, limit, n, floor);
    }
    return bad;
}

static int check_golden(const options *o, mt_backend *backend, step_output *s) {
    const mt_model_layout *layout = s->layout;
    FILE *f = fopen(o->file, "rb");
    if (!f) {
        fprintf(stderr, "gpu_golden_step: cannot read '%s': %s (run tests/gpu/prepare.sh)\n",
                o->file, strerror(errno));
        return 2;
    }
    char line[512], want[64], ref_backend[64] = "?";
    int rc = 2;
    float *ref = NULL;
    if (!fgets(line, sizeof line, f) || strcmp(line, golden_magic) != 0) {
        fprintf(stderr,
                "gpu_golden_step: '%s' is not a golden step file of this version (%.*s): rerun "
                "tests/gpu/prepare.sh\n",
                o->file, (int)strlen(golden_magic) - 1, golden_magic);
        goto done;
    }
    if (!fgets(line, sizeof line, f) || sscanf(line, "backend %63s", ref_backend) != 1) goto bad;
    snprintf(want, sizeof want, "%.9g", o->alpha);
    if (!header_expect(f, "alpha", want)) goto done;
    snprintf(want, sizeof want, "%d", o->size);
    if (!header_expect(f, "size", want)) goto done;
    snprintf(want, sizeof want, "%d", o->batch);
    if (!header_expect(f, "batch", want)) goto done;
    float ref_loss;
    int ref_correct, ref_valid;
    size_t logits;
    if (fscanf(f, "loss %f\ncorrect %d\nvalid %d\nlogits %zu\n", &ref_loss, &ref_correct,
               &ref_valid, &logits) != 4 ||
        logits != (size_t)o->batch * layout->logit_count)
        goto bad;
    /* the tensor lines must name our tensors in our order */
    size_t total = logits;
    for (int block = 0; block < 3; block++) {
        for (int i = 0; i < layout->tensor_count; i++) {
            const mt_param_tensor *t = &layout->tensors[i];
            if (!in_block(t, block)) continue;
            char kind[16], name[256];
            size_t count;
            double norm;
            if (!fgets(line, sizeof line, f) ||
                sscanf(line, "%15s %255s %zu %lf", kind, name, &count, &norm) != 4 ||
                strcmp(kind, block_kind[block]) != 0 || strcmp(name, t->name) != 0 ||
                count != t->count) {
                fprintf(stderr,
                        "gpu_golden_step: golden file: tensor line '%s' does not match "
                        "'%s %s' (%zu values): rerun tests/gpu/prepare.sh\n",
                        line, block_kind[block], t->name, t->count);
                goto done;
            }
            total += count;
        }
    }
    if (!fgets(line, sizeof line, f) || strcmp(line, "data\n") != 0) goto bad;
    ref = malloc(total * sizeof *ref);
    if (!ref || fread(ref, sizeof *ref, total, f) != total) goto bad;
    const float *ref_grads = ref + logits, *ref_state = ref_grads + layout->trainable_count;
    const float *ref_betas = ref_state + layout->state_count;

    /* the step with the betas the reference ran with (off the ReLU6 kinks) */
    memcpy(s->betas, ref_betas, s->beta_count * sizeof *s->betas);
    if ((rc = betas_copy(s, true)) != 0 || (rc = step_run(o, backend, s)) != 0) goto done;

    int failures = 0;
    double limit_fwd = model_limit(6);
    double logits_error = l2_diff(s->logits, ref, logits) / fmax(l2(ref, logits), 1e-30);
    double loss_error = fabs((double)s->result.loss - ref_loss) / fmax(fabs(ref_loss), 1e-30);
    bool logits_ok = logits_error <= limit_fwd, loss_ok = loss_error <= limit_fwd;
    printf("golden step: %s against %s (alpha %.2f, %dx%d, batch %d)\n", o->backend, ref_backend,
           o->alpha, o->size, o->size, o->batch);
    printf("%-4s loss %.7f vs %.7f: rel |diff| %.2e (limit %.2e)\n", loss_ok ? "ok" : "FAIL",
           s->result.loss, ref_loss, loss_error, limit_fwd);
    printf("%-4s logits: rel L2 %.2e (limit %.2e); correct %d vs %d of %d\n",
           logits_ok ? "ok" : "FAIL", logits_error, limit_fwd, s->result.correct, ref_correct,
           ref_valid);
    failures += !loss_ok + !logits_ok;

    /* every gradient tensor, and the whole gradient */
    int compared = 0;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer != MT_PARAM_TRAINABLE) continue;
        compared++;
        if (o->broken && strcmp(t->name, o->broken) == 0)
            for (size_t j = 0; j < t->count; j++)
                s->grads[t->offset + j] *= 1.01f;
    }
    double limit_all = model_limit(10), limit_tensor = model_limit(160), worst;
    const char *worst_name;
    int bad = compare_gradients(layout, s->grads, ref_grads, limit_tensor, &worst, &worst_name);
    double all = l2_diff(s->grads, ref_grads, layout->trainable_count) /
                 fmax(l2(ref_grads, layout->trainable_count), 1e-30);
    bool all_ok = all <= limit_all;
    printf("%-4s gradients: %d of %d tensors within tolerance (limit %.2e); whole gradient rel L2 "
           "%.2e (limit %.2e); closest to its limit: %s at %.0f%% of it\n",
           bad || !all_ok ? "FAIL" : "ok", compared - bad, compared, limit_tensor, all, limit_all,
           worst_name, 100 * worst);
    failures += bad > 0 || !all_ok || compared == 0;

    /* the step's change of the BN moving statistics (momentum 0.999: 0.001 of the batch's) */
    double sn = l2(ref_state, layout->state_count);
    double sd = l2_diff(s->state, ref_state, layout->state_count) / fmax(sn, 1e-30);
    bool state_ok = sd <= model_limit(12);
    printf("%-4s BN moving statistics' change: rel L2 %.2e (limit %.2e)\n",
           state_ok ? "ok" : "FAIL", sd, model_limit(12));
    failures += !state_ok;
    printf("%s\n", failures ? "GOLDEN STEP FAILED" : "GOLDEN STEP PASSED");
    rc = failures ? 1 : 0;
    goto done;
bad:
    fprintf(stderr, "gpu_golden_step: '%s' is truncated or malformed: rerun tests/gpu/prepare.sh\n",
            o->file);
    rc = 2;
done:
    free(ref);
    fclose(f);
    return rc;
}

static int usage(void) {
    fprintf(stderr, "usage: gpu_golden_step write|check FILE [--backend NAME] [--weights H5|none]"
                    " [--alpha A] [--size S] [--batch N] [--break TENSOR]\n"
                    "       gpu_golden_step probe BACKEND\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "probe") == 0) {
        mt_backend *backend = NULL;
        if (mt_backend_create(argv[2], NULL, &backend) != MT_OK) {
            printf("backend %s cannot start: %s\n", argv[2], mt_last_error());
            return 2;
        }
        printf("backend %s started\n", argv[2]);
        mt_backend_destroy(backend);
        return 0;
    }
    if (argc < 3 || (strcmp(argv[1], "write") != 0 && strcmp(argv[1], "check") != 0))
        return usage();
    options o = {.command = argv[1],
                 .file = argv[2],
                 .weights = "none",
                 .alpha = 1.0f,
                 .size = 160,
                 .batch = 32};
    o.backend = strcmp(o.command, "write") == 0 ? "reference" : "cuda";
    for (int i = 3; i < argc; i++) {
        if (i + 1 >= argc) return usage();
        const char *k = argv[i], *v = argv[++i];
        if (strcmp(k, "--backend") == 0)
            o.backend = v;
        else if (strcmp(k, "--weights") == 0)
            o.weights = v;
        else if (strcmp(k, "--alpha") == 0)
            o.alpha = strtof(v, NULL);
        else if (strcmp(k, "--size") == 0)
            o.size = atoi(v);
        else if (strcmp(k, "--batch") == 0)
            o.batch = atoi(v);
        else if (strcmp(k, "--break") == 0)
            o.broken = v;
        else
            return usage();
    }
    mt_backend *backend = NULL;
    if (mt_backend_create(o.backend, NULL, &backend) != MT_OK) {
        const char *skip = getenv("MT_GOLDEN_SKIP_OK");
        fprintf(stderr, "gpu_golden_step: backend '%s' cannot start: %s\n", o.backend,
                mt_last_error());
        return skip && strcmp(skip, "1") == 0 ? 77 : 2;
    }
    step_output s = {0};
    int rc = step_setup(&o, backend, &s);
    if (rc == 0 && o.command[0] == 'w') {
        rc = write_step(&o, backend, &s);
        if (rc == 0) rc = write_golden(&o, &s);
    } else if (rc == 0) {
        rc = check_golden(&o, backend, &s);
    }
    free(s.images), free(s.labels), free(s.grads), free(s.state), free(s.betas);
    mt_model_destroy(s.model);
    mt_backend_destroy(backend);
    return rc;
}
