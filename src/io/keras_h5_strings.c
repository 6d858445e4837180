/* The string-list attributes of a Keras weights file (layer_names, weight_names, ...): fixed- or
 * variable-length HDF5 strings, and Keras' chunking of a list too long for one object header
 * into name0, name1, ... The reader (keras_h5_read.c) serves them through
 * mt_keras_h5_string_list. */
#include "io/h5_util.h"
#include "mobiletune/keras_h5.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mt_keras_h5_free_names(char **names, size_t count) {
    if (!names) return;
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

/* Append the strings of one attribute to *names. */
static mt_status append_strings(hid_t attribute, char ***names, size_t *count) {
    mt_status status = MT_OK;
    hid_t type = H5_CHECK(H5Aget_type(attribute));
    hid_t space = type < 0 ? -1 : H5_CHECK(H5Aget_space(attribute));
    hid_t memtype = -1;
    void *buffer = NULL;
    hssize_t points = space < 0 ? -1 : H5_CHECK(H5Sget_simple_extent_npoints(space));
    if (points < 0) goto h5_failed;
    H5T_class_t type_class = (H5T_class_t)H5_CHECK(H5Tget_class(type));
    if (type_class < 0) goto h5_failed;
    if (type_class != H5T_STRING) {
        status = MT_FAIL(MT_ERR_FORMAT, "is not a list of strings");
        goto done;
    }
    if (points == 0) goto done;
    char **grown = realloc(*names, (*count + (size_t)points) * sizeof *grown);
    if (!grown) {
        status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    *names = grown;
    htri_t variable = H5_CHECK(H5Tis_variable_str(type));
    if (variable < 0) goto h5_failed;
    if (variable) {
        memtype = H5_CHECK(H5Tcopy(H5T_C_S1));
        if (memtype < 0 || H5_CHECK(H5Tset_size(memtype, H5T_VARIABLE)) < 0) goto h5_failed;
        char **strings = calloc((size_t)points, sizeof *strings);
        if (!strings) {
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
            goto done;
        }
        buffer = strings;
        if (H5_CHECK(H5Aread(attribute, memtype, strings)) < 0) goto h5_failed;
        for (hssize_t i = 0; i < points && status == MT_OK; i++) {
            char *copy = strdup(strings[i] ? strings[i] : "");
            if (!copy)
                status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
            else
                (*names)[(*count)++] = copy;
        }
#if H5_VERSION_GE(1, 12, 0)
        if (H5_CHECK(H5Treclaim(memtype, space, H5P_DEFAULT, strings)) < 0) goto h5_failed;
#else
        if (H5_CHECK(H5Dvlen_reclaim(memtype, space, H5P_DEFAULT, strings)) < 0) goto h5_failed;
#endif
    } else {
        size_t width = H5Tget_size(type);
        if (width == 0) {
            status = MT_FAIL(MT_ERR_FORMAT, "H5Tget_size failed on a string attribute");
            goto done;
        }
        memtype = H5_CHECK(H5Tcopy(H5T_C_S1));
        if (memtype < 0 || H5_CHECK(H5Tset_size(memtype, width)) < 0 ||
            H5_CHECK(H5Tset_strpad(memtype, H5T_STR_NULLPAD)) < 0)
            goto h5_failed;
        buffer = calloc((size_t)points, width);
        if (!buffer) {
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
            goto done;
        }
        if (H5_CHECK(H5Aread(attribute, memtype, buffer)) < 0) goto h5_failed;
        for (hssize_t i = 0; i < points && status == MT_OK; i++) {
            char *copy = strndup((char *)buffer + (size_t)i * width, width);
            if (!copy)
                status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
            else
                (*names)[(*count)++] = copy;
        }
    }
    goto done;
h5_failed:
    status = MT_ERR_FORMAT;
done:
    free(buffer);
    mt_h5_close_any(memtype);
    mt_h5_close_any(space);
    mt_h5_close_any(type);
    return status;
}

mt_status mt_h5_string_list(hid_t file, const char *path, const char *group, const char *name,
                            char ***names, size_t *count) {
    *names = NULL;
    *count = 0;
    const char *location = group && *group ? group : "/";
    mt_h5_quiet quiet;
    mt_h5_quiet_begin(&quiet);
    mt_status status = MT_OK;
    char chunk_name[256];
    int chunks = 0;
    htri_t whole = H5_CHECK(H5Aexists_by_name(file, location, name, H5P_DEFAULT));
    if (whole < 0) {
        status = mt_error_context(MT_ERR_FORMAT, "weights file '%s': group '%s'", path, location);
        goto done;
    }
    /* Keras splits a list longer than one HDF5 object header into name0, name1, ... */
    for (;; chunks++) {
        const char *attr_name = name;
        if (!whole) {
            snprintf(chunk_name, sizeof chunk_name, "%s%d", name, chunks);
            attr_name = chunk_name;
            htri_t exists = H5_CHECK(H5Aexists_by_name(file, location, chunk_name, H5P_DEFAULT));
            if (exists < 0) {
                status = mt_error_context(MT_ERR_FORMAT, "weights file '%s'", path);
                goto done;
            }
            if (!exists) break;
        }
        hid_t attribute =
            H5_CHECK(H5Aopen_by_name(file, location, attr_name, H5P_DEFAULT, H5P_DEFAULT));
        if (attribute < 0) {
            status = mt_error_context(MT_ERR_FORMAT, "weights file '%s'", path);
            goto done;
        }
        status = append_strings(attribute, names, count);
        if (H5_CHECK(H5Aclose(attribute)) < 0 && status == MT_OK) status = MT_ERR_FORMAT;
        if (status != MT_OK) {
            status = mt_error_context(status, "weights file '%s': attribute '%s' of group '%s'",
                                      path, attr_name, location);
            goto done;
        }
        if (whole) break;
    }
    if (!whole && chunks == 0)
        status = MT_FAIL(MT_ERR_FORMAT, "weights file '%s': group '%s' has no attribute '%s'", path,
                         location, name);
done:
    mt_h5_quiet_end(&quiet);
    if (status != MT_OK) {
        mt_keras_h5_free_names(*names, *count);
        *names = NULL;
        *count = 0;
    }
    return status;
}
