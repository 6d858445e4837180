/* train.comm: the decision (mt_comm_decide, a pure function) over the cases that matter on a
 * cluster, from the counts and from the GPUs the ranks report (per-rank CUDA_VISIBLE_DEVICES),
 * the GPU a rank takes, and mt_comm_select's errors with real ranks on a CPU backend
 * (mpirun -np 2) or alone. The NCCL join itself needs GPUs (tests/gpu). */
#include <string.h>

#include "mobiletune/comm.h"
#include "test_util.h"

static mt_comm_kind decide_ok(mt_comm_choice choice, mt_comm_facts facts) {
    mt_comm_kind kind = (mt_comm_kind)-1;
    mt_status status = mt_comm_decide(choice, &facts, &kind);
    CHECK_MSG(status == MT_OK, "choice %d: %s", (int)choice, mt_last_error());
    return kind;
}

/* The decision fails, and its message contains `words`. */
static void decide_fails(mt_comm_choice choice, mt_comm_facts facts, const char *words) {
    mt_comm_kind kind;
    mt_status status = mt_comm_decide(choice, &facts, &kind);
    CHECK_MSG(status == MT_ERR_INVALID && strstr(mt_last_error(), words),
              "choice %d: want an error with '%s', got %s: %s", (int)choice, words,
              mt_status_name(status), status == MT_OK ? "" : mt_last_error());
}

/* One node of `ranks` ranks, rank r seeing the physical GPUs masks[r] (its CUDA_VISIBLE_DEVICES,
 * in order; counts[r] of them): each takes the ordinal the trainer gives it (local rank modulo
 * the GPUs it sees) and reports that physical GPU's UUID (here: its number, in one byte, after
 * a node tag). Returns the sharing the reports show, and the facts rank `who` decides on. */
static mt_comm_gpu_sharing node_reports(int ranks, const int masks[][8], const int *counts, int who,
                                        mt_comm_facts *facts) {
    mt_comm_gpu_id ids[16];
    for (int r = 0; r < ranks; r++) {
        memset(&ids[r], 0, sizeof ids[r]);
        int ordinal = mt_comm_gpu_for_rank(r, counts[r]);
        ids[r].uuid[0] = 0x42;
        ids[r].uuid[15] = (uint8_t)masks[r][ordinal];
        ids[r].known = 1;
    }
    *facts = (mt_comm_facts){.world_size = ranks,
                             .local_size = ranks,
                             .visible_devices = counts[who],
                             .device_backend = true,
                             .nccl_available = true};
    facts->gpu_sharing = mt_comm_gpus_sharing(ids, ranks);
    return facts->gpu_sharing;
}

/* auto and nccl when ranks report their GPUs, whatever each one's visibility mask */
static void reported_gpus(void) {
    int masks[16][8], counts[16];
    mt_comm_facts facts;
    /* 8 ranks, each seeing 1 different GPU (srun --gpus-per-task=1, mpirun.sh --gpu-per-rank):
     * the counts alone (8 ranks, 1 visible) would say MPI; the reports say NCCL */
    for (int r = 0; r < 8; r++)
        masks[r][0] = r, counts[r] = 1;
    CHECK(node_reports(8, masks, counts, 3, &facts) == MT_COMM_GPUS_DISTINCT);
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, facts) == MT_COMM_NCCL);
    CHECK(decide_ok(MT_COMM_CHOICE_NCCL, facts) == MT_COMM_NCCL);
    mt_comm_facts counts_only = facts;
    counts_only.gpu_sharing = MT_COMM_GPUS_UNKNOWN;
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, counts_only) == MT_COMM_MPI);
    /* 2 ranks on the same GPU through different masks: rank 0 sees "1,0" and takes ordinal 0,
     * physical 1; rank 1 sees "1" and takes 1 % 1 = 0, physical 1. Rank 0's counts (2 ranks,
     * 2 visible) would say NCCL; the reports say MPI, and nccl is refused */
    masks[0][0] = 1, masks[0][1] = 0, counts[0] = 2;
    masks[1][0] = 1, counts[1] = 1;
    CHECK(node_reports(2, masks, counts, 0, &facts) == MT_COMM_GPUS_SHARED);
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, facts) == MT_COMM_MPI);
    decide_fails(MT_COMM_CHOICE_NCCL, facts, "two ranks on one node use the same GPU");
    decide_fails(MT_COMM_CHOICE_NCCL, facts, "NCCL refuses two ranks on one GPU");
    /* 8 ranks seeing all 8 GPUs: local rank modulo 8, one each, NCCL */
    for (int r = 0; r < 16; r++) {
        for (int g = 0; g < 8; g++)
            masks[r][g] = g;
        counts[r] = 8;
    }
    CHECK(node_reports(8, masks, counts, 5, &facts) == MT_COMM_GPUS_DISTINCT);
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, facts) == MT_COMM_NCCL);
    /* ... and 16 ranks on them: rank r and r + 8 share GPU r, MPI */
    CHECK(node_reports(16, masks, counts, 5, &facts) == MT_COMM_GPUS_SHARED);
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, facts) == MT_COMM_MPI);
    /* a rank that cannot tell leaves the decision to the counts */
    mt_comm_gpu_id ids[3] = {{{1}, 1}, {{2}, 1}, {{3}, 0}};
    CHECK(mt_comm_gpus_sharing(ids, 3) == MT_COMM_GPUS_UNKNOWN);
    ids[2].known = 1;
    CHECK(mt_comm_gpus_sharing(ids, 3) == MT_COMM_GPUS_DISTINCT);
    ids[2].uuid[0] = 1;
    CHECK(mt_comm_gpus_sharing(ids, 3) == MT_COMM_GPUS_SHARED);
    /* the reports count only with a GPU backend that sees a GPU */
    facts.gpu_sharing = MT_COMM_GPUS_DISTINCT;
    facts.visible_devices = 0;
    facts.nccl_available = false;
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, facts) == MT_COMM_MPI);
}

