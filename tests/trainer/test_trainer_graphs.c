/* train.cuda_graphs on the CPU: the trainer captures its step once per batch shape and replays it
 * (ops.h step_capture_begin/end, step_replay). Here the capture is step_recorder.h's stand-in on
 * the reference backend, which replays exactly the recorded calls with the recorded arguments, so
 * any per-step value still passed by value (the dropout seed, the learning rate, Adam's step
 * size, the loss step, fp16's loss scale) or written inside the captured part would replay
 * stale. Training "with graphs" must equal eager training bit for bit: every tensor of the last
 * checkpoint (weights, BN statistics, optimizer slots), its metadata (iterations, fp16's
 * loss-scale state), and the loss and accuracy of every epoch. Two runs: fp32 with Adam and
 * dropout, nan_policy = skip (the BN backup and its restore in the step); fp16 (the reference's
 * emulation) with RMSprop and momentum, whose loss scale moves on through the skip flag read back
 * at the next step's top. A third run (fp32 again) has the capture refused at its begin, as cuda
 * refuses while profiling (docs/gpu.md): graphs go off for the run, it still trains, and it
 * equals eager. A tiny network (alpha 0.35 at 32x32), 3 epochs of 3 steps.
 *
 * MT_TRAINER_GRAPHS_BACKEND=cuda runs the same three comparisons on the cuda backend itself, with
 * its real capture (cudaStreamBeginCapture ... cudaGraphLaunch): the ctest trainer_graphs_cuda
 * does so on the emulated cuda module (tests/gpu/emu), whose runtime records a captured stream's
 * work and replays exactly that, and counts captures and replays in MT_EMU_REPORT's file; the
 * refused begin is cuda's own refusal while MT_CUDA_PROFILE=1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/test_db.h"
#include "mobiletune/checkpoint.h"
#include "mobiletune/comm.h"
#include "mobiletune/config.h"
#include "mobiletune/trainer.h"
#include "step_recorder.h"
#include "test_util.h"

enum { RECORDS = 24, BATCH = 8, EPOCHS = 3, STEPS = EPOCHS * RECORDS / BATCH };

/* the backend under test: NULL for the recorder on the reference backend */
static const char *real_backend;

/* The totals of the emulated runtime's report (MT_EMU_REPORT; zeros before its first write);
 * `work`: the pieces of device work it ran. */
static step_recorder_stats emulated_totals(unsigned long long *work) {
    step_recorder_stats totals = {0};
    *work = 0;
    const char *path = getenv("MT_EMU_REPORT");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f) {
        unsigned long long c = 0, b = 0, r = 0;
        CHECK_MSG(fscanf(f, "captures %llu broken %llu replays %llu work %llu", &c, &b, &r,
                         work) == 4,
                  "%s: not an emulated runtime report", path);
        fclose(f);
        totals = (step_recorder_stats){.captures = c, .broken_captures = b, .replays = r};
    }
    return totals;
}

static void set(mt_train_config *c, const char *assignment) {
    TEST_MUST(mt_config_set(c, assignment));
}

/* One training run into `run_dir`; graphs on or off; the recorder's statistics come back, and
 * on a real backend the pieces of device work the run did (the emulated runtime's count). */
