/* Drives libedgeseg for tests/capi/test_bad_input.py and the sanitizer run: every case makes one
 * call (or a few) and prints "code<TAB>message" of the last one, so the Python test checks the
 * status and the message. Exit 0 whenever the library returned (whatever its status), so a
 * crash or a sanitizer report is the only way to a non-zero exit.
 *
 *   capi_checks open BUNDLE [PRECISION]     es_open; on success also labels, spec, artifact and
 *                                           provenance
 *   capi_checks open-null                   es_open(NULL, ...)
 *   capi_checks open-no-err BUNDLE          es_open with err == NULL (must not crash)
 *   capi_checks call BUNDLE CASE            es_open, then one bad (or "good") segment call
 *   capi_checks cycles BUNDLE N             N x (open, segment a volume, close): for leak checks
 *   capi_checks leak BUNDLE                 open, segment, close, then lose 64 bytes of its own:
 *                                           the leak check (with its suppressions) must report it
 *   capi_checks threads BUNDLE N            N threads share one segmenter, each segmenting a
 *                                           slice 5 times; every mask must equal a lone call's
 *   capi_checks slices BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw
 *                                           es_segment_slice per slice of raw int16, each slice
 *                                           laid out with 3 padding elements after every row
 *   capi_checks tta MODE BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw
 *                                           es_set_tta(MODE), then es_segment_volume of raw int16
 *                                           and es_segment_slice of its first slice (must agree)
 *   capi_checks spaced Z Y X BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw
 *                                           es_segment_volume_spaced of raw int16 with the voxel
 *                                           spacing (Z, Y, X) mm (strtod: "1e-200" is read as such)
 *   capi_checks typed BUNDLE DTYPE ROWS COLS IN.raw
 *                                           es_segment_slice (fp32) of one raw slice of es_dtype
 *                                           code DTYPE (native byte order); reports the status only
 */
#include "capi_driver.h" /* first: the sanitizer builds' dlopen shim, read_raw */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <edgeseg.h>

#define ROWS 96
#define COLS 80

static int report(int code, const es_error *err) {
    printf("%d\t%s\n", code, err->message);
    return 0;
}

/* A body-like slice: air outside an ellipse, soft tissue inside, a bright disc (HU). */
static void fill_slice(float *f, int16_t *s, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            double y = (r - rows / 2.0) / (rows * 0.4), x = (c - cols / 2.0) / (cols * 0.45);
            double v = x * x + y * y < 1 ? 40 : -1000;
            if ((x + 0.3) * (x + 0.3) + y * y < 0.1) v = 60;
            if (f) f[r * cols + c] = (float)v;
            if (s) s[r * cols + c] = (int16_t)v;
        }
}

static int open_case(const char *bundle, const char *precision) {
    es_error err;
    es_segmenter *seg = es_open(bundle, precision, 0, &err);
    if (!seg) return report(err.code, &err);
    int count = 0;
    const char *const *names = es_labels(seg, &count);
    printf("%d\t%s\n", ES_OK, "opened");
    printf("artifact\t%s\n", es_artifact(seg));
    printf("version\t%s\n", es_version());
    for (int k = 0; k < count; k++) printf("label\t%d\t%s\n", k, names[k]);
    printf("spec\t%s\n", es_spec_json(seg));
    /* every key of the Python runtime's record, and one it does not have */
    static const char *const keys[] = {"software", "software_version", "architecture", "manifest_sha256",
                                       "bundle_created", "bundle_edgeseg_version", "checkpoint_sha256", "artifact",
                                       "artifact_sha256", "backend", "precision", "device", "backend_version", "tta",
                                       "server_backend", NULL};
    for (const char *const *key = keys; *key; key++) {
        const char *value = es_provenance(seg, *key);
        if (value) printf("provenance\t%s\t%s\n", *key, value);
    }
    es_error tta_err;
    if (es_set_tta(seg, "mirror", &tta_err) == ES_OK) printf("provenance-after-set-tta\t%s\n", es_provenance(seg, "tta"));
    printf("provenance-null\t%d\n", es_provenance(NULL, "software") == NULL && es_provenance(seg, NULL) == NULL);
    es_close(seg);
    return 0;
}

