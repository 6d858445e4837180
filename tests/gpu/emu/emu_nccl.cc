/* The NCCL stand-in (nccl.h): a communicator of the ranks of one machine, the processes of an
 * `mpirun -np N` on the CPU, that meet in a POSIX shared-memory segment named by the unique id.
 * An all-reduce copies each rank's slice into its slot, meets the others at a barrier, sums the
 * slots in rank order (the same floats on every rank, as NCCL's ring gives every rank one result)
 * and meets them again before the slots are reused. The work runs on the call's stream, so under
 * capture it is recorded and replayed like a kernel. A peer that never arrives makes the barrier
 * give up after MT_EMU_NCCL_TIMEOUT seconds (default 60) with ncclRemoteError, reported by
 * ncclCommGetAsyncError as NCCL reports a broken peer. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <string>

#include "emu_internal.hh"
#include "nccl.h"

namespace {

const size_t slot_floats = size_t(1) << 20; /* an all-reduce moves this many floats per round */

struct segment_header {
    int arrived; /* ranks at the barrier this round */
    int sense;   /* flips each time every rank has arrived */
};

double now_seconds() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double timeout_seconds() {
    const char *text = getenv("MT_EMU_NCCL_TIMEOUT");
    return text && *text ? atof(text) : 60.0;
}

} // namespace

struct ncclComm {
    int nranks = 1, rank = 0;
    segment_header *header = nullptr;
    float *slots = nullptr; /* nranks x slot_floats */
    size_t mapped_bytes = 0;
    int local_sense = 0;
    ncclResult_t async_error = ncclSuccess;
    std::string last_error;

    ncclResult_t failed(ncclResult_t result, const std::string &why) {
        last_error = why;
        mt_emu_complain("NCCL", "rank %d: %s", rank, why.c_str());
        return result;
    }

    /* every rank here, or ncclRemoteError after the timeout (a dead or stuck peer) */
    bool barrier() {
        if (nranks == 1) return true;
        local_sense = !local_sense;
        if (__atomic_add_fetch(&header->arrived, 1, __ATOMIC_ACQ_REL) == nranks) {
            __atomic_store_n(&header->arrived, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&header->sense, local_sense, __ATOMIC_RELEASE);
            return true;
        }
        const double deadline = now_seconds() + timeout_seconds();
        while (__atomic_load_n(&header->sense, __ATOMIC_ACQUIRE) != local_sense) {
            if (now_seconds() > deadline) {
                async_error = failed(ncclRemoteError, "a peer rank did not reach the all-reduce");
                return false;
            }
            sched_yield();
        }
        return true;
    }

    void all_reduce(const float *send, float *recv, size_t count, bool average) {
        for (size_t start = 0; start < count && async_error == ncclSuccess; start += slot_floats) {
            const size_t n = count - start < slot_floats ? count - start : slot_floats;
            if (nranks == 1) {
                memmove(recv + start, send + start, n * sizeof(float));
                continue;
            }
            memcpy(slots + (size_t)rank * slot_floats, send + start, n * sizeof(float));
            if (!barrier()) return;
            for (size_t i = 0; i < n; i++) {
                float sum = 0;
                for (int r = 0; r < nranks; r++)
                    sum += slots[(size_t)r * slot_floats + i];
                recv[start + i] = average ? sum / (float)nranks : sum;
            }
            if (!barrier()) return;
        }
    }
};

extern "C" {

const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}

const char *ncclGetLastError(ncclComm_t comm) {
    return comm ? comm->last_error.c_str() : "";
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    snprintf(id->internal, sizeof id->internal, "/mt-emu-nccl-%d-%ld%09ld", (int)getpid(),
             (long)t.tv_sec, (long)t.tv_nsec);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *out, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config) {
    (void)config; /* blocking or not, an init here is complete on return */
    *out = nullptr;
    if (nranks < 1 || rank < 0 || rank >= nranks || strncmp(id.internal, "/mt-emu-nccl-", 13))
        return ncclInvalidArgument;
    ncclComm *comm = new ncclComm;
    comm->nranks = nranks, comm->rank = rank;
    if (nranks > 1) {
        comm->mapped_bytes = sizeof(segment_header) + (size_t)nranks * slot_floats * sizeof(float);
        const int fd = shm_open(id.internal, O_CREAT | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)comm->mapped_bytes) != 0) {
            if (fd >= 0) close(fd);
            ncclResult_t r = comm->failed(ncclSystemError, std::string("shm_open/ftruncate of ") +
                                                               id.internal + ": " + strerror(errno));
            delete comm;
            return r;
        }
        void *base = mmap(nullptr, comm->mapped_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (base == MAP_FAILED) {
            ncclResult_t r = comm->failed(ncclSystemError, std::string("mmap: ") + strerror(errno));
            delete comm;
            return r;
        }
        comm->header = static_cast<segment_header *>(base);
        comm->slots = reinterpret_cast<float *>(comm->header + 1);
        /* everyone has mapped it once all have passed the first barrier: the name can go */
        if (!comm->barrier()) {
            ncclResult_t r = comm->async_error;
            munmap(base, comm->mapped_bytes);
            delete comm;
            return r;
        }
        if (rank == 0) shm_unlink(id.internal);
    }
    *out = comm;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *state) {
    *state = comm->async_error;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream) {
    if (datatype != ncclFloat32 || (op != ncclSum && op != ncclAvg))
        return comm->failed(ncclInvalidArgument, "only float32 sum and average are emulated");
    if (!mt_emu_is_device_range(sendbuff, count * sizeof(float)) ||
        !mt_emu_is_device_range(recvbuff, count * sizeof(float)))
        return comm->failed(ncclInvalidArgument, "a buffer is not inside one device block");
    const float *send = static_cast<const float *>(sendbuff);
    float *recv = static_cast<float *>(recvbuff);
    const bool average = op == ncclAvg;
    mt_emu_enqueue(stream, [=]() { comm->all_reduce(send, recv, count, average); });
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    (void)comm;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (comm->header) munmap(comm->header, comm->mapped_bytes);
    delete comm;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
    return ncclCommDestroy(comm);
}

} /* extern "C" */
