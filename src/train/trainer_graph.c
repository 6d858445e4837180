/* The training step captured once per batch shape and replayed (trainer_graph.h). The trainer
 * gives this file the step's device work as one function, NCCL's bucketed all-reduce launches
 * included; everything that depends on the host (the batch, the per-step values, the fp16 flag,
 * NCCL's error and deadline checks) happens before or after it. */
#include "train/trainer_graph.h"

#include <stdio.h>

void trainer_graph_init(trainer_graph *g, bool wanted, trainer_graph_runner runner,
                        bool host_sync, const char **why_off) {
    *g = (trainer_graph){.runner = runner};
    *why_off = NULL;
    const mt_ops *ops = runner.backend->ops;
    if (!wanted || !ops->step_capture_begin || !ops->step_capture_end || !ops->step_replay ||
        !ops->step_graph_free)
        return;
    if (host_sync) {
        /* MPI reduces in host memory and only moves data inside MPI calls: the bucketed
         * all-reduce is host code between the step's ops, which a replay would skip (NCCL's is
         * stream work, captured with the step; its host checks run after it) */
        *why_off = "off: train.comm = mpi all-reduces the gradients on the host inside the step "
                   "(MPI calls and host copies between backward's ops, which a CUDA graph cannot "
                   "hold), so the steps run eager; train.comm = nccl captures them";
        return;
    }
    g->enabled = true;
}

static void drop(trainer_graph *g) {
    mt_backend *backend = g->runner.backend;
    if (g->graph) backend->ops->step_graph_free(backend, g->graph);
    g->graph = NULL;
    g->rows = 0;
}

void trainer_graph_free(trainer_graph *g) {
    if (g->runner.backend) drop(g);
}

/* An eager step that is the warm-up of `warm_rows` rows (0: warms nothing up). The model's
 * memory generation is read after the step: the first backward after a reallocation makes the
 * gradient tensors, so the generation before it would never match the next step's. */
static mt_status run_eager(trainer_graph *g, int warm_rows, trainer_step_fn body,
                           const void *user) {
    mt_status status = body(user);
    g->warm_rows = warm_rows;
    g->warm_memory = mt_model_memory_generation(g->runner.model);
    return status;
}

/* The capture could not begin or did not end, here (`mine`) or on another rank: graphs off for
 * the run, said once on stderr (the backend's error names why, e.g. cuda's refusal while
 * profiling), and the step runs eager. */
static mt_status capture_failed(trainer_graph *g, const char *why, trainer_step_fn body,
                                const void *user) {
    g->enabled = false;
    if (why)
        fprintf(stderr, "train.cuda_graphs: capturing the step failed on rank %d (%s); the steps "
                "run eager\n", g->runner.who.rank, why);
    else if (g->runner.who.rank == 0)
        fprintf(stderr, "train.cuda_graphs: capturing the step failed on another rank (its line "
                "says why); the steps run eager\n");
    return run_eager(g, 0, body, user);
}

/* Whether the capture worked on every rank. With several ranks graphs are on only with NCCL,
 * whose captured collectives NCCL requires of every rank at once (a graph's launch is a
 * collective): one host collective per capture, that is once per batch shape. */
static mt_status agreed(const trainer_graph_runner *runner, bool mine, bool *all) {
    *all = mine;
    if (runner->who.world_size == 1) return MT_OK;
    int32_t failed = !mine;
    MT_TRY(mt_comm_allreduce_max_i32(runner->comm, &failed, 1));
    *all = failed == 0;
    return MT_OK;
}

/* A backend refuses a replay after events of its own (cuda: device memory given back to the
 * driver after a failed allocation, a kept weight copy gone). One rank alone: it runs the step
 * eager and captures again. Several ranks: the others are launching graphs that hold NCCL
 * calls, which NCCL requires of every rank at once, and agreeing on it before every replay
 * would put a host collective in every step (blocking a rank on a stuck peer before NCCL's own
 * deadline can say so). So the refusal, rare, ends the job with its reason and the way on. */
static mt_status replay_refused(trainer_graph *g, int rows, trainer_step_fn body,
                                const void *user) {
    drop(g);
    if (g->runner.who.world_size == 1) return run_eager(g, rows, body, user);
    return MT_FAIL(MT_ERR_BACKEND, "rank %d: train.cuda_graphs: the captured step can no longer "
                   "run here (%s), and with several ranks this rank cannot go eager alone: "
                   "continue with --resume auto (bit-exact), or set train.cuda_graphs = false",
                   g->runner.who.rank, mt_last_error());
}

mt_status trainer_graph_step(trainer_graph *g, int rows, uint64_t memory, bool eager,
                             trainer_step_fn body, const void *user) {
    if (!g->enabled) return body(user);
    mt_backend *backend = g->runner.backend;
    const mt_ops *ops = backend->ops;
    /* another shape, or the model reallocated its tensors: the graph points at the old ones */
    if (g->graph && (g->rows != rows || g->memory != memory)) drop(g);
    if (eager) return run_eager(g, 0, body, user);
    if (!g->graph) {
        if (g->warm_rows != rows || g->warm_memory != memory)
            return run_eager(g, rows, body, user);
        /* capture: the ops are recorded, not run; the replay below runs them */
        void *graph = NULL;
        char why[512] = ""; /* the first error: an op's under capture, not the end's after it */
        bool captured = ops->step_capture_begin(backend) == MT_OK;
        if (captured) {
            mt_status status = body(user);
            if (status != MT_OK) snprintf(why, sizeof why, "%s", mt_last_error());
            mt_status ended = ops->step_capture_end(backend, &graph);
            captured = status == MT_OK && ended == MT_OK;
        }
        if (!captured && !why[0]) snprintf(why, sizeof why, "%s", mt_last_error());
        bool everywhere = false;
        mt_status agreement = agreed(&g->runner, captured, &everywhere);
        if (!everywhere || agreement != MT_OK) {
            if (graph) ops->step_graph_free(backend, graph);
            if (agreement != MT_OK) return agreement;
            return capture_failed(g, captured ? NULL : why, body, user);
        }
        g->graph = graph;
        g->rows = rows;
        g->memory = memory;
        g->captures++;
    }
    mt_status status = g->refuse_replay
                           ? MT_FAIL(MT_ERR_INVALID, "refused by MT_FAULT_KIND=refuse_replay")
                           : ops->step_replay(backend, g->graph);
    if (status == MT_ERR_INVALID) return replay_refused(g, rows, body, user);
    if (status == MT_OK) g->replays++;
    return status;
}