static void train(const char *data, const char *run_dir, const char *const *extra, bool graphs,
                  step_recorder_stats *stats, unsigned long long *work) {
    mt_train_config c;
    mt_config_defaults(&c);
    char line[600];
    snprintf(line, sizeof line, "data.train=%s", data), set(&c, line);
    snprintf(line, sizeof line, "data.val=%s", data), set(&c, line);
    snprintf(line, sizeof line, "output.run_dir=%s", run_dir), set(&c, line);
    const char *common[] = {"data.batch_size=8",  "data.shuffle=true",    "data.random_flip=true",
                            "data.loader_threads=1", "model.alpha=0.35", "model.input_size=32",
                            "model.classes=2",    "model.dropout=0.3",    "model.mode=scratch",
                            "train.epochs=3",     "train.seed=11",        "train.threads=1",
                            "output.tensorboard=false"};
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++)
        set(&c, common[i]);
    snprintf(line, sizeof line, "train.backend=%s", real_backend ? real_backend : "reference");
    set(&c, line);
    for (int i = 0; extra[i]; i++)
        set(&c, extra[i]);
    set(&c, graphs ? "train.cuda_graphs=true" : "train.cuda_graphs=false");
    TEST_MUST(mt_config_check(&c));
    mt_comm *comm = NULL;
    TEST_MUST(mt_comm_init(NULL, NULL, &comm));
    const mt_train_options options = {.wrap_backend = real_backend ? NULL : step_recorder_wrap};
    unsigned long long work_before = 0, work_after = 0;
    const step_recorder_stats before = emulated_totals(&work_before);
    mt_train_result result;
    TEST_MUST(mt_train(&c, comm, &options, &result));
    mt_comm_finalize(comm);
    *work = 0;
    if (!real_backend) {
        *stats = step_recorder_last_stats();
        return;
    }
    const step_recorder_stats after = emulated_totals(&work_after); /* the shutdown wrote it */
    *work = work_after - work_before;
    *stats = (step_recorder_stats){.captures = after.captures - before.captures,
                                   .broken_captures = after.broken_captures -
                                                      before.broken_captures,
                                   .replays = after.replays - before.replays};
}

/* Every tensor and metadata value of the two checkpoints equal, byte for byte */
static void same_checkpoint(const char *what, const char *a_path, const char *b_path) {
    mt_checkpoint *a = NULL, *b = NULL;
    TEST_MUST(mt_checkpoint_read(a_path, &a));
    TEST_MUST(mt_checkpoint_read(b_path, &b));
    CHECK_MSG(mt_checkpoint_tensor_count(a) == mt_checkpoint_tensor_count(b),
              "%s: %d tensors, eager %d", what, mt_checkpoint_tensor_count(b),
              mt_checkpoint_tensor_count(a));
    int differ = 0;
    for (int i = 0; i < mt_checkpoint_tensor_count(a); i++) {
        const mt_checkpoint_tensor *ta = mt_checkpoint_tensor_at(a, i);
        const mt_checkpoint_tensor *tb = mt_checkpoint_find(b, ta->name);
        if (!tb || tb->bytes != ta->bytes || memcmp(ta->data, tb->data, ta->bytes) != 0) {
            if (differ++ < 5) fprintf(stderr, "%s: tensor %s differs\n", what, ta->name);
        }
    }
    CHECK_MSG(differ == 0, "%s: %d tensors differ between eager and graph training", what, differ);
    for (int i = 0; i < mt_checkpoint_meta_count(a); i++) {
        const char *key, *value;
        mt_checkpoint_meta_at(a, i, &key, &value);
        if (strstr(key, "time") || strstr(key, "seconds") || strstr(key, "config")) continue;
        const char *other = mt_checkpoint_meta(b, key);
        CHECK_MSG(other && strcmp(other, value) == 0, "%s: metadata %s = %s, eager %s", what,
                  key, other ? other : "(none)", value);
    }
    mt_checkpoint_free(a);
    mt_checkpoint_free(b);
}

