/* A photo packed by mobiletune-pack, then read back from the database, holds exactly the bytes
 * that predict's path (mt_image_preprocess_file, then mt_u8_to_input on each byte) gives for the
 * same file with the same --size/--resize/--decode: for every resize and decode mode, on
 * synthetic JPEGs larger than the output (DCT-scaled decode) and smaller (upscaled), and on two
 * of the shared photos when ../shared is present.
 *
 * argv[1]: the mobiletune-pack program. */
#define _XOPEN_SOURCE 700
#include "mobiletune/image.h"
#include "mobiletune/loader.h"
#include "mobiletune/ops.h"
#include "test_util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SIZE = 96, MAX_FILES = 4 };

/* A JPEG of width x height with smooth gradients and hard edges, so that both the DCT scaling and
 * the bilinear weights matter. */
static void write_synthetic_jpeg(const char *path, int width, int height, uint32_t seed) {
    uint8_t *pixels = malloc((size_t)width * height * 3);
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++)
            for (int c = 0; c < 3; c++) {
                seed = seed * 1664525u + 1013904223u;
                int v = (x * (c + 1) * 255) / width + ((x / 17 + y / 13) % 2) * 60 +
                        (int)(seed >> 28) - (y * 40) / height;
                pixels[((size_t)y * width + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    uint8_t *jpeg = NULL;
    size_t bytes = 0;
    mt_status status = mt_image_encode_jpeg(pixels, width, height, 90, &jpeg, &bytes);
    CHECK_MSG(status == MT_OK, "encoding %s: %s", path, mt_last_error());
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(jpeg, 1, bytes, f) == bytes);
    if (f) fclose(f);
    free(jpeg);
    free(pixels);
}

/* Pack the list file into db with the options of `prep`; then every record's pixels must be
 * predict's pixels for its file. */
static void check_mode(const char *pack, const char *list, const char *dir, const char **paths,
                       int count, const mt_preprocess *prep) {
    char db[4200], command[9000];
    snprintf(db, sizeof db, "%s/db-%s-%s", dir, mt_resize_mode_name(prep->resize),
             mt_decode_mode_name(prep->decode));
    snprintf(command, sizeof command,
             "'%s' --size %d --resize %s --decode %s --threads 1 --no-progress '%s' '%s' "
             ">/dev/null",
             pack, prep->size, mt_resize_mode_name(prep->resize), mt_decode_mode_name(prep->decode),
             list, db);
    int rc = system(command);
    CHECK_MSG(rc == 0, "'%s' exited with %d", command, rc);
    if (rc != 0) return;
    mt_dataset *dataset = NULL;
    mt_status status = mt_dataset_open(db, &dataset);
    CHECK_MSG(status == MT_OK, "opening %s: %s", db, mt_last_error());
    if (status != MT_OK) return;
    size_t bytes = (size_t)prep->size * prep->size * 3;
    uint8_t *stored = malloc(bytes), *predicted = malloc(bytes);
    CHECK((int)mt_dataset_count(dataset) == count);
    for (uint64_t i = 0; i < mt_dataset_count(dataset); i++) {
        char name[4200];
        int32_t label;
        CHECK(mt_dataset_get(dataset, i, stored, &label, name, sizeof name) == MT_OK);
        const char *path = NULL;
        for (int k = 0; k < count && !path; k++) {
            size_t n = strlen(name), p = strlen(paths[k]);
            if (p >= n && strcmp(paths[k] + p - n, name) == 0) path = paths[k];
        }
        CHECK_MSG(path != NULL, "record '%s' names none of the packed files", name);
        if (!path) continue;
        status = mt_image_preprocess_file(path, prep, predicted);
        CHECK_MSG(status == MT_OK, "%s: %s", path, mt_last_error());
        size_t first = bytes;
        for (size_t b = 0; b < bytes && first == bytes; b++)
            if (stored[b] != predicted[b]) first = b;
        CHECK_MSG(first == bytes,
                  "%s, --resize %s --decode %s: byte %zu is %d in the database, %d through "
                  "predict's path",
                  path, mt_resize_mode_name(prep->resize), mt_decode_mode_name(prep->decode), first,
                  first < bytes ? stored[first] : 0, first < bytes ? predicted[first] : 0);
        /* and so the network's input: the loader and predict scale each byte the same way */
        float a = mt_u8_to_input(stored[bytes / 2]), b = mt_u8_to_input(predicted[bytes / 2]);
        CHECK(memcmp(&a, &b, sizeof a) == 0);
    }
    free(stored);
    free(predicted);
    mt_dataset_close(dataset);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MOBILETUNE-PACK\n", argv[0]);
        return 2;
    }
    const char *dir = mt_test_make_temp_dir("pack-predict");
    char paths[MAX_FILES][4200];
    const char *path_list[MAX_FILES];
    const char *labels[MAX_FILES] = {"big", "small", "cats", "dogs"};
    int count = 0;
    snprintf(paths[count], sizeof paths[count], "%s/big.jpg", dir);
    write_synthetic_jpeg(paths[count++], 523, 391, 7); /* decodes at 1/4 for side 96 */
    snprintf(paths[count], sizeof paths[count], "%s/small.jpg", dir);
    write_synthetic_jpeg(paths[count++], 61, 45, 9); /* upscaled */
    const char *shared[] = {"data/cats_vs_dogs/train/cats/cat.0.jpg",
                            "data/cats_vs_dogs/train/dogs/dog.0.jpg"};
    for (int i = 0; i < 2; i++) {
        const char *photo = mt_test_shared_path(shared[i]);
        if (photo) snprintf(paths[count++], sizeof paths[0], "%s", photo);
    }
    if (count == 2) printf("note: ../shared is absent; synthetic JPEGs only\n");
    char list[4200];
    snprintf(list, sizeof list, "%s/list.txt", dir);
    FILE *f = fopen(list, "w");
    CHECK(f != NULL);
    if (!f) return mt_test_finish();
    for (int i = 0; i < count; i++) {
        fprintf(f, "%s %s\n", paths[i], labels[i]);
        path_list[i] = paths[i];
    }
    fclose(f);

    const mt_resize_mode resizes[] = {MT_RESIZE_STRETCH, MT_RESIZE_CENTER_CROP, MT_RESIZE_PAD};
    const mt_decode_mode decodes[] = {MT_DECODE_MODE_SCALED, MT_DECODE_MODE_TF};
    for (int r = 0; r < 3; r++)
        for (int d = 0; d < 2; d++) {
            mt_preprocess prep = {.size = SIZE, .resize = resizes[r], .decode = decodes[d]};
            check_mode(argv[1], list, dir, path_list, count, &prep);
        }
    /* the two decodes differ on the big JPEG, so the comparison above can tell them apart */
    uint8_t *scaled = malloc(SIZE * SIZE * 3), *full = malloc(SIZE * SIZE * 3);
    mt_preprocess prep = {.size = SIZE, .resize = MT_RESIZE_STRETCH, .decode = MT_DECODE_MODE_SCALED};
    CHECK(mt_image_preprocess_file(paths[0], &prep, scaled) == MT_OK);
    prep.decode = MT_DECODE_MODE_TF;
    CHECK(mt_image_preprocess_file(paths[0], &prep, full) == MT_OK);
    CHECK(memcmp(scaled, full, SIZE * SIZE * 3) != 0);
    free(scaled);
    free(full);
    mt_test_remove_tree(dir);
    return mt_test_finish();
}
