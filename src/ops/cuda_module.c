/* Finding and loading the cuda module (libmobiletune_cuda.so, see cuda_module.h) at run time, so
 * that the core library and the programs have no link-time CUDA dependency and start on machines
 * without CUDA. The module is loaded once per process and never unloaded: the tables it hands out
 * stay valid for the life of the process. */
#define _GNU_SOURCE /* dladdr */
#include "ops/cuda_module.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef MT_HAVE_CUDA

/* What the module needs at run time, for the message when it cannot be loaded. The majors are
 * those of the libraries the module was linked against (src/ops/cuda/CMakeLists.txt). */
#define MT_STR_(x) #x
#define MT_STR(x) MT_STR_(x)
#define MODULE_NEEDS                                                                               \
    "install the CUDA " MT_STR(MT_CUDA_MAJOR) " runtime and cuBLAS, "                              \
    "cuDNN " MT_STR(MT_CUDNN_MAJOR) " and NCCL " MT_STR(MT_NCCL_MAJOR) ", "                        \
    "or add their lib folder to LD_LIBRARY_PATH"

enum { MESSAGE_CAPACITY = 2048 };

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static const mt_cuda_module *loaded;
static mt_status load_status;
static char load_message[MESSAGE_CAPACITY];

static void remember_failure(mt_status status, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static void remember_failure(mt_status status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(load_message, sizeof load_message, format, args);
    va_end(args);
    load_status = status;
}

/* dirname() into `out`; "" when `path` has no slash. */
static void folder_of(const char *path, char *out, size_t capacity) {
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (n >= capacity) n = 0;
    memcpy(out, path, n);
    out[n] = '\0';
}

/* The folders to look in, in order (see cuda_module.h); empty entries are skipped. */
enum { CANDIDATES = 4 };
static void candidate_folders(char folders[CANDIDATES][PATH_MAX]) {
    memset(folders, 0, (size_t)CANDIDATES * PATH_MAX);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        folder_of(exe, folders[0], PATH_MAX);
        folder_of(folders[0], folders[1], PATH_MAX); /* tests sit one level below build/ */
    }
    /* next to libmobiletune.so itself: build/ for every program and test of a build tree, and
     * the lib folder of an install */
    Dl_info self;
    if (dladdr((void *)mt_cuda_module_load, &self) && self.dli_fname) {
        char real[PATH_MAX];
        if (realpath(self.dli_fname, real)) folder_of(real, folders[2], PATH_MAX);
    }
    snprintf(folders[3], PATH_MAX, "%s", MT_CUDA_MODULE_INSTALL_DIR);
}

static void load(void) {
    char path[PATH_MAX] = "";
    const char *chosen = getenv("MT_CUDA_MODULE");
    if (chosen && *chosen) {
        if (access(chosen, R_OK) != 0) {
            remember_failure(MT_ERR_INVALID,
                             "MT_CUDA_MODULE=%s: no such readable file (point it at "
                             "" MT_CUDA_MODULE_FILE ", or unset it to use the one built next to "
                             "the program)",
                             chosen);
            return;
        }
        if ((size_t)snprintf(path, sizeof path, "%s", chosen) >= sizeof path) {
            remember_failure(MT_ERR_INVALID, "MT_CUDA_MODULE: path longer than %d bytes",
                             PATH_MAX - 1);
            return;
        }
    } else {
        char folders[CANDIDATES][PATH_MAX];
        candidate_folders(folders);
        char searched[MESSAGE_CAPACITY / 2] = "";
        size_t used = 0;
        for (int i = 0; i < CANDIDATES && !path[0]; i++) {
            if (!folders[i][0]) continue;
            char candidate[PATH_MAX];
            int n = snprintf(candidate, sizeof candidate, "%s/%s", folders[i], MT_CUDA_MODULE_FILE);
            if (n > 0 && (size_t)n < sizeof candidate && access(candidate, R_OK) == 0) {
                memcpy(path, candidate, (size_t)n + 1);
            } else if (used < sizeof searched) {
                n = snprintf(searched + used, sizeof searched - used, "%s%s", used ? ", " : "",
                             folders[i]);
                if (n > 0) used += (size_t)n; /* past the end on truncation: the loop test stops */
            }
        }
        if (!path[0]) {
            remember_failure(MT_ERR_INVALID,
                             "no " MT_CUDA_MODULE_FILE " in %s (build the target mobiletune_cuda "
                             "next to the program, or set MT_CUDA_MODULE to its path)",
                             searched);
            return;
        }
    }
    /* RTLD_NOW: a missing symbol is reported here, not as a crash at the first call */
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        /* dlerror() names the first library the loader could not find or load */
        remember_failure(MT_ERR_BACKEND, "cannot load %s: %s (" MODULE_NEEDS ")", path, dlerror());
        return;
    }
    mt_cuda_module_entry_fn entry = NULL;
    void *symbol = dlsym(handle, MT_CUDA_MODULE_ENTRY);
    memcpy(&entry, &symbol, sizeof entry); /* object to function pointer without a cast warning */
    const mt_cuda_module *module = entry ? entry() : NULL;
    if (!module || module->abi != MT_CUDA_MODULE_ABI ||
        !mt_cuda_module_has(module, nccl_destroy)) {
        remember_failure(MT_ERR_BACKEND,
                         "%s is not a mobiletune cuda module of this version (ABI %u, size %u; "
                         "expected ABI %d): rebuild it with this mobiletune, or unset "
                         "MT_CUDA_MODULE",
                         path, module ? module->abi : 0u, module ? module->size : 0u,
                         MT_CUDA_MODULE_ABI);
        return; /* the handle stays open: unloading a module we may have run code of is unsafe */
    }
    loaded = module;
    load_status = MT_OK;
}

mt_status mt_cuda_module_load(const mt_cuda_module **out) {
    *out = NULL;
    pthread_once(&load_once, load);
    if (load_status != MT_OK) return MT_FAIL(load_status, "%s", load_message);
    *out = loaded;
    return MT_OK;
}

#else

mt_status mt_cuda_module_load(const mt_cuda_module **out) {
    *out = NULL;
    return MT_FAIL(MT_ERR_INVALID, "this build has no cuda module (configured without CUDA: "
                                   "install nvcc, cuDNN and NCCL, then reconfigure with "
                                   "-DMT_WITH_CUDA=ON)");
}

#endif
