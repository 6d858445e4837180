/* The decode alone: read + mt_image_decode of every listed file with the packer's DCT-scaling rule
 * (as mobiletune-pack --size N does), one thread, nothing else. bench_pack.py runs it to show the
 * ceiling on any packer that decodes with libjpeg-turbo, which the Pillow baseline shares.
 *
 *   bench_decode SIZE LIST      LIST: one path per line
 *
 * Prints "decoded K images in S CPU-seconds". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "mobiletune/image.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: bench_decode SIZE LIST\n");
        return 2;
    }
    int size = atoi(argv[1]);
    FILE *list = fopen(argv[2], "r");
    if (!list || size <= 0) {
        fprintf(stderr, "bench_decode: cannot read %s (or bad SIZE %s)\n", argv[2], argv[1]);
        return 2;
    }
    char path[8192];
    long decoded = 0, failed = 0;
    double start = mt_clock_process_cpu();
    while (fgets(path, sizeof path, list)) {
        path[strcspn(path, "\n")] = '\0';
        mt_image image;
        if (mt_image_decode_file(path, size, &image) != MT_OK) {
            failed++;
            continue;
        }
        mt_image_free(&image);
        decoded++;
    }
    double seconds = mt_clock_process_cpu() - start;
    fclose(list);
    printf("decoded %ld images in %.4f CPU-seconds (%ld failed)\n", decoded, seconds, failed);
    return decoded > 0 ? 0 : 1;
}