/* One segment call with the argument named by `which` made wrong. */
static int call_case(es_segmenter *seg, const char *which, es_error *err) {
    static float f[2 * ROWS * COLS];
    static int16_t s[2 * ROWS * COLS];
    static uint8_t labels[2 * ROWS * COLS];
    fill_slice(f, s, ROWS, COLS);
    fill_slice(f + ROWS * COLS, s + ROWS * COLS, ROWS, COLS);
    if (!strcmp(which, "good")) return es_segment_slice(seg, s, ES_INT16, ROWS, COLS, COLS, labels, err);
    if (!strcmp(which, "good-volume"))
        return es_segment_volume(seg, f, ES_FLOAT32, 2, ROWS, COLS, COLS, ROWS * COLS, labels, err);
    if (!strcmp(which, "null-segmenter")) return es_segment_slice(NULL, s, ES_INT16, ROWS, COLS, COLS, labels, err);
    if (!strcmp(which, "null-hu")) return es_segment_slice(seg, NULL, ES_INT16, ROWS, COLS, COLS, labels, err);
    if (!strcmp(which, "null-labels")) return es_segment_slice(seg, s, ES_INT16, ROWS, COLS, COLS, NULL, err);
    if (!strcmp(which, "null-err")) return es_segment_slice(seg, NULL, ES_INT16, ROWS, COLS, COLS, labels, NULL);
    if (!strcmp(which, "zero-rows")) return es_segment_slice(seg, s, ES_INT16, 0, COLS, COLS, labels, err);
    if (!strcmp(which, "negative-cols")) return es_segment_slice(seg, s, ES_INT16, ROWS, -5, COLS, labels, err);
    if (!strcmp(which, "zero-slices"))
        return es_segment_volume(seg, s, ES_INT16, 0, ROWS, COLS, COLS, ROWS * COLS, labels, err);
    if (!strcmp(which, "one-row")) return es_segment_slice(seg, s, ES_INT16, 1, COLS, COLS, labels, err);
    /* Sizes are refused before any pixel is read, so the small buffer is never overrun. */
    if (!strcmp(which, "too-large")) return es_segment_slice(seg, s, ES_INT16, ES_MAX_SIDE + 1, COLS, COLS, labels, err);
    if (!strcmp(which, "too-wide"))
        return es_segment_slice(seg, s, ES_INT16, ROWS, ES_MAX_SIDE + 1, ES_MAX_SIDE + 1, labels, err);
    if (!strcmp(which, "bad-dtype")) return es_segment_slice(seg, s, (es_dtype)42, ROWS, COLS, COLS, labels, err);
    if (!strcmp(which, "float16-dtype")) return es_segment_slice(seg, s, ES_FLOAT16, ROWS, COLS, COLS, labels, err);
    if (!strcmp(which, "short-stride")) return es_segment_slice(seg, s, ES_INT16, ROWS, COLS, COLS - 1, labels, err);
    if (!strcmp(which, "huge-stride"))
        return es_segment_slice(seg, s, ES_INT16, ROWS, COLS, PTRDIFF_MAX / 2, labels, err);
    if (!strcmp(which, "short-slice-stride"))
        return es_segment_volume(seg, s, ES_INT16, 2, ROWS, COLS, COLS, ROWS * COLS - 1, labels, err);
    if (!strcmp(which, "nan")) {
        f[ROWS * COLS + 7] = NAN;
        return es_segment_volume(seg, f, ES_FLOAT32, 2, ROWS, COLS, COLS, ROWS * COLS, labels, err);
    }
    if (!strcmp(which, "normalised")) {
        for (int i = 0; i < ROWS * COLS; i++) f[i] = (f[i] + 1000.0f) / 1100.0f;
        return es_segment_slice(seg, f, ES_FLOAT32, ROWS, COLS, COLS, labels, err);
    }
    if (!strcmp(which, "stored-values") || !strcmp(which, "clipped-at-0")) { /* HU + 1024 as a scanner stores them */
        static uint16_t u[2 * ROWS * COLS];
        int stored = !strcmp(which, "stored-values");
        for (int i = 0; i < 2 * ROWS * COLS; i++) u[i] = (uint16_t)(stored ? s[i] + 1024 : (s[i] < 0 ? 0 : s[i]));
        return es_segment_volume(seg, u, ES_UINT16, 2, ROWS, COLS, COLS, ROWS * COLS, labels, err);
    }
    if (!strcmp(which, "beyond-hu")) {
        f[3] = 1e6f;
        return es_segment_slice(seg, f, ES_FLOAT32, ROWS, COLS, COLS, labels, err);
    }
    if (!strcmp(which, "tta-unknown")) return es_set_tta(seg, "rot90", err);
    if (!strcmp(which, "tta-null-mode")) return es_set_tta(seg, NULL, err);
    if (!strcmp(which, "tta-null-segmenter")) return es_set_tta(NULL, "flip", err);
    if (!strcmp(which, "tta-kept")) { /* a refused mode leaves the segmenter as it was: still mirroring */
        int rc = es_set_tta(seg, "mirror", err);
        if (rc == ES_OK && es_set_tta(seg, "sideways", err) != ES_EINVAL) return -1;
        return rc ? rc : es_segment_volume(seg, s, ES_INT16, 2, ROWS, COLS, COLS, ROWS * COLS, labels, err);
    }
    fprintf(stderr, "capi_checks: unknown case %s\n", which);
    exit(64);
}

