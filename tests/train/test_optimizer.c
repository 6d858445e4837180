/* Optimizer steps against values worked out from Keras 3's formulas (optimizer.h), three steps on
 * four numbers each, plus the schedules, the state bookkeeping and the cpu backend's threaded
 * update against the reference's. The steps run on the reference backend (the oracle), whose
 * memory is host memory: the arrays below are its buffers as they are.
 *
 * Also a helper for tests/train/keras_optimizers.py: `test_train_optimizer --case IN OUT` runs the
 * case the script wrote (the script compares the result with tf.keras on random arrays). */
#include "mobiletune/optimizer.h"
#include "mobiletune/checkpoint.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static mt_backend *REF; /* the reference backend every optimizer here runs on, unless named */

/* Three steps with these gradients from p0. */
static const float p0[4] = {1.0f, -2.0f, 0.5f, 0.0f};
static const float grads[3][4] = {
    {0.5f, -1.0f, 2.0f, 0.0f},
    {0.25f, 1.0f, -2.0f, 1e-3f},
    {1.0f, -0.5f, 0.0f, 3.0f},
};

/* Run three steps at lr 0.1 and compare each step's parameters with want[step]. */
static void check_steps(const char *what, mt_optimizer_params params, const float want[3][4]) {
    mt_optimizer opt;
    mt_status status = mt_optimizer_init(&opt, REF, &params, 4);
    CHECK_MSG(status == MT_OK, "%s: init: %s", what, mt_last_error());
    if (status != MT_OK) return;
    float p[4];
    memcpy(p, p0, sizeof p);
    for (int step = 0; step < 3; step++) {
        status = mt_optimizer_step(&opt, p, grads[step], 4, 0.1f);
        CHECK_MSG(status == MT_OK, "%s: step: %s", what, mt_last_error());
        char label[96];
        snprintf(label, sizeof label, "%s after step %d", what, step + 1);
        mt_test_arrays_close(label, p, want[step], 4, 1e-6, 2e-6);
    }
    CHECK(opt.iterations == 3);
    mt_optimizer_free(&opt);
}

static void test_rmsprop(void) {
    mt_optimizer_params params = mt_optimizer_params_default(MT_OPTIMIZER_RMSPROP);
    /* Step 1: v = 0.1*g^2, p -= 0.1*g/sqrt(0.1*g^2 + 1e-7) = 0.1/sqrt(0.1)*sign(g) ~ 0.3162278
     * for g != 0 (the eps inside the root moves the 7th digit); g = 0 leaves p alone.
     * Step 2: v = 0.9*v1 + 0.1*g2^2, e.g. element 0: v = 0.025 + 0.00625 = 0.03125,
     * p = 0.6837729 - 0.025/sqrt(0.03125 + 1e-7) = 0.5363312. Element 2 has g2 = -g1: 0.4131880. */
    static const float want[3][4] = {
        {0.683772866f, -1.68377239f, 0.183772274f, 0.0f},
        {0.536331167f, -1.91318807f, 0.413187992f, -0.223606798f},
        {0.254473349f, -1.80024961f, 0.413187992f, -0.53983453f},
    };
    check_steps("rmsprop", params, want);

    /* With momentum 0.5: m = 0.5*m + d; step 2, element 0: m = 0.5*0.3162271 + 0.1474418 =
     * 0.3055553, p = 0.6837729 - 0.3055553 = 0.3782176. */
    params.momentum = 0.5f;
    static const float want_momentum[3][4] = {
        {0.683772866f, -1.68377239f, 0.183772274f, 0.0f},
        {0.3782176f, -1.75507426f, 0.255074129f, -0.223606798f},
        {-0.0564178515f, -1.67778674f, 0.290725057f, -0.651637929f},
    };
    check_steps("rmsprop momentum 0.5", params, want_momentum);

    /* Decoupled decay 0.1 first: p *= 1 - 0.1*0.1, so step 1 element 0: 0.99 - 0.3162271. */
    params.momentum = 0.0f;
    params.weight_decay = 0.1f;
    static const float want_decay[3][4] = {
        {0.673772866f, -1.66377239f, 0.178772274f, 0.0f},
        {0.519593438f, -1.87655034f, 0.40640027f, -0.223606798f},
        {0.232539686f, -1.74484638f, 0.402336267f, -0.537598462f},
    };
    check_steps("rmsprop weight decay 0.1", params, want_decay);
}

