/* docs/config.md is generated from the option table; this test fails while the committed file is
 * stale. `test_train_config_doc --write docs/config.md` regenerates it. */
#include "mobiletune/config.h"

#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static char *generate(size_t *size) {
    char *text = NULL;
    FILE *out = open_memstream(&text, size);
    if (!out) {
        perror("open_memstream");
        exit(1);
    }
    mt_config_write_markdown(out);
    fclose(out);
    return text;
}

int main(int argc, char **argv) {
    size_t size = 0;
    char *text = generate(&size);
    if (argc == 3 && strcmp(argv[1], "--write") == 0) {
        FILE *f = fopen(argv[2], "wb");
        if (!f || fwrite(text, 1, size, f) != size || fclose(f) != 0) {
            perror(argv[2]);
            return 1;
        }
        printf("wrote %s\n", argv[2]);
        free(text);
        return 0;
    }
    const char *source = getenv("MT_SOURCE_DIR");
    if (!source) mt_test_skip("MT_SOURCE_DIR is not set (run through ctest)");
    char path[4200];
    snprintf(path, sizeof path, "%s/docs/config.md", source);
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "%s is missing: run test_train_config_doc --write %s", path, path);
    if (f) {
        char *committed = malloc(size + 2);
        size_t n = fread(committed, 1, size + 1, f);
        fclose(f);
        CHECK_MSG(n == size && memcmp(committed, text, size) == 0,
                  "%s is stale: regenerate it with %s --write %s", path, argv[0], path);
        free(committed);
    }
    /* Every option appears in the document. */
    for (int i = 0; i < mt_config_option_count(); i++) {
        char needle[96];
        snprintf(needle, sizeof needle, "| `%s` |", mt_config_option_at(i)->key);
        CHECK_MSG(strstr(text, needle) != NULL, "the doc lacks %s", needle);
    }
    free(text);
    return mt_test_finish();
}