static int cycles_case(const char *bundle, int n) {
    static int16_t s[3 * ROWS * COLS];
    static uint8_t labels[3 * ROWS * COLS];
    es_error err;
    long long foreground = 0;
    for (int z = 0; z < 3; z++) fill_slice(NULL, s + z * ROWS * COLS, ROWS, COLS);
    for (int i = 0; i < n; i++) {
        es_segmenter *seg = es_open(bundle, i % 2 ? "fp32" : "int8", 1, &err);
        if (!seg) return report(err.code, &err);
        int rc = es_segment_volume(seg, s, ES_INT16, 3, ROWS, COLS, COLS, ROWS * COLS, labels, &err);
        if (rc == ES_OK) rc = es_segment_slice(seg, s, ES_INT16, ROWS, COLS, COLS, labels, &err);
        es_close(seg);
        if (rc != ES_OK) return report(rc, &err);
    }
    for (int i = 0; i < ROWS * COLS; i++) foreground += labels[i] != 0;
    printf("%d\tcycles done, %lld foreground pixels\n", ES_OK, foreground);
    return 0;
}

typedef struct {
    es_segmenter *seg;
    const int16_t *hu;
    const uint8_t *expected;
    int rc, mismatches;
} shared_job;

static void *segment_repeatedly(void *arg) {
    shared_job *job = arg;
    uint8_t labels[ROWS * COLS];
    es_error err;
    for (int i = 0; i < 5 && job->rc == ES_OK; i++) {
        job->rc = es_segment_slice(job->seg, job->hu, ES_INT16, ROWS, COLS, COLS, labels, &err);
        job->mismatches += memcmp(labels, job->expected, sizeof labels) != 0;
    }
    return NULL;
}