static void decisions(void) {
    /* 2 nodes x 8 GPUs, 8 ranks each: NCCL */
    const mt_comm_facts gpus8 = {.world_size = 16, .local_size = 8, .visible_devices = 8,
                                 .device_backend = true, .nccl_available = true};
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, gpus8) == MT_COMM_NCCL);
    CHECK(decide_ok(MT_COMM_CHOICE_NCCL, gpus8) == MT_COMM_NCCL);
    CHECK(decide_ok(MT_COMM_CHOICE_MPI, gpus8) == MT_COMM_MPI); /* staged through host copies */
    /* fewer ranks than GPUs is fine; srun --gpus-per-task=1 shows each rank one GPU */
    mt_comm_facts one_each = gpus8;
    one_each.local_size = 1;
    one_each.visible_devices = 1;
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, one_each) == MT_COMM_NCCL);
    /* 2 ranks sharing one GPU: NCCL refuses that, auto takes MPI, nccl says why */
    mt_comm_facts shared = gpus8;
    shared.world_size = shared.local_size = 2;
    shared.visible_devices = 1;
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, shared) == MT_COMM_MPI);
    decide_fails(MT_COMM_CHOICE_NCCL, shared, "NCCL refuses two ranks on one GPU");
    /* CPU backend: MPI, and nccl is an error naming the option to change */
    const mt_comm_facts cpu = {.world_size = 4, .local_size = 4};
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, cpu) == MT_COMM_MPI);
    decide_fails(MT_COMM_CHOICE_NCCL, cpu, "needs train.backend = cuda");
    /* a cuda backend without NCCL (module without it, or no GPU visible) */
    mt_comm_facts no_nccl = gpus8;
    no_nccl.nccl_available = false;
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, no_nccl) == MT_COMM_MPI);
    decide_fails(MT_COMM_CHOICE_NCCL, no_nccl, "NCCL is not available");
    /* one rank: nothing to reduce, except that nccl may be tried alone on one GPU */
    mt_comm_facts alone = gpus8;
    alone.world_size = alone.local_size = 1;
    CHECK(decide_ok(MT_COMM_CHOICE_AUTO, alone) == MT_COMM_NONE);
    CHECK(decide_ok(MT_COMM_CHOICE_MPI, alone) == MT_COMM_NONE);
    CHECK(decide_ok(MT_COMM_CHOICE_NONE, alone) == MT_COMM_NONE);
    CHECK(decide_ok(MT_COMM_CHOICE_NCCL, alone) == MT_COMM_NCCL);
    /* none on several ranks would train N separate models */
    decide_fails(MT_COMM_CHOICE_NONE, cpu, "each would train alone");
    mt_comm_kind kind;
    CHECK(mt_comm_decide((mt_comm_choice)9, &cpu, &kind) == MT_ERR_INVALID);

    /* GPU = local rank modulo the visible GPUs */
    CHECK(mt_comm_gpu_for_rank(0, 8) == 0 && mt_comm_gpu_for_rank(7, 8) == 7);
    CHECK(mt_comm_gpu_for_rank(9, 8) == 1 && mt_comm_gpu_for_rank(1, 1) == 0);
    CHECK(mt_comm_gpu_for_rank(3, 0) == 0);
    CHECK(strcmp(mt_comm_kind_name(MT_COMM_NCCL), "nccl") == 0);
}

int main(int argc, char **argv) {
    decisions();
    reported_gpus();
    mt_comm *comm = NULL;
    CHECK_OK(mt_comm_init(&argc, &argv, &comm));
    const mt_comm_info who = mt_comm_get_info(comm);
    mt_backend *cpu = NULL;
    CHECK_OK(mt_backend_create("reference", NULL, &cpu));

    /* nccl on a CPU backend: the same clear error on every rank */
    CHECK(mt_comm_select(comm, MT_COMM_CHOICE_NCCL, cpu, 1) == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "needs train.backend = cuda"), "%s", mt_last_error());
    if (who.world_size > 1) {
        CHECK(mt_comm_select(comm, MT_COMM_CHOICE_NONE, cpu, 1) == MT_ERR_INVALID);
        CHECK_MSG(strstr(mt_last_error(), "would train alone"), "%s", mt_last_error());
        /* ranks with different options are named */
        CHECK(mt_comm_select(comm, MT_COMM_CHOICE_MPI, cpu, (uint64_t)(who.rank == 1)) ==
              MT_ERR_INVALID);
        CHECK_MSG(strstr(mt_last_error(), "rank 1 runs other train.comm"), "%s", mt_last_error());
    }
    CHECK_OK(mt_comm_select(comm, MT_COMM_CHOICE_AUTO, cpu, 7));
    CHECK(mt_comm_get_info(comm).kind == (who.world_size > 1 || mt_comm_launched_by_mpi()
                                              ? MT_COMM_MPI
                                              : MT_COMM_NONE));
    /* and the collectives still work after all that agreeing */
    float x = (float)who.rank;
    CHECK_OK(mt_comm_allreduce_sum_f32(comm, &x, 1));
    CHECK(x == (float)(who.world_size * (who.world_size - 1) / 2));
    mt_backend_destroy(cpu);
    int rc = mt_test_finish();
    mt_comm_finalize(comm);
    return rc;
}