static void test_sgd(void) {
    mt_optimizer_params params = mt_optimizer_params_default(MT_OPTIMIZER_SGD);
    /* p -= 0.1*g */
    static const float want[3][4] = {
        {0.95f, -1.9f, 0.3f, 0.0f},
        {0.925f, -2.0f, 0.5f, -0.0001f},
        {0.825f, -1.95f, 0.5f, -0.3001f},
    };
    check_steps("sgd", params, want);

    /* m = 0.9*m - 0.1*g; p += m. Element 0: m1 = -0.05, p1 = 0.95; m2 = -0.045 - 0.025 = -0.07,
     * p2 = 0.88; m3 = -0.063 - 0.1 = -0.163, p3 = 0.717. */
    params.momentum = 0.9f;
    static const float want_momentum[3][4] = {
        {0.95f, -1.9f, 0.3f, 0.0f},
        {0.88f, -1.91f, 0.32f, -0.0001f},
        {0.717f, -1.869f, 0.338f, -0.30019f},
    };
    check_steps("sgd momentum 0.9", params, want_momentum);

    /* Nesterov: p += 0.9*m - 0.1*g. Element 0: m1 = -0.05, p1 = 1 - 0.045 - 0.05 = 0.905;
     * m2 = -0.07, p2 = 0.905 - 0.063 - 0.025 = 0.817; m3 = -0.163, p3 = 0.817 - 0.1467 - 0.1. */
    params.nesterov = true;
    static const float want_nesterov[3][4] = {
        {0.905f, -1.81f, 0.12f, 0.0f},
        {0.817f, -1.919f, 0.338f, -0.00019f},
        {0.5703f, -1.8321f, 0.3542f, -0.570271f},
    };
    check_steps("sgd nesterov 0.9", params, want_nesterov);
}

static void test_adam(void) {
    mt_optimizer_params params = mt_optimizer_params_default(MT_OPTIMIZER_ADAM);
    /* Step 1: a = 0.1*sqrt(0.001)/0.1 = 0.0316228; m = 0.1*g, v = 0.001*g^2, so
     * p -= a*0.1*g/(sqrt(0.001)*|g| + 1e-7) ~ 0.1*sign(g): the familiar first Adam step of lr. */
    static const float want[3][4] = {
        {0.900000632f, -1.90000032f, 0.400000158f, 0.0f},
        {0.806783196f, -1.90526346f, 0.40526331f, -0.0741791074f},
        {0.715874811f, -1.88779095f, 0.409331742f, -0.138079561f},
    };
    check_steps("adam", params, want);

    params.weight_decay = 0.1f;
    static const float want_decay[3][4] = {
        {0.890000632f, -1.88000032f, 0.395000158f, 0.0f},
        {0.78788319f, -1.86646346f, 0.396313309f, -0.0741791074f},
        {0.689095973f, -1.83032631f, 0.396418607f, -0.13733777f},
    };
    check_steps("adam weight decay 0.1", params, want_decay);
}

