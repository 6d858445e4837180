/* The training step as a CUDA graph (train.cuda_graphs): the step's device work captured once
 * per batch shape, after an eager warm-up step of that shape, and replayed (ops.h
 * step_capture_begin/end, step_replay). Backends without the capture ops (the CPU ones) run
 * every step eager. The trainer's; bench/model/bench_train_step.c runs its timed steps through
 * the same code (one rank), so that the benchmark measures the steps training runs. */
#ifndef MT_TRAINER_GRAPH_H
#define MT_TRAINER_GRAPH_H

#include <stdbool.h>
#include <stdint.h>

#include "mobiletune/comm.h"
#include "mobiletune/model.h"
#include "mobiletune/ops.h"

/* Who runs the steps: the backend, the model (its memory generation after an eager step), and
 * the ranks that agree on every capture (comm is not used with one rank, and may be NULL). */
typedef struct trainer_graph_runner {
    mt_backend *backend;
    mt_model *model;
    mt_comm *comm;
    mt_comm_info who;
} trainer_graph_runner;

typedef struct trainer_graph {
    trainer_graph_runner runner; /* trainer_graph_init's */
    bool enabled;  /* train.cuda_graphs, a backend that can capture, nothing in the way */
    void *graph;   /* the captured step for batches of `rows` rows, or NULL */
    int rows;
    uint64_t memory; /* the model's memory generation at the capture */
    int warm_rows;   /* the rows of the last eager step: that shape's warm-up is done */
    uint64_t warm_memory; /* and the model's memory generation then */
    uint64_t captures, replays;
    bool refuse_replay; /* MT_FAULT_KIND=refuse_replay: this step, as if the backend refused */
} trainer_graph;

/* The step's device work: the same op calls on the same memory whenever `rows` is the same
 * (per-step values are read from backend memory, ops.h "Per-step values"). */
typedef mt_status (*trainer_step_fn)(const void *user);

/* Decide whether steps are captured: `wanted` (train.cuda_graphs) and the backend's capture ops;
 * `host_sync` (the gradient synchronizer does host work between the step's ops: train.comm =
 * mpi, mt_grad_sync_host_work) turns it off, and *why_off says so (NULL when off for want of
 * asking or of a capable backend: nothing to say). NCCL's bucketed all-reduce is stream work
 * and is captured with the step. */
void trainer_graph_init(trainer_graph *g, bool wanted, trainer_graph_runner runner,
                        bool host_sync, const char **why_off);

/* One step of `rows` rows through `body`: eager when graphs are off, when `eager` (a step with
 * host work inside, e.g. an injected fault), for the first step of a shape (warm-up: the
 * backend's pools and algorithm searches settle) and when the shape or the model's memory
 * (`memory`: mt_model_memory_generation) changed; otherwise the shape's graph is replayed,
 * captured first if there is none yet. A capture the backend refuses to begin (cuda while
 * profiling, docs/gpu.md) or that fails turns graphs off for the run, with one line on stderr
 * naming why, and the step runs eager (nothing of it ran). With several ranks the capture's
 * outcome is agreed on (a captured NCCL collective must be captured on every rank, and a graph
 * holding one launched on every rank): one rank's failure turns graphs off on all. */
mt_status trainer_graph_step(trainer_graph *g, int rows, uint64_t memory, bool eager,
                             trainer_step_fn body, const void *user);

/* The graph, if any, freed (also after an init that never ran: a zeroed trainer_graph). */
void trainer_graph_free(trainer_graph *g);

#endif