static int threads_case(const char *bundle, int n) {
    static int16_t hu[ROWS * COLS];
    static uint8_t expected[ROWS * COLS];
    shared_job jobs[16];
    pthread_t ids[16];
    es_error err = {ES_EINVAL, "N must be 1..16"};
    if (n < 1 || n > 16) return report(ES_EINVAL, &err);
    fill_slice(NULL, hu, ROWS, COLS);
    es_segmenter *seg = es_open(bundle, "int8", 0, &err);
    if (!seg) return report(err.code, &err);
    int rc = es_segment_slice(seg, hu, ES_INT16, ROWS, COLS, COLS, expected, &err), mismatches = 0;
    for (int t = 0; t < n && rc == ES_OK; t++) {
        jobs[t] = (shared_job){seg, hu, expected, ES_OK, 0};
        pthread_create(&ids[t], NULL, segment_repeatedly, &jobs[t]);
    }
    for (int t = 0; t < n && rc == ES_OK; t++) pthread_join(ids[t], NULL);
    for (int t = 0; t < n && rc == ES_OK; t++) {
        rc = jobs[t].rc;
        mismatches += jobs[t].mismatches;
    }
    es_close(seg);
    if (rc != ES_OK) return report(rc, &err);
    printf("%d\t%d threads x 5 calls, %d masks differ\n", ES_OK, n, mismatches);
    return 0;
}

/* `count` int16 values from the raw file `path` (malloc'd), or NULL after saying why on stderr. */
/* Write `count` labels to `path` when `rc` is ES_OK, then report `rc`. */
static int write_labels(int rc, const char *path, const uint8_t *labels, size_t count, const es_error *err) {
    FILE *out = rc == ES_OK ? fopen(path, "wb") : NULL;
    if (out) {
        fwrite(labels, 1, count, out);
        fclose(out);
    }
    return report(rc, err);
}

/* Slice by slice through es_segment_slice, from a row-padded copy (row_stride = cols + 3). */
static int slices_case(char **argv) {
    int slices = atoi(argv[4]), rows = atoi(argv[5]), cols = atoi(argv[6]);
    size_t plane = (size_t)rows * cols, stride = (size_t)cols + 3, count = (size_t)slices * plane;
    int16_t *hu = read_raw(argv[7], count), *padded = malloc((size_t)rows * stride * sizeof *padded);
    uint8_t *labels = malloc(count);
    es_error err = {0, ""};
    if (!hu || !padded || !labels) return 65;
    es_segmenter *seg = es_open(argv[2], argv[3], 0, &err);
    int rc = seg ? ES_OK : err.code;
    for (int z = 0; z < slices && rc == ES_OK; z++) {
        for (int r = 0; r < rows; r++) {
            memcpy(padded + r * stride, hu + z * plane + r * cols, (size_t)cols * sizeof *hu);
            for (int pad = 0; pad < 3; pad++) padded[r * stride + cols + pad] = 30000; /* must be skipped */
        }
        rc = es_segment_slice(seg, padded, ES_INT16, rows, cols, (ptrdiff_t)stride, labels + z * plane, &err);
    }
    es_close(seg);
    rc = write_labels(rc, argv[8], labels, count, &err);
    free(hu);
    free(padded);
    free(labels);
    return rc;
}

/* es_set_tta(argv[2]) on BUNDLE, then the whole volume, then its first slice alone. */
static int tta_case(char **argv) {
    int slices = atoi(argv[5]), rows = atoi(argv[6]), cols = atoi(argv[7]);
    size_t plane = (size_t)rows * cols, count = (size_t)slices * plane;
    int16_t *hu = read_raw(argv[8], count);
    uint8_t *labels = malloc(count), *first = malloc(plane);
    es_error err = {0, ""};
    if (!hu || !labels || !first) return 65;
    es_segmenter *seg = es_open(argv[3], argv[4], 0, &err);
    int rc = seg ? es_set_tta(seg, argv[2], &err) : err.code;
    if (rc == ES_OK)
        rc = es_segment_volume(seg, hu, ES_INT16, slices, rows, cols, cols, (ptrdiff_t)plane, labels, &err);
    if (rc == ES_OK) rc = es_segment_slice(seg, hu, ES_INT16, rows, cols, cols, first, &err);
    es_close(seg);
    if (rc == ES_OK && memcmp(first, labels, plane) != 0) {
        rc = -1;
        snprintf(err.message, sizeof err.message, "the first slice alone differs from the volume's");
    }
    rc = write_labels(rc, argv[9], labels, count, &err);
    free(hu);
    free(labels);
    free(first);
    return rc;
}

