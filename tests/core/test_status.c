/* The error-message plumbing every module relies on. */
#include <string.h>

#include "test_util.h"

static mt_status open_thing(const char *name) {
    return MT_FAIL(MT_ERR_IO, "cannot open '%s'", name);
}

int main(void) {
    mt_clear_error();
    CHECK(strcmp(mt_last_error(), "") == 0);
    CHECK(open_thing("a.jpg") == MT_ERR_IO);
    CHECK(strcmp(mt_last_error(), "cannot open 'a.jpg'") == 0);
    CHECK(mt_error_context(MT_ERR_IO, "packing %s", "cats") == MT_ERR_IO);
    CHECK(strcmp(mt_last_error(), "packing cats: cannot open 'a.jpg'") == 0);
    CHECK(strcmp(mt_status_name(MT_ERR_LMDB), "LMDB error") == 0);
    return mt_test_finish();
}
