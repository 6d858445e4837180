/* The reference backend's guarded-device mode (MT_REFERENCE_GUARDED=1, src/ops/reference/
 * guarded.c): its ops work on its memory, the host's reads and writes of that memory outside an
 * op die with SIGSEGV, and it says device_memory so that src/comm stages. Each forbidden access
 * runs in a forked child whose death by SIGSEGV is the expected outcome. The harness
 * test_ops_backend_vs_reference runs every op on this mode too (ops_reference_guarded_vs_reference). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mobiletune/ops.h"
#include "test_util.h"

/* Run `touch(p)` in a child; true when the child died of SIGSEGV. */
static bool dies_touching(void (*touch)(volatile float *), volatile float *p) {
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        signal(SIGSEGV, SIG_DFL);
        touch(p);
        _exit(0); /* reached only when the access went through */
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child) return false;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
}

static void read_it(volatile float *p) {
    float x = p[0];
    (void)x;
}
static void write_it(volatile float *p) {
    p[3] = 1.0f;
}

int main(void) {
    setenv("MT_REFERENCE_GUARDED", "1", 1);
    mt_backend *be = NULL;
    CHECK_OK(mt_backend_create("reference", NULL, &be));
    if (!be) return mt_test_finish();
    CHECK(be->ops->device_memory && be->ops == &mt_ops_reference_guarded);

    /* a buffer: upload, an op on it, download, all fine */
    float host[4] = {1, -2, 3, -4}, back[4] = {0};
    float *buffer = NULL, *grads = NULL;
    CHECK_OK(be->ops->buffer_alloc(be, sizeof host, (void **)&buffer));
    CHECK_OK(be->ops->buffer_alloc(be, sizeof host, (void **)&grads));
    CHECK_OK(be->ops->upload(be, buffer, host, sizeof host));
    CHECK_OK(be->ops->upload(be, grads, host, sizeof host));
    /* the rate is a per-step value in (guarded) backend memory, put there by scalars_write */
    mt_update_scalars *rate = NULL;
    const mt_update_scalars half = {.lr = 0.5f, .step = 0.5f};
    CHECK_OK(be->ops->buffer_alloc(be, sizeof *rate, (void **)&rate));
    CHECK_OK(be->ops->scalars_write(be, rate, &half, sizeof half));
    mt_optimizer_desc sgd = {.rule = MT_UPDATE_SGD, .count = 4, .scalars = rate};
    CHECK_OK(be->ops->optimizer_update(be, &sgd, buffer, grads, NULL));
    CHECK_OK(be->ops->download(be, back, buffer, sizeof back));
    CHECK_MSG(back[0] == 0.5f && back[1] == -1.0f && back[3] == -2.0f,
              "sgd step on guarded memory: %g %g %g %g", back[0], back[1], back[2], back[3]);

    /* ...but the host touching it outside an op is caught */
    CHECK_MSG(dies_touching(read_it, buffer), "a host read of a guarded buffer went through");
    CHECK_MSG(dies_touching(write_it, buffer), "a host write to a guarded buffer went through");
    mt_tensor t;
    CHECK_OK(be->ops->tensor_alloc(be, (mt_shape4){2, 3, 3, 5}, &t));
    CHECK_MSG(dies_touching(read_it, t.data), "a host read of a guarded tensor went through");
    /* host memory the backend writes into (download's destination) stays the host's */
    CHECK_OK(be->ops->download(be, back, buffer, sizeof back));
    CHECK(back[0] == 0.5f);
    be->ops->tensor_free(be, &t);
    be->ops->buffer_free(be, buffer);
    be->ops->buffer_free(be, grads);
    be->ops->buffer_free(be, rate);
    mt_backend_destroy(be);
    return mt_test_finish();
}
