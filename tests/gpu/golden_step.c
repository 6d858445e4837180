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
 *          --break TENSOR (check: scale that tensor's computed gradient by 1.05, to see it fail)
 * check exits 0 when every comparison holds, 1 when one does not, 77 when the backend cannot be
 * created and MT_GOLDEN_SKIP_OK=1 (a CPU-only try of tests/gpu/run.sh), else 2.
 *
 * The file: text lines (the configuration, the loss, then one line per tensor: kind, name, count,
 * L2 norm) up to "data", then the raw float32 values in the same order: logits, every trainable
 * tensor's gradient (whole, in the Keras layout of the trainable buffer), the BN moving statistics
 * after the step. About 9 MB at the default size. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- the error model of the comparison ----------------------------------------------------
 * Two correct fp32 implementations of a layer differ in the order of their sums. A sum of K
 * products rounded in a different order differs, relative to the sum of the magnitudes, by about
 * sqrt(K) u (rounding errors of random sign; K u is the worst case), u = 2^-24. BN in training
 * mode adds its statistics, sums over M = N*H*W. These relative differences add up along the path
 * a value takes: the forward from the input to the loss, then the backward from the loss down to
 * the layer of a gradient (each backward layer: a data-gradient sum of K' terms and, for its own
 * weights, a sum over M positions). So eps(layer) = u * (sum over the forward of sqrt(K)+sqrt(M)
 * + sum over the layers above and at it of sqrt(K')+sqrt(M)), computed from the layout below
 * (about 4e-4 for the loss and 8e-4 for the lowest gradients at alpha 1.0, 160, batch 32).
 * ROUND_MARGIN: rounding is not perfectly random (blocked or tensor-core-free cuDNN kernels sum
 * in long chains) - a factor 4 over the estimate, well below any real bug (a wrong index or
 * missing term is an O(1) relative error).
 * ReLU6 kinks: an activation within eps of 0 or 6 may be clipped on one backend and not on the
 * other. With pre-activations spread like a unit normal, the fraction of such flips is at most
 * 2 * 0.4 * eps (density of N(0,1) <= 0.4, two sides), and each flipped position changes one
 * data-gradient element by O(its size), so the relative L2 change of a gradient below a ReLU6
 * is up to sqrt(0.8 * ROUND_MARGIN * eps) (about 0.035 at the bottom). The head's dense layer
 * (no ReLU6 above it) and the loss get the rounding bound alone. */
enum { ROUND_MARGIN = 4 };
static const double unit_roundoff = 5.9604644775390625e-08; /* 2^-24 */

typedef struct error_model {
    double forward;                    /* eps of the logits and the loss */
    double below[MT_MODEL_LAYERS + 1]; /* eps of the gradients of layer i (rounding) */
} error_model;

static void error_model_build(const mt_model_layout *layout, int batch, error_model *em) {
    double fwd = 0, per_layer[MT_MODEL_LAYERS] = {0};
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        double m = (double)batch * l->out_h * l->out_w;
        const mt_layer_info *in = l->inputs[0] >= 0 ? &layout->layers[l->inputs[0]] : l;
        double k = 0, kback = 0;
        switch (l->kind) {
        case MT_LAYER_CONV:
            k = (double)l->kernel * l->kernel * in->out_c;
            kback = (double)l->kernel * l->kernel * l->out_c;
            break;
        case MT_LAYER_DEPTHWISE:
            k = kback = (double)l->kernel * l->kernel;
            break;
        case MT_LAYER_DENSE:
            k = in->out_c;
            kback = l->out_c;
            break;
        case MT_LAYER_BATCHNORM:
            k = kback = 0;
            break;
        case MT_LAYER_GLOBAL_POOL:
            k = kback = (double)in->out_h * in->out_w;
            m = 0;
            break;
        default:
            m = 0;
            break;
        }
        if (l->kind == MT_LAYER_BATCHNORM && !l->bn_training) m = 0;
        fwd += sqrt(k) + sqrt(m);
        per_layer[i] = sqrt(kback) + sqrt(m);
    }
    em->forward = unit_roundoff * fwd;
    double above = 0;
    for (int i = MT_MODEL_LAYERS - 1; i >= 0; i--) {
        above += per_layer[i];
        em->below[i] = unit_roundoff * (fwd + above);
    }
}

/* the tolerance of a gradient tensor of layer `index`: rounding, plus the kink bound below the
 * head (every backbone layer has a ReLU6 above it: out_relu is the backbone's last layer) */
static double gradient_tolerance(const error_model *em, int index) {
    double eps = ROUND_MARGIN * em->below[index];
    if (index < MT_MODEL_BACKBONE_LAYERS) eps = fmax(eps, sqrt(0.8 * eps));
    return eps;
}

/* ---- the step ------------------------------------------------------------------------------ */

typedef struct step_output {
    mt_model *model;
    const mt_model_layout *layout;
    mt_step_result result;
    float logits[MAX_LOGITS];
    float *grads; /* trainable_count, host */
    float *state; /* state_count, host */
} step_output;

static int run_step(const options *o, mt_backend *backend, step_output *s) {
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
    size_t pixels = (size_t)o->batch * o->size * o->size * 3;
    float *images = malloc(pixels * sizeof *images);
    int32_t *labels = malloc((size_t)o->batch * sizeof *labels);
    s->grads = malloc(s->layout->trainable_count * sizeof *s->grads);
    s->state = malloc((s->layout->state_count + 1) * sizeof *s->state);
    if (!images || !labels || !s->grads || !s->state) {
        fprintf(stderr, "gpu_golden_step: out of memory\n");
        free(images), free(labels);
        return 2;
    }
    make_inputs(o->batch, o->size, images, labels);
    int rc = 0;
    float *grads, *state;
    size_t count, state_count;
    if (mt_model_forward(s->model, images, labels, o->batch, true, 11, s->logits, &s->result) !=
            MT_OK ||
        mt_model_backward(s->model) != MT_OK) {
        fprintf(stderr, "gpu_golden_step: step on '%s': %s\n", o->backend, mt_last_error());
        rc = 2;
    } else {
        /* explicit downloads: the buffers live in backend memory */
        mt_model_trainable(s->model, NULL, &grads, &count);
        mt_model_state(s->model, &state, &state_count);
        if (backend->ops->download(backend, s->grads, grads, count * sizeof *grads) != MT_OK ||
            backend->ops->download(backend, s->state, state, state_count * sizeof *state) !=
                MT_OK) {
            fprintf(stderr, "gpu_golden_step: download: %s\n", mt_last_error());
            rc = 2;
        }
    }
    free(images), free(labels);
    return rc;
}

/* ---- the file ------------------------------------------------------------------------------ */

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
    fprintf(f, "mobiletune golden step 1\nbackend %s\nalpha %.9g\nsize %d\nbatch %d\n", o->backend,
            o->alpha, o->size, o->batch);
    fprintf(f, "loss %.9g\ncorrect %d\nvalid %d\nlogits %zu\n", s->result.loss, s->result.correct,
            s->result.valid, logits);
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer == MT_PARAM_TRAINABLE)
            fprintf(f, "grad %s %zu %.9g\n", t->name, t->count, l2(s->grads + t->offset, t->count));
    }
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer == MT_PARAM_STATE)
            fprintf(f, "state %s %zu %.9g\n", t->name, t->count,
                    l2(s->state + t->offset, t->count));
    }
    fputs("data\n", f);
    bool ok = fwrite(s->logits, sizeof(float), logits, f) == logits;
    for (int i = 0; ok && i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer == MT_PARAM_TRAINABLE)
            ok = fwrite(s->grads + t->offset, sizeof(float), t->count, f) == t->count;
    }
    for (int i = 0; ok && i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer == MT_PARAM_STATE)
            ok = fwrite(s->state + t->offset, sizeof(float), t->count, f) == t->count;
    }
    if (fclose(f) != 0 || !ok || rename(tmp, o->file) != 0) {
        fprintf(stderr, "gpu_golden_step: writing '%s' failed: %s\n", o->file, strerror(errno));
        remove(tmp);
        return 2;
    }
    printf("wrote %s: backend %s, loss %.6f, %zu gradient values\n", o->file, o->backend,
           s->result.loss, layout->trainable_count);
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