static void test_bookkeeping(void) {
    mt_optimizer_params rms = mt_optimizer_params_default(MT_OPTIMIZER_RMSPROP);
    mt_optimizer_params sgd = mt_optimizer_params_default(MT_OPTIMIZER_SGD);
    mt_optimizer_params adam = mt_optimizer_params_default(MT_OPTIMIZER_ADAM);
    CHECK(mt_optimizer_slot_count(&rms) == 1);
    CHECK(mt_optimizer_slot_count(&sgd) == 0);
    CHECK(mt_optimizer_slot_count(&adam) == 2);
    rms.momentum = 0.9f;
    sgd.momentum = 0.9f;
    CHECK(mt_optimizer_slot_count(&rms) == 2 && mt_optimizer_slot_count(&sgd) == 1);

    mt_optimizer opt;
    CHECK(mt_optimizer_init(&opt, REF, &adam, 4) == MT_OK);
    CHECK(strcmp(opt.slot_names[0], "momentum") == 0 && strcmp(opt.slot_names[1], "velocity") == 0);
    float p[4];
    memcpy(p, p0, sizeof p);
    CHECK(mt_optimizer_step(&opt, p, grads[0], 3, 0.1f) == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "3 parameters") != NULL);
    CHECK(mt_optimizer_step(&opt, p, grads[0], 4, NAN) == MT_ERR_INVALID);
    CHECK(opt.iterations == 0);
    CHECK(mt_optimizer_step(&opt, p, grads[0], 4, 0.1f) == MT_OK);
    CHECK(mt_optimizer_slot(&opt, 0)[0] != 0.0f && mt_optimizer_slot(&opt, 2) == NULL);
    CHECK(mt_optimizer_reset(&opt) == MT_OK);
    CHECK(opt.iterations == 0 && mt_optimizer_slot(&opt, 1)[2] == 0.0f);
    mt_optimizer_free(&opt);

    mt_optimizer_params bad = mt_optimizer_params_default(MT_OPTIMIZER_RMSPROP);
    bad.rho = 1.0f;
    CHECK(mt_optimizer_init(&opt, REF, &bad, 4) == MT_ERR_INVALID);
    CHECK(strstr(mt_last_error(), "rho") != NULL);
    bad = mt_optimizer_params_default(MT_OPTIMIZER_ADAM);
    bad.epsilon = 0.0f;
    CHECK(mt_optimizer_init(&opt, REF, &bad, 4) == MT_ERR_INVALID);
    CHECK(strcmp(mt_optimizer_kind_name(MT_OPTIMIZER_SGD), "sgd") == 0);
}

/* The cpu backend's update (OpenMP over big arrays) gives the reference's bit for bit, for every
 * rule: both apply the same per-element code (ops/optimizer_update.h) and elements are
 * independent, so threads cannot change a result. Both backends keep host memory, so the arrays
 * are passed as they are. */
static void test_cpu_matches_reference(void) {
    enum { N = 200000 };
    mt_backend *cpu = NULL;
    mt_backend_options options = {.num_threads = 2};
    if (mt_backend_create("cpu", &options, &cpu) != MT_OK) {
        printf("skipping the cpu comparison: %s\n", mt_last_error());
        return;
    }
    float *p_cpu = malloc(N * sizeof(float)), *p_ref = malloc(N * sizeof(float));
    float *g = malloc(N * sizeof(float));
    mt_optimizer_params cases[5] = {
        mt_optimizer_params_default(MT_OPTIMIZER_ADAM),
        mt_optimizer_params_default(MT_OPTIMIZER_RMSPROP),
        mt_optimizer_params_default(MT_OPTIMIZER_RMSPROP),
        mt_optimizer_params_default(MT_OPTIMIZER_SGD),
        mt_optimizer_params_default(MT_OPTIMIZER_SGD),
    };
    cases[0].weight_decay = 0.01f;
    cases[2].momentum = 0.5f;
    cases[3].momentum = 0.9f;
    cases[4].momentum = 0.9f;
    cases[4].nesterov = true;
    for (int k = 0; k < 5; k++) {
        uint32_t state = 12345;
        for (int i = 0; i < N; i++) {
            state = state * 1664525u + 1013904223u;
            p_cpu[i] = p_ref[i] = (float)(state >> 8) / (float)(1 << 24) - 0.5f;
            g[i] = p_cpu[i] * 0.3f - 0.01f;
        }
        mt_optimizer on_cpu, on_ref;
        CHECK(mt_optimizer_init(&on_cpu, cpu, &cases[k], N) == MT_OK);
        CHECK(mt_optimizer_init(&on_ref, REF, &cases[k], N) == MT_OK);
        for (int step = 0; step < 3; step++) {
            CHECK(mt_optimizer_step(&on_cpu, p_cpu, g, N, 1e-3f) == MT_OK);
            CHECK(mt_optimizer_step(&on_ref, p_ref, g, N, 1e-3f) == MT_OK);
        }
        CHECK_MSG(memcmp(p_cpu, p_ref, N * sizeof(float)) == 0,
                  "case %d (%s): the cpu backend's steps differ from the reference's", k,
                  mt_optimizer_kind_name(cases[k].kind));
        for (int s = 0; s < on_ref.slot_count; s++)
            CHECK_MSG(memcmp(mt_optimizer_slot(&on_cpu, s), mt_optimizer_slot(&on_ref, s),
                             N * sizeof(float)) == 0,
                      "case %d: slot %s differs", k, on_ref.slot_names[s]);
        mt_optimizer_free(&on_cpu);
        mt_optimizer_free(&on_ref);
    }
    free(p_cpu);
    free(p_ref);
    free(g);
    mt_backend_destroy(cpu);
}

