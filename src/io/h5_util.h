/* Private helpers for the HDF5 calls of src/io: the checking macro that names a failed call and
 * carries HDF5's own innermost message into ours, the switch that keeps libhdf5 from printing
 * its error stack on stderr, and the string-list attribute reader. */
#ifndef MT_IO_H5_UTIL_H
#define MT_IO_H5_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <hdf5.h>

#include "mobiletune/status.h"

/* Evaluate an HDF5 call returning hid_t, herr_t or htri_t. A negative result records
 * "<call> failed: <HDF5's innermost message>" as this thread's error (status MT_ERR_FORMAT; callers
 * re-label I/O failures with mt_error_context) and clears HDF5's stack. Yields the call's result:
 *     hid_t d = H5_CHECK(H5Dopen2(file, path, H5P_DEFAULT));
 *     if (d < 0) goto fail; */
#define H5_CHECK(call) mt_h5_check((int64_t)(call), #call)
int64_t mt_h5_check(int64_t result, const char *call);

/* The innermost description on HDF5's default error stack ("" when empty), then the stack is
 * cleared. */
void mt_h5_take_error(char *buffer, size_t size);

/* Between begin and end, failures of libhdf5 print nothing (H5Eset_auto2 with no handler); the
 * previous handler comes back at end so a host program's choice is kept. */
typedef struct mt_h5_quiet {
    H5E_auto2_t func;
    void *data;
} mt_h5_quiet;
void mt_h5_quiet_begin(mt_h5_quiet *quiet);
void mt_h5_quiet_end(const mt_h5_quiet *quiet);

/* Close an id if it is valid, ignoring failure (cleanup paths only). */
void mt_h5_close_any(hid_t id);

/* The strings of attribute `name` of `group` ("" or NULL: the root) of the open file `file`
 * (`path` names it in messages), joining Keras' chunks name0, name1, ... when the list was
 * split (keras_h5_strings.c); what mt_keras_h5_string_list serves. */
mt_status mt_h5_string_list(hid_t file, const char *path, const char *group, const char *name,
                            char ***names, size_t *count);

#endif
