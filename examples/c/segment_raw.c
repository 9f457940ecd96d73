/* Segment raw int16 HU slices with an edgeseg bundle and write the labels as raw uint8.
 *
 *   segment_raw BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw
 *
 * IN.raw holds SLICES x ROWS x COLS little-endian int16 HU (row-major, slice after slice), as a
 * scanner-side application already holds them in memory; OUT.raw receives as many uint8 class
 * numbers. PRECISION is int8, fp32, fp16 or auto. Exit status 0 on success, 2 on any error,
 * with one "segment_raw: error: ..." line on stderr.
 */
#include <stdio.h>
#include <stdlib.h>

#include <edgeseg.h>

static int fail(const char *message) {
    fprintf(stderr, "segment_raw: error: %s\n", message);
    return 2;
}

/* A positive int from argv, or 0. */
static int positive(const char *text) {
    char *end = NULL;
    long v = strtol(text, &end, 10);
    return (*end == '\0' && v > 0 && v <= ES_MAX_SIDE * 64L) ? (int)v : 0;
}

int main(int argc, char **argv) {
    if (argc != 8) return fail("usage: segment_raw BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw");
    int slices = positive(argv[3]), rows = positive(argv[4]), cols = positive(argv[5]);
    if (!slices || !rows || !cols) return fail("SLICES, ROWS and COLS must be positive integers");
    size_t count = (size_t)slices * rows * cols;
    int16_t *hu = malloc(count * sizeof *hu);
    uint8_t *labels = malloc(count);
    if (!hu || !labels) return fail("not enough memory for the slices");
    FILE *in = fopen(argv[6], "rb");
    size_t got = in ? fread(hu, sizeof *hu, count, in) : 0;
    if (in) fclose(in);
    if (got != count) return fail("IN.raw is missing or smaller than SLICES x ROWS x COLS int16 values");

    es_error err;
    es_segmenter *seg = es_open(argv[1], argv[2], 0, &err);
    if (!seg) return fail(err.message);
    int rc = es_segment_volume(seg, hu, ES_INT16, slices, rows, cols, cols, (ptrdiff_t)rows * cols, labels, &err);
    es_close(seg);
    if (rc != ES_OK) return fail(err.message);

    FILE *out = fopen(argv[7], "wb");
    if (!out || fwrite(labels, 1, count, out) != count || fclose(out) != 0) return fail("cannot write OUT.raw");
    free(hu);
    free(labels);
    return 0;
}