/* The "loss" and "accuracy" fields of every line of two metrics.jsonl files, as printed */
static void same_metrics(const char *what, const char *a_dir, const char *b_dir) {
    char path[2][800];
    snprintf(path[0], sizeof path[0], "%s/metrics.jsonl", a_dir);
    snprintf(path[1], sizeof path[1], "%s/metrics.jsonl", b_dir);
    FILE *f[2] = {fopen(path[0], "r"), fopen(path[1], "r")};
    CHECK_MSG(f[0] && f[1], "%s: metrics.jsonl missing", what);
    char line[2][4096];
    int lines = 0;
    while (f[0] && f[1] && fgets(line[0], sizeof line[0], f[0])) {
        CHECK_MSG(fgets(line[1], sizeof line[1], f[1]) != NULL, "%s: fewer metrics lines", what);
        const char *keys[] = {"\"loss\":", "\"accuracy\":", "\"loss_scale\":", "\"skipped_steps\":"};
        for (int k = 0; k < 4; k++) {
            const char *x = strstr(line[0], keys[k]), *y = strstr(line[1], keys[k]);
            CHECK_MSG((x == NULL) == (y == NULL), "%s: %s in one run only", what, keys[k]);
            if (x && y)
                CHECK_MSG(strtod(x + strlen(keys[k]), NULL) == strtod(y + strlen(keys[k]), NULL),
                          "%s line %d: %s %.9g, eager %.9g", what, lines + 1, keys[k],
                          strtod(y + strlen(keys[k]), NULL), strtod(x + strlen(keys[k]), NULL));
        }
        lines++;
    }
    CHECK_MSG(lines >= EPOCHS, "%s: %d metrics lines", what, lines);
    for (int i = 0; i < 2; i++)
        if (f[i]) fclose(f[i]);
}

/* The device work of each eager run by its name, for every graph run compared with it later. */
enum { MAX_EAGER_RUNS = 8 };
typedef struct eager_run {
    const char *name;
    unsigned long long work;
    bool made;
} eager_run;
static eager_run eager_runs[MAX_EAGER_RUNS];
static int eager_run_count;

static eager_run *eager_run_of(const char *eager_name) {
    for (int i = 0; i < eager_run_count; i++)
        if (strcmp(eager_runs[i].name, eager_name) == 0) return &eager_runs[i];
    if (eager_run_count == MAX_EAGER_RUNS) {
        fprintf(stderr, "test_trainer_graphs: more than %d eager runs: raise MAX_EAGER_RUNS\n",
                MAX_EAGER_RUNS);
        exit(2);
    }
    eager_runs[eager_run_count].name = eager_name;
    return &eager_runs[eager_run_count++];
}

/* Graph training of `name` against eager training of `eager_name` (run here when it is `name`;
 * otherwise an earlier compare_runs made it with the same `extra`). The recorder refuses the
 * first `refused` capture begins of the graph run. `same_work`: on a real backend the two runs
 * must do the same device work (runs without evaluations: an eager step after an evaluation
 * reuses the conv weight copies the evaluation made, which a replay, making its own, cannot). */
static void compare_runs(const char *root, const char *name, const char *eager_name,
                         const char *const *extra, int refused, bool same_work) {
    char data[600], eager[700], graphs[700];
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(eager, sizeof eager, "%s/%s-eager", root, eager_name);
    snprintf(graphs, sizeof graphs, "%s/%s-graphs", root, name);
    step_recorder_stats off, on;
    eager_run *run = eager_run_of(eager_name);
    unsigned long long work = 0;
    if (strcmp(name, eager_name) == 0) {
        train(data, eager, extra, false, &off, &run->work);
        run->made = true;
        CHECK_MSG(off.captures == 0 && off.replays == 0, "%s: graphs off still captured", name);
    }
    if (!run->made) {
        CHECK_MSG(false, "%s: compared with the eager run %s, which was not made yet", name,
                  eager_name);
        return;
    }
    step_recorder_refuse_begins(refused);
    if (refused && real_backend) setenv("MT_CUDA_PROFILE", "1", 1); /* cuda refuses then */
    train(data, graphs, extra, true, &on, &work);
    if (refused && real_backend) unsetenv("MT_CUDA_PROFILE");
    if (refused) {
        /* the refused begin turns graphs off: that step and all later ones run eager (a real
         * backend's refusals are not counted: no capture and no replay is what shows) */
        if (real_backend) on.refused_begins = 1;
        CHECK_MSG(on.refused_begins == 1 && on.captures == 0 && on.replays == 0,
                  "%s: %llu refused begins, %llu captures, %llu replays", name,
                  (unsigned long long)on.refused_begins, (unsigned long long)on.captures,
                  (unsigned long long)on.replays);
    } else {
        /* one eager warm-up step, the capture with its replay, then a replay for every other
         * step: the validation between epochs neither reallocates nor frees */
        CHECK_MSG(on.captures == 1 && on.broken_captures == 0 && on.replays == STEPS - 1,
                  "%s: %llu captures (%llu broken), %llu replays, expected 1 and %d", name,
                  (unsigned long long)on.captures, (unsigned long long)on.broken_captures,
                  (unsigned long long)on.replays, STEPS - 1);
        /* a replay runs exactly the work of the eager step it stands for: no more conv weight
         * copies (those of frozen kernels, which no step writes, were made once, before the
         * capture), none fewer; the rest of the run (input, checkpoints) is the same work */
        if (same_work && real_backend)
            CHECK_MSG(work == run->work, "%s: %llu pieces of device work with graphs, %llu "
                      "eager (%s)", name, work, run->work, eager_name);
    }
    char a[800], b[800];
    snprintf(a, sizeof a, "%s/last.safetensors", eager);
    snprintf(b, sizeof b, "%s/last.safetensors", graphs);
    same_checkpoint(name, a, b);
    same_metrics(name, eager, graphs);
    printf("%s: %llu captures, %llu replays (%llu op calls replayed, %llu pieces of device "
           "work): bit for bit eager\n", name, (unsigned long long)on.captures,
           (unsigned long long)on.replays, (unsigned long long)on.replayed_calls, work);
}