/* es_segment_volume_spaced with spacing argv[2..4] on BUNDLE argv[5]. */
static int spaced_case(char **argv) {
    const double spacing[3] = {strtod(argv[2], NULL), strtod(argv[3], NULL), strtod(argv[4], NULL)};
    int slices = atoi(argv[7]), rows = atoi(argv[8]), cols = atoi(argv[9]);
    size_t plane = (size_t)rows * cols, count = (size_t)slices * plane;
    int16_t *hu = read_raw(argv[10], count);
    uint8_t *labels = malloc(count);
    es_error err = {0, ""};
    if (!hu || !labels) return 65;
    es_segmenter *seg = es_open(argv[5], argv[6], 0, &err);
    int rc = seg ? es_segment_volume_spaced(seg, hu, ES_INT16, slices, rows, cols, cols, (ptrdiff_t)plane, spacing,
                                            labels, &err)
                 : err.code;
    es_close(seg);
    rc = write_labels(rc, argv[11], labels, count, &err);
    free(hu);
    free(labels);
    return rc;
}

/* One slice of any es_dtype, as the caller wrote it: the check of its values is the case. */
static int typed_case(char **argv) {
    const size_t sizes[] = {1, 2, 2, 4}, count = (size_t)atoi(argv[4]) * (size_t)atoi(argv[5]);
    int dtype = atoi(argv[3]);
    if (dtype < 0 || dtype > 3) return 64;
    void *hu = malloc(count * sizes[dtype]);
    uint8_t *labels = malloc(count);
    FILE *in = fopen(argv[6], "rb");
    int ok = hu && labels && in && fread(hu, sizes[dtype], count, in) == count;
    if (in) fclose(in);
    es_error err = {0, ""};
    es_segmenter *seg = ok ? es_open(argv[2], "fp32", 0, &err) : NULL;
    int rc = !ok ? 65 : seg ? es_segment_slice(seg, hu, (es_dtype)dtype, atoi(argv[4]), atoi(argv[5]), atoi(argv[5]),
                                                labels, &err) : err.code;
    es_close(seg);
    free(hu);
    free(labels);
    return rc == 65 ? rc : report(rc, &err);
}

int main(int argc, char **argv) {
    es_error err = {0, ""};
    if (argc >= 3 && !strcmp(argv[1], "open")) return open_case(argv[2], argc > 3 ? argv[3] : NULL);
    if (argc == 2 && !strcmp(argv[1], "open-null")) {
        es_segmenter *seg = es_open(NULL, "int8", 0, &err);
        return report(seg ? -1 : err.code, &err);
    }
    if (argc == 3 && !strcmp(argv[1], "open-no-err")) {
        es_segmenter *seg = es_open(argv[2], "int8", 0, NULL);
        printf("%d\topened without err: %s\n", seg ? ES_OK : -1, seg ? "yes" : "no");
        es_close(seg);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "call")) {
        es_segmenter *seg = es_open(argv[2], "int8", 0, &err);
        if (!seg) return report(err.code, &err);
        int rc = call_case(seg, argv[3], &err);
        es_close(seg);
        return report(rc, &err);
    }
    if (argc == 9 && !strcmp(argv[1], "slices")) return slices_case(argv);
    if (argc == 10 && !strcmp(argv[1], "tta")) return tta_case(argv);
    if (argc == 12 && !strcmp(argv[1], "spaced")) return spaced_case(argv);
    if (argc == 7 && !strcmp(argv[1], "typed")) return typed_case(argv);
    if (argc == 4 && !strcmp(argv[1], "threads")) return threads_case(argv[2], atoi(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "cycles")) return cycles_case(argv[2], atoi(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "leak")) {
        static void *volatile lost;
        int rc = cycles_case(argv[2], 1);
        lost = malloc(64);
        memset(lost, 1, 64);
        lost = NULL;
        return rc;
    }
    fprintf(stderr, "usage: see the comment at the top of capi_checks.c\n");
    return 64;
}
