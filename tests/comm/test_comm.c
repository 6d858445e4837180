/* The communication interface with real ranks (mpirun -np N) or alone: sums, means, maxima,
 * broadcast and allgather give the values every rank can compute by itself. With an argument
 * "fail-rank R", rank R reports an error through mt_comm_abort while the others wait in a
 * collective: the launcher must take the whole job down (the fault test checks the exit). */
#include <stdlib.h>
#include <string.h>

#include "mobiletune/comm.h"
#include "test_util.h"

int main(int argc, char **argv) {
    mt_comm *comm = NULL;
    CHECK_OK(mt_comm_init(&argc, &argv, &comm));
    mt_comm_info info = mt_comm_get_info(comm);
    int rank = info.rank, world = info.world_size;

    if (argc == 3 && strcmp(argv[1], "fail-rank") == 0) {
        if (rank == atoi(argv[2])) mt_comm_abort(comm, 3, "injected failure (test)");
        float x = 1.0f;
        mt_comm_allreduce_sum_f32(comm, &x, 1); /* never completes: the failing rank is gone */
        mt_comm_barrier(comm);
        fprintf(stderr, "rank %d: collective returned after a peer aborted\n", rank);
        mt_comm_finalize(comm);
        return 1;
    }

    if (mt_comm_launched_by_mpi()) CHECK(info.kind == MT_COMM_MPI);
    CHECK(rank >= 0 && rank < world);
    CHECK(info.local_rank >= 0 && info.local_rank < info.local_size);

    /* A buffer over one chunk's worth of elements exercises the chunking path's arithmetic. */
    enum { COUNT = 100003 };
    float *values = malloc(COUNT * sizeof *values);
    for (int i = 0; i < COUNT; i++) values[i] = (float)(rank + 1) * (float)(i % 7);
    CHECK_OK(mt_comm_allreduce_sum_f32(comm, values, COUNT));
    float rank_sum = (float)(world * (world + 1) / 2);
    int bad = 0;
    for (int i = 0; i < COUNT; i++) bad += values[i] != rank_sum * (float)(i % 7);
    CHECK_MSG(bad == 0, "%d wrong sums", bad);

    for (int i = 0; i < COUNT; i++) values[i] = (float)(rank + 1);
    CHECK_OK(mt_comm_allreduce_mean_f32(comm, values, COUNT));
    CHECK_CLOSE(values[0], rank_sum / (float)world, 1e-6, 1e-6);
    CHECK_CLOSE(values[COUNT - 1], rank_sum / (float)world, 1e-6, 1e-6);
    free(values);

    double d = 0.5 * rank;
    int64_t counts[2] = {rank, 1};
    int32_t flag = rank == world - 1 ? 7 : 0;
    CHECK_OK(mt_comm_allreduce_sum_f64(comm, &d, 1));
    CHECK_OK(mt_comm_allreduce_sum_i64(comm, counts, 2));
    CHECK_OK(mt_comm_allreduce_max_i32(comm, &flag, 1));
    CHECK_CLOSE(d, 0.25 * world * (world - 1), 1e-12, 0);
    CHECK(counts[0] == (int64_t)world * (world - 1) / 2 && counts[1] == world);
    CHECK(flag == 7);

    char message[32] = "";
    if (rank == 0) strcpy(message, "weights of rank 0");
    CHECK_OK(mt_comm_broadcast(comm, message, sizeof message, 0));
    CHECK(strcmp(message, "weights of rank 0") == 0);

    int32_t *ranks = calloc((size_t)world, sizeof *ranks);
    int32_t mine = rank * 10;
    CHECK_OK(mt_comm_allgather(comm, &mine, ranks, sizeof mine));
    for (int r = 0; r < world; r++) CHECK(ranks[r] == r * 10);
    free(ranks);

    CHECK(mt_checksum64("abc", 3, 0) != mt_checksum64("abd", 3, 0));
    CHECK_OK(mt_comm_barrier(comm));
    int result = mt_test_finish();
    mt_comm_finalize(comm);
    return result;
}
