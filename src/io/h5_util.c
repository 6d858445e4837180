/* HDF5 error plumbing shared by the Keras weights reader and writer (see h5_util.h). */
#include "io/h5_util.h"

#include <stdio.h>
#include <string.h>

typedef struct innermost {
    char *buffer;
    size_t size;
} innermost;

/* Walking downward visits the API call first and the deepest cause last: keep overwriting so the
 * deepest one ("truncated file: eof = ...") is what remains. */
static herr_t keep_description(unsigned n, const H5E_error2_t *error, void *data) {
    innermost *out = data;
    if (error->desc && error->desc[0]) snprintf(out->buffer, out->size, "%s", error->desc);
    return 0;
}

void mt_h5_take_error(char *buffer, size_t size) {
    if (size == 0) return;
    buffer[0] = '\0';
    innermost out = {.buffer = buffer, .size = size};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, keep_description, &out);
    H5Eclear2(H5E_DEFAULT);
}

int64_t mt_h5_check(int64_t result, const char *call) {
    if (result >= 0) return result;
    char detail[512];
    mt_h5_take_error(detail, sizeof detail);
    /* Keep only the function name of the call: the arguments make the message unreadable. */
    const char *paren = strchr(call, '(');
    int name_length = paren ? (int)(paren - call) : (int)strlen(call);
    if (detail[0])
        mt_fail(MT_ERR_FORMAT, __FILE__, __LINE__, "%.*s failed: %s", name_length, call, detail);
    else
        mt_fail(MT_ERR_FORMAT, __FILE__, __LINE__, "%.*s failed", name_length, call);
    return result;
}

void mt_h5_quiet_begin(mt_h5_quiet *quiet) {
    quiet->func = NULL;
    quiet->data = NULL;
    if (H5Eget_auto2(H5E_DEFAULT, &quiet->func, &quiet->data) < 0) {
        quiet->func = NULL;
        quiet->data = NULL;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void mt_h5_quiet_end(const mt_h5_quiet *quiet) {
    H5Eset_auto2(H5E_DEFAULT, quiet->func, quiet->data);
}

void mt_h5_close_any(hid_t id) {
    if (id < 0) return;
    switch (H5Iget_type(id)) {
    case H5I_FILE:
        H5Fclose(id);
        break;
    case H5I_GROUP:
        H5Gclose(id);
        break;
    case H5I_DATASET:
        H5Dclose(id);
        break;
    case H5I_DATASPACE:
        H5Sclose(id);
        break;
    case H5I_DATATYPE:
        H5Tclose(id);
        break;
    case H5I_ATTR:
        H5Aclose(id);
        break;
    case H5I_GENPROP_LST:
        H5Pclose(id);
        break;
    default:
        H5Oclose(id);
        break;
    }
    H5Eclear2(H5E_DEFAULT);
}
