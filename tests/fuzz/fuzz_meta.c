/* Fuzz target for mt_meta_parse: any bytes must parse or fail cleanly, and whatever parses must
 * survive a round trip: formatting the parsed metadata and parsing that again gives the same
 * fields, and formatting it a second time gives the same text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what) {
    fprintf(stderr, "fuzz_meta: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mt_dataset_meta m;
    if (mt_meta_parse(data, size, &m) != MT_OK) {
        if (m.class_names || m.class_counts || m.split || m.options) fail("failure left memory");
        return 0;
    }
    uint64_t sum = 0;
    for (int i = 0; i < m.class_count; i++)
        sum += m.class_counts[i];
    if (sum != m.record_count || m.class_count < 1 || m.class_count > MT_MAX_CLASSES ||
        m.channels != 3)
        fail("a parsed metadata breaks an invariant");
    char *text, *text2;
    size_t n, n2;
    if (mt_meta_format(&m, &text, &n) != MT_OK) fail("parsed metadata cannot be formatted");
    mt_dataset_meta m2;
    if (mt_meta_parse(text, n, &m2) != MT_OK) fail("formatted metadata does not parse");
    if (m2.record_count != m.record_count || m2.class_count != m.class_count ||
        m2.height != m.height || m2.width != m.width || m2.encoding != m.encoding ||
        strcmp(m2.split, m.split) != 0 || strcmp(m2.options, m.options) != 0)
        fail("round trip changed a field");
    for (int i = 0; i < m.class_count; i++)
        if (strcmp(m.class_names[i], m2.class_names[i]) != 0 ||
            m.class_counts[i] != m2.class_counts[i])
            fail("round trip changed a class");
    if (mt_meta_format(&m2, &text2, &n2) != MT_OK || n2 != n || memcmp(text, text2, n) != 0)
        fail("formatting is not stable");
    free(text);
    free(text2);
    mt_meta_free(&m);
    mt_meta_free(&m2);
    return 0;
}