/* A step in ranges (gradient buckets, updated as their all-reduces finish: the top of the buffer
 * first, sizes from one element up) is the whole step bit for bit, slots included, on the
 * reference and the cpu backend, for every rule with two slots and one without; a range past the
 * end is refused. */
static void test_ranges(void) {
    enum { N = 70001 };
    static const size_t cuts[] = {N, 50000, 49999, 1000, 3, 0}; /* ranges [cuts[i+1], cuts[i]) */
    mt_backend *cpu = NULL;
    mt_backend_options options = {.num_threads = 2};
    mt_backend *backends[2] = {REF, NULL};
    if (mt_backend_create("cpu", &options, &cpu) == MT_OK) backends[1] = cpu;
    float *whole = malloc(N * sizeof(float)), *ranged = malloc(N * sizeof(float));
    float *g = malloc(N * sizeof(float));
    mt_optimizer_params cases[4] = {
        mt_optimizer_params_default(MT_OPTIMIZER_ADAM),
        mt_optimizer_params_default(MT_OPTIMIZER_RMSPROP),
        mt_optimizer_params_default(MT_OPTIMIZER_SGD),
        mt_optimizer_params_default(MT_OPTIMIZER_SGD),
    };
    cases[1].momentum = 0.5f; /* two slots */
    cases[2].momentum = 0.9f;
    cases[2].nesterov = true;
    for (int b = 0; b < 2 && backends[b]; b++) {
        for (int k = 0; k < 4; k++) {
            for (int i = 0; i < N; i++) {
                whole[i] = ranged[i] = sinf(0.37f * (float)i);
                g[i] = cosf(0.11f * (float)i) * 0.2f;
            }
            mt_optimizer a, r;
            CHECK(mt_optimizer_init(&a, backends[b], &cases[k], N) == MT_OK);
            CHECK(mt_optimizer_init(&r, backends[b], &cases[k], N) == MT_OK);
            for (int step = 0; step < 3; step++) {
                CHECK(mt_optimizer_step(&a, whole, g, N, 1e-2f) == MT_OK);
                CHECK(mt_optimizer_set_rate(&r, 1e-2f) == MT_OK);
                for (size_t c = 0; cuts[c] > 0; c++)
                    CHECK(mt_optimizer_update_range(&r, ranged, g, cuts[c + 1],
                                                    cuts[c] - cuts[c + 1]) == MT_OK);
                mt_optimizer_step_done(&r);
            }
            CHECK(r.iterations == 3);
            CHECK_MSG(memcmp(whole, ranged, N * sizeof(float)) == 0,
                      "%s, case %d (%s): ranged steps differ from whole steps",
                      backends[b]->ops->name, k, mt_optimizer_kind_name(cases[k].kind));
            for (int s = 0; s < a.slot_count; s++)
                CHECK_MSG(memcmp(mt_optimizer_slot(&a, s), mt_optimizer_slot(&r, s),
                                 N * sizeof(float)) == 0,
                          "%s, case %d: slot %s differs", backends[b]->ops->name, k,
                          a.slot_names[s]);
            CHECK(mt_optimizer_update_range(&r, ranged, g, N - 2, 3) == MT_ERR_INVALID);
            mt_optimizer_free(&a);
            mt_optimizer_free(&r);
        }
    }
    free(whole);
    free(ranged);
    free(g);
    mt_backend_destroy(cpu);
}