int main(void) {
    real_backend = getenv("MT_TRAINER_GRAPHS_BACKEND");
    if (real_backend && !*real_backend) real_backend = NULL;
    if (real_backend && !getenv("MT_EMU_REPORT")) {
        fprintf(stderr, "MT_TRAINER_GRAPHS_BACKEND=%s needs MT_EMU_REPORT (the emulated cuda "
                        "module's capture counts)\n", real_backend);
        return 2;
    }
    if (real_backend) remove(getenv("MT_EMU_REPORT")); /* totals of this process only */
    const char *root = mt_test_make_temp_dir("trainer_graphs");
    char data[600];
    snprintf(data, sizeof data, "%s/data", root);
    if (mkdir(data, 0755) != 0) return 1;
    const test_db_spec spec = {.count = RECORDS, .height = 32, .width = 32, .classes = 2};
    if (!test_db_create(data, &spec)) return 1;

    const char *fp32[] = {"optimizer.name=adam", "optimizer.learning_rate=1e-3",
                          "optimizer.schedule=cosine", "train.nan_policy=skip", NULL};
    compare_runs(root, "fp32-adam", "fp32-adam", fp32, 0, false);
    compare_runs(root, "fp32-adam-refused", "fp32-adam", fp32, 1, false);
    const char *fp16[] = {"optimizer.name=rmsprop", "optimizer.momentum=0.9",
                          "optimizer.learning_rate=1e-3", "train.precision=fp16", NULL};
    compare_runs(root, "fp16-rmsprop", "fp16-rmsprop", fp16, 0, false);
    /* finetune: Keras layers [:100] frozen (their kernels never written after the upload, so a
     * graph reads their conv weight copies made before its capture), the rest trains; without
     * evaluations, so that the device work of both runs must match */
    const char *finetune32[] = {"model.mode=finetune", "model.fine_tune_at=100",
                                "optimizer.name=adam", "optimizer.learning_rate=1e-3",
                                "train.eval_every=0", NULL};
    compare_runs(root, "finetune-fp32", "finetune-fp32", finetune32, 0, true);
    const char *finetune16[] = {"model.mode=finetune", "model.fine_tune_at=100",
                                "optimizer.name=rmsprop", "optimizer.learning_rate=1e-3",
                                "train.precision=bf16", "train.eval_every=0", NULL};
    compare_runs(root, "finetune-bf16", "finetune-bf16", finetune16, 0, true);
    mt_test_remove_tree(root);
    return mt_test_finish();
}
