/* A main() for the fuzz targets in a regular build: feeds every file of the given corpus folders
 * through LLVMFuzzerTestOneInput once (a target aborts on a broken invariant, failing the test). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t capacity = 1 << 16, size = 0, n;
    uint8_t *data = malloc(capacity);
    while (data && (n = fread(data + size, 1, capacity - size, f)) > 0) {
        size += n;
        if (size == capacity) {
            uint8_t *grown = realloc(data, capacity * 2);
            if (!grown) break;
            data = grown;
            capacity *= 2;
        }
    }
    fclose(f);
    if (!data) return -1;
    /* An exactly-sized copy, so a sanitizer build catches reads past the end. */
    uint8_t *exact = malloc(size ? size : 1);
    if (size) memcpy(exact, data, size);
    free(data);
    LLVMFuzzerTestOneInput(exact, size);
    free(exact);
    return 0;
}

int main(int argc, char **argv) {
    int files = 0;
    for (int a = 1; a < argc; a++) {
        DIR *dir = opendir(argv[a]);
        if (!dir) {
            fprintf(stderr, "cannot open corpus folder '%s'\n", argv[a]);
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            if (replay_file(path) != 0) {
                fprintf(stderr, "cannot read '%s'\n", path);
                closedir(dir);
                return 1;
            }
            files++;
        }
        closedir(dir);
    }
    if (files == 0) {
        fprintf(stderr, "no corpus files found: nothing was tested\n");
        return 1;
    }
    printf("replayed %d inputs: PASSED\n", files);
    return 0;
}