static void test_schedules(void) {
    mt_lr_schedule constant = {.kind = MT_LR_CONSTANT, .base_lr = 0.5};
    CHECK(mt_lr_schedule_at(&constant, 0) == 0.5 && mt_lr_schedule_at(&constant, 1000) == 0.5);

    /* Warmup 4 steps: 0.125, 0.25, 0.375, 0.5; then x0.5 every 10 steps counted after warmup. */
    mt_lr_schedule step = {
        .kind = MT_LR_STEP, .base_lr = 0.5, .warmup_steps = 4, .step_size = 10, .gamma = 0.5};
    CHECK_CLOSE(mt_lr_schedule_at(&step, 0), 0.125, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&step, 3), 0.5, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&step, 13), 0.5, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&step, 14), 0.25, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&step, 24), 0.125, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&step, 34), 0.0625, 0, 1e-12);

    /* Cosine over 20 steps to 10%: halfway 0.1 + 0.9*0.5 = 0.55 of base. */
    mt_lr_schedule cosine = {
        .kind = MT_LR_COSINE, .base_lr = 2.0, .total_steps = 20, .final_fraction = 0.1};
    CHECK_CLOSE(mt_lr_schedule_at(&cosine, 0), 2.0, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&cosine, 10), 1.1, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&cosine, 20), 0.2, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&cosine, 500), 0.2, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&cosine, 5), 2.0 * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI / 4))), 0,
                1e-12);
    cosine.warmup_steps = 10;
    CHECK_CLOSE(mt_lr_schedule_at(&cosine, 9), 2.0, 0, 1e-12);
    CHECK_CLOSE(mt_lr_schedule_at(&cosine, 15), 1.1, 0, 1e-12);
}

/* Save after 3 of 6 steps, write, read back into a fresh optimizer, finish: the parameters are
 * bit-identical to 6 steps straight. Mismatched optimizers are refused and left unchanged. */
static void test_save_load(void) {
    enum { N = 1000 };
    static float straight[N], resumed[N], g[N];
    for (int i = 0; i < N; i++) {
        straight[i] = resumed[i] = sinf((float)i);
        g[i] = cosf((float)i * 0.37f);
    }
    mt_optimizer_params params = mt_optimizer_params_default(MT_OPTIMIZER_RMSPROP);
    params.momentum = 0.5f;
    mt_optimizer a, b;
    CHECK(mt_optimizer_init(&a, REF, &params, N) == MT_OK);
    for (int s = 0; s < 6; s++)
        CHECK(mt_optimizer_step(&a, straight, g, N, 0.01f) == MT_OK);
    mt_optimizer_free(&a);

    CHECK(mt_optimizer_init(&a, REF, &params, N) == MT_OK);
    for (int s = 0; s < 3; s++)
        CHECK(mt_optimizer_step(&a, resumed, g, N, 0.01f) == MT_OK);
    mt_checkpoint *c = NULL, *back = NULL;
    CHECK(mt_checkpoint_create(&c) == MT_OK);
    CHECK(mt_optimizer_save(&a, c) == MT_OK);
    char *dir = mt_test_make_temp_dir("optimizer");
    char path[4200];
    snprintf(path, sizeof path, "%s/opt.safetensors", dir);
    CHECK(mt_checkpoint_write(c, path) == MT_OK);
    CHECK(mt_checkpoint_read(path, &back) == MT_OK);
    mt_optimizer_free(&a);
    if (!back) return;
    CHECK(strcmp(mt_checkpoint_meta(back, "optimizer"), "rmsprop") == 0);
    CHECK(mt_checkpoint_find(back, "optimizer/velocity") &&
          mt_checkpoint_find(back, "optimizer/momentum"));

    CHECK(mt_optimizer_init(&b, REF, &params, N) == MT_OK);
    CHECK(mt_optimizer_load(&b, back) == MT_OK);
    CHECK(b.iterations == 3);
    for (int s = 0; s < 3; s++)
        CHECK(mt_optimizer_step(&b, resumed, g, N, 0.01f) == MT_OK);
    CHECK_MSG(memcmp(straight, resumed, sizeof straight) == 0, "resumed steps differ");
    mt_optimizer_free(&b);

    /* Another kind, another size, a missing slot: refused, naming the file. */
    mt_optimizer_params adam = mt_optimizer_params_default(MT_OPTIMIZER_ADAM);
    CHECK(mt_optimizer_init(&b, REF, &adam, N) == MT_OK);
    CHECK(mt_optimizer_load(&b, back) == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), path) && strstr(mt_last_error(), "rmsprop"), "message: %s",
              mt_last_error());
    mt_optimizer_free(&b);
    CHECK(mt_optimizer_init(&b, REF, &params, N - 1) == MT_OK);
    CHECK(mt_optimizer_load(&b, back) == MT_ERR_FORMAT);
    CHECK(strstr(mt_last_error(), "optimizer/velocity") != NULL);
    CHECK(b.iterations == 0 && mt_optimizer_slot(&b, 0)[0] == 0.0f);
    mt_optimizer_free(&b);

    /* A NaN in a slot (the trainer resumes through mt_optimizer_load) is refused, naming it. */
    mt_checkpoint *bad = NULL, *bad_back = NULL;
    CHECK(mt_checkpoint_create(&bad) == MT_OK);
    int shape[1] = {N};
    straight[7] = NAN;
    CHECK(mt_checkpoint_add_f32(bad, "optimizer/velocity", 1, shape, resumed) == MT_OK);
    CHECK(mt_checkpoint_add_f32(bad, "optimizer/momentum", 1, shape, straight) == MT_OK);
    CHECK(mt_checkpoint_set_meta(bad, "optimizer", "rmsprop") == MT_OK);
    CHECK(mt_checkpoint_set_meta(bad, "optimizer_iterations", "3") == MT_OK);
    snprintf(path, sizeof path, "%s/nan.safetensors", dir);
    CHECK(mt_checkpoint_write(bad, path) == MT_OK);
    CHECK(mt_checkpoint_read(path, &bad_back) == MT_OK);
    CHECK(mt_optimizer_init(&b, REF, &params, N) == MT_OK);
    if (bad_back) {
        CHECK(mt_optimizer_load(&b, bad_back) == MT_ERR_FORMAT);
        CHECK_MSG(strstr(mt_last_error(), "optimizer/momentum") != NULL, "message: %s",
                  mt_last_error());
        CHECK(b.iterations == 0 && mt_optimizer_slot(&b, 0)[0] == 0.0f);
    }
    mt_optimizer_free(&b);
    mt_checkpoint_free(bad);
    mt_checkpoint_free(bad_back);
    mt_checkpoint_free(c);
    mt_checkpoint_free(back);
    mt_test_remove_tree(dir);
}

