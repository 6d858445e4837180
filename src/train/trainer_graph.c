/* The training step captured once per batch shape and replayed (trainer_graph.h). The trainer
 * gives this file the step's device work as one function; everything that depends on the host
 * (the batch, the per-step values, the fp16 flag) happens before or after it. */
#include "train/trainer_graph.h"

#include <stdio.h>

#include "train/trainer_internal.h"

void trainer_graph_init(trainer_graph *g, bool wanted, const mt_backend *backend, bool host_comm,
                        const char **why_off) {
    *g = (trainer_graph){0};
    *why_off = NULL;
    const mt_ops *ops = backend->ops;
    if (!wanted || !ops->step_capture_begin || !ops->step_capture_end || !ops->step_replay ||
        !ops->step_graph_free)
        return;
    if (host_comm) {
        /* the bucketed all-reduce does host work between the step's ops (MPI's staging
         * copies; NCCL's waits for the previous step and its error polling) */
        *why_off = "off: with several ranks (or train.comm = nccl) the gradient all-reduce does "
                   "host work inside the step, so the steps run eager";
        return;
    }
    g->enabled = true;
}

static void drop(trainer_graph *g, mt_backend *backend) {
    if (g->graph) backend->ops->step_graph_free(backend, g->graph);
    g->graph = NULL;
    g->rows = 0;
}

void trainer_graph_free(trainer_graph *g, mt_backend *backend) {
    if (backend) drop(g, backend);
}

/* An eager step that is the warm-up of `warm_rows` rows (0: warms nothing up). The model's
 * memory generation is read after the step: the first backward after a reallocation makes the
 * gradient tensors, so the generation before it would never match the next step's. */
static mt_status run_eager(trainer_graph *g, trainer *t, int warm_rows, trainer_step_fn body,
                           const void *user) {
    mt_status status = body(t, user);
    g->warm_rows = warm_rows;
    g->warm_memory = mt_model_memory_generation(t->model);
    return status;
}

/* The capture could not begin or did not end: graphs off for the run, said once on stderr (the
 * backend's error names why, e.g. cuda's refusal while profiling), and the step runs eager. */
static mt_status capture_failed(trainer_graph *g, trainer *t, trainer_step_fn body,
                                const void *user) {
    g->enabled = false;
    if (t->who.rank == 0)
        fprintf(stderr, "train.cuda_graphs: capturing the step failed (%s); the steps run eager\n",
                mt_last_error());
    return run_eager(g, t, 0, body, user);
}

mt_status trainer_graph_step(trainer_graph *g, trainer *t, int rows, uint64_t memory,
                             bool eager, trainer_step_fn body, const void *user) {
    mt_backend *backend = t->backend;
    const mt_ops *ops = backend->ops;
    if (!g->enabled) return body(t, user);
    /* another shape, or the model reallocated its tensors: the graph points at the old ones */
    if (g->graph && (g->rows != rows || g->memory != memory)) drop(g, backend);
    if (eager) return run_eager(g, t, 0, body, user);
    if (!g->graph) {
        if (g->warm_rows != rows || g->warm_memory != memory)
            return run_eager(g, t, rows, body, user);
        /* capture: the ops are recorded, not run; the replay below runs them */
        if (ops->step_capture_begin(backend) != MT_OK) return capture_failed(g, t, body, user);
        mt_status status = body(t, user);
        void *graph = NULL;
        mt_status ended = ops->step_capture_end(backend, &graph);
        if (status != MT_OK || ended != MT_OK) {
            if (graph) ops->step_graph_free(backend, graph);
            return capture_failed(g, t, body, user);
        }
        g->graph = graph;
        g->rows = rows;
        g->memory = memory;
        g->captures++;
    }
    mt_status status = ops->step_replay(backend, g->graph);
    if (status == MT_ERR_INVALID) { /* backend memory changed since the capture */
        drop(g, backend);
        return run_eager(g, t, rows, body, user);
    }
    if (status == MT_OK) g->replays++;
    return status;
}