static int check_golden(const options *o, step_output *s) {
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
    if (!fgets(line, sizeof line, f) || strcmp(line, "mobiletune golden step 1\n") != 0) {
        fprintf(stderr, "gpu_golden_step: '%s' is not a golden step file\n", o->file);
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
    /* the tensor lines must name our trainable and state tensors in our order */
    size_t total = logits;
    for (int pass = 0; pass < 2; pass++) {
        mt_param_buffer want_buffer = pass == 0 ? MT_PARAM_TRAINABLE : MT_PARAM_STATE;
        for (int i = 0; i < layout->tensor_count; i++) {
            const mt_param_tensor *t = &layout->tensors[i];
            if (t->buffer != want_buffer) continue;
            char kind[16], name[256];
            size_t count;
            double norm;
            if (!fgets(line, sizeof line, f) ||
                sscanf(line, "%15s %255s %zu %lf", kind, name, &count, &norm) != 4 ||
                strcmp(name, t->name) != 0 || count != t->count) {
                fprintf(stderr,
                        "gpu_golden_step: golden file: tensor line '%s' does not match "
                        "'%s' (%zu values): rerun tests/gpu/prepare.sh\n",
                        line, t->name, t->count);
                goto done;
            }
            total += count;
        }
    }
    if (!fgets(line, sizeof line, f) || strcmp(line, "data\n") != 0) goto bad;
    ref = malloc(total * sizeof *ref);
    if (!ref || fread(ref, sizeof *ref, total, f) != total) goto bad;

    error_model em;
    error_model_build(layout, o->batch, &em);
    int failures = 0;
    /* the loss and the logits: the forward's rounding alone (a logit or the loss may be a small
     * difference of large terms, so relative to the largest logit, and 1 for the loss) */
    double tol_fwd = ROUND_MARGIN * em.forward, largest = 0, worst = 0;
    for (size_t i = 0; i < logits; i++)
        largest = fmax(largest, fabs(ref[i]));
    for (size_t i = 0; i < logits; i++)
        worst = fmax(worst, fabs((double)s->logits[i] - ref[i]));
    double loss_diff = fabs((double)s->result.loss - ref_loss);
    bool logits_ok = worst <= tol_fwd * fmax(largest, 1.0);
    bool loss_ok = loss_diff <= tol_fwd * fmax(fabs(ref_loss), 1.0);
    printf("golden step: %s against %s (alpha %.2f, %dx%d, batch %d)\n", o->backend, ref_backend,
           o->alpha, o->size, o->size, o->batch);
    printf("%-4s loss %.7f vs %.7f: |diff| %.2e (tol %.2e)\n", loss_ok ? "ok" : "FAIL",
           s->result.loss, ref_loss, loss_diff, tol_fwd * fmax(fabs(ref_loss), 1.0));
    printf("%-4s logits: max |diff| %.2e (tol %.2e); correct %d vs %d of %d\n",
           logits_ok ? "ok" : "FAIL", worst, tol_fwd * fmax(largest, 1.0), s->result.correct,
           ref_correct, ref_valid);
    failures += !loss_ok + !logits_ok;

    /* every gradient tensor: relative L2 difference against the tensor's own norm. A tensor
     * whose norm is below 1e-3 of the RMS-scaled whole gradient is compared against that floor
     * (a nearly zero gradient is all rounding). A BN beta is compared against the larger of its
     * norm and its gamma's: both are sums over the same N*H*W positions (of dy, of dy * xhat with
     * |xhat| ~ 1), so their rounding errors have the same absolute size, and beta's sum can
     * cancel to nothing: in scratch mode every *_project_BN/beta gradient is exactly zero in
     * exact arithmetic (a per-channel shift that reaches, through linear layers only, a conv
     * followed by a batch-statistics BN is removed by that BN), and what both backends give is
     * rounding alone (1.6e-8 for expanded_conv_project_BN/beta). */
    const float *rg = ref + logits;
    const float **ref_of = calloc((size_t)layout->tensor_count, sizeof *ref_of);
    if (!ref_of) {
        fprintf(stderr, "gpu_golden_step: out of memory\n");
        goto done;
    }
    double all_norm = 0, all_diff = 0;
    size_t all_count = 0;
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer != MT_PARAM_TRAINABLE) continue;
        if (o->broken && strcmp(t->name, o->broken) == 0)
            for (size_t j = 0; j < t->count; j++)
                s->grads[t->offset + j] *= 1.05f;
        double n = l2(rg, t->count), d = l2_diff(s->grads + t->offset, rg, t->count);
        all_norm += n * n, all_diff += d * d, all_count += t->count;
        ref_of[i] = rg;
        rg += t->count;
    }
    all_norm = sqrt(all_norm), all_diff = sqrt(all_diff);
    rg = ref + logits;
    int compared = 0, bad = 0;
    double worst_ratio = 0;
    const char *worst_name = "-";
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (t->buffer != MT_PARAM_TRAINABLE) continue;
        double floor = 1e-3 * all_norm * sqrt((double)t->count / (double)all_count);
        double n = l2(rg, t->count), d = l2_diff(s->grads + t->offset, rg, t->count);
        double scale = fmax(n, floor);
        const mt_param_tensor *gamma =
            strcmp(t->weight, "beta") == 0 ? mt_model_layout_find(layout, t->layer, "gamma") : NULL;
        if (gamma && ref_of[gamma - layout->tensors])
            scale = fmax(scale, l2(ref_of[gamma - layout->tensors], gamma->count));
        double rel = d / scale, tol = gradient_tolerance(&em, t->layer_index);
        compared++;
        if (rel > tol) {
            bad++;
            if (bad <= 20)
                printf("FAIL gradient %-44s rel L2 %.2e (tol %.2e, norm %.3e)\n", t->name, rel, tol,
                       n);
        }
        if (rel / tol > worst_ratio) worst_ratio = rel / tol, worst_name = t->name;
        rg += t->count;
    }
    printf("%-4s gradients: %d of %d tensors within tolerance; whole gradient rel L2 %.2e; "
           "closest to its limit: %s at %.0f%% of it\n",
           bad ? "FAIL" : "ok", compared - bad, compared, all_diff / fmax(all_norm, 1e-30),
           worst_name, 100 * worst_ratio);
    failures += bad > 0 || compared == 0;
    free(ref_of);

    /* BN moving statistics after the step (momentum 0.999: the old values plus 0.001 of the
     * batch's): the forward's rounding */
    const float *rs = rg;
    double sn = l2(rs, layout->state_count), sd = l2_diff(s->state, rs, layout->state_count);
    bool state_ok = sd <= tol_fwd * fmax(sn, 1e-30);
    printf("%-4s BN moving statistics: rel L2 %.2e (tol %.2e)\n", state_ok ? "ok" : "FAIL",
           sd / fmax(sn, 1e-30), tol_fwd);
    failures += !state_ok;
    printf("%s\n", failures ? "GOLDEN STEP FAILED" : "GOLDEN STEP PASSED");
    rc = failures ? 1 : 0;
    goto done;
bad:
    fprintf(stderr, "gpu_golden_step: '%s' is truncated or malformed: rerun tests/gpu/prepare.sh\n",
            o->file);
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
    int rc = run_step(&o, backend, &s);
    if (rc == 0) rc = o.command[0] == 'w' ? write_golden(&o, &s) : check_golden(&o, &s);
    free(s.grads), free(s.state);
    mt_model_destroy(s.model);
    mt_backend_destroy(backend);
    return rc;
}