/* ---- the helper for keras_optimizers.py ------------------------------------------------------ */

/* IN: one text line "kind rho momentum epsilon nesterov beta_1 beta_2 weight_decay lr steps n",
 * then float32 p0[n] and grads[steps][n]. OUT: float32 p[n] after the steps. */
static int run_case(const char *in_path, const char *out_path) {
    FILE *in = fopen(in_path, "rb");
    if (!in) {
        perror(in_path);
        return 1;
    }
    int kind, nesterov, steps;
    size_t n;
    float lr;
    mt_optimizer_params params;
    if (fscanf(in, "%d %f %f %f %d %f %f %f %f %d %zu", &kind, &params.rho, &params.momentum,
               &params.epsilon, &nesterov, &params.beta_1, &params.beta_2, &params.weight_decay,
               &lr, &steps, &n) != 11 ||
        fgetc(in) != '\n') {
        fprintf(stderr, "%s: bad header\n", in_path);
        return 1;
    }
    params.kind = (mt_optimizer_kind)kind;
    params.nesterov = nesterov != 0;
    float *p = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    if (fread(p, sizeof(float), n, in) != n) return fprintf(stderr, "short p0\n"), 1;
    mt_optimizer opt;
    if (mt_optimizer_init(&opt, REF, &params, n) != MT_OK) {
        fprintf(stderr, "init: %s\n", mt_last_error());
        return 1;
    }
    for (int s = 0; s < steps; s++) {
        if (fread(g, sizeof(float), n, in) != n) return fprintf(stderr, "short grads\n"), 1;
        if (mt_optimizer_step(&opt, p, g, n, lr) != MT_OK) {
            fprintf(stderr, "step: %s\n", mt_last_error());
            return 1;
        }
    }
    fclose(in);
    FILE *out = fopen(out_path, "wb");
    if (!out || fwrite(p, sizeof(float), n, out) != n || fclose(out) != 0) {
        perror(out_path);
        return 1;
    }
    mt_optimizer_free(&opt);
    free(p);
    free(g);
    return 0;
}

int main(int argc, char **argv) {
    if (mt_backend_create("reference", NULL, &REF) != MT_OK) {
        fprintf(stderr, "reference backend: %s\n", mt_last_error());
        return 1;
    }
    if (argc == 4 && strcmp(argv[1], "--case") == 0) return run_case(argv[2], argv[3]);
    test_rmsprop();
    test_sgd();
    test_adam();
    test_bookkeeping();
    test_cpu_matches_reference();
    test_ranges();
    test_schedules();
    test_save_load();
    return mt_test_finish();
}
