/* 1 thread against 4 on slices large enough for es_run_bands to cut them into row bands: both
 * must equal the brute-force reference, and each other byte for byte. es_band_count confirms
 * that the shapes are banded, so these checks reach the banded paths. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "edgeseg_kernels.h"
#include "es_internal.h"
#include "oracle.h"

enum { MANY = 4 };

/* Bands per slice on MANY threads of a job shaped like the kernel's (its work per slice is
 * pixels read + written, as the kernels count it). */
static ptrdiff_t bands_for(ptrdiff_t count, ptrdiff_t rows, ptrdiff_t work, ptrdiff_t band_work) {
    es_band_job job;
    memset(&job, 0, sizeof job);
    job.count = count;
    job.rows = rows;
    job.work = work;
    job.band_work = band_work;
    return es_band_count(&job, MANY);
}

static void check_banded_post(ptrdiff_t count, ptrdiff_t classes, ptrdiff_t size, ptrdiff_t out,
                              es_resize_mode mode, int f16, int keep) {
    const ptrdiff_t nin = count * classes * size * size, nout = count * out * out;
    const ptrdiff_t bands = bands_for(count, out, classes * size * size + out * out, ES_BAND_WORK);
    CHECK(bands >= 2, "%td classes %td -> %td: %td band(s), the test needs >= 2", classes, size, out, bands);
    float *logits = malloc(sizeof(float) * (size_t)nin);
    uint16_t *half = malloc(sizeof(uint16_t) * (size_t)nin);
    uint8_t *want = malloc((size_t)nout), *one = malloc((size_t)nout), *many = malloc((size_t)nout);
    make_blob_logits(logits, count, classes, size, size, (unsigned)(classes * 100 + size));
    for (ptrdiff_t i = 0; i < nin; ++i) half[i] = oracle_half_bits(logits[i]);
    if (mode == ES_RESIZE_LOGITS)
        oracle_logits_labels(logits, count, classes, size, size, out, out, want);
    else
        oracle_argmax_nearest(logits, count, classes, size, size, out, out, want);
    if (keep) CHECK(oracle_largest_component(want, count, out, out, (int)classes), "oom");
    const void *src = f16 ? (const void *)half : (const void *)logits;
    const es_dtype dt = f16 ? ES_FLOAT16 : ES_FLOAT32;
    memset(one, 0xee, (size_t)nout);
    memset(many, 0xee, (size_t)nout);
    CHECK(es_postprocess(src, dt, count, classes, size, size, one, out, out, mode, keep, 1) == ES_OK, "status");
    CHECK(es_postprocess(src, dt, count, classes, size, size, many, out, out, mode, keep, MANY) == ES_OK, "status");
    ptrdiff_t d1 = 0, dn = 0, d = 0;
    for (ptrdiff_t i = 0; i < nout; ++i) {
        d1 += one[i] != want[i];
        dn += many[i] != want[i];
        d += one[i] != many[i];
    }
    CHECK(d1 == 0 && dn == 0 && d == 0,
          "%td classes %td -> %td mode %d %s keep %d: 1 thread %td, %d threads %td differ from the "
          "reference, %td from each other", classes, size, out, (int)mode, f16 ? "float16" : "float32",
          keep, d1, MANY, dn, d);
    free(logits), free(half), free(want), free(one), free(many);
}

static void test_banded_postprocess(void) {
    check_banded_post(1, 2, 256, 2048, ES_RESIZE_LOGITS, 0, 0); /* two-class fast path */
    check_banded_post(2, 2, 256, 2048, ES_RESIZE_LOGITS, 1, 1); /* float16, components */
    check_banded_post(1, 3, 192, 1536, ES_RESIZE_LOGITS, 1, 0); /* N classes */
    check_banded_post(1, 3, 256, 1536, ES_RESIZE_LABELS, 0, 0); /* label mode */
    check_banded_post(1, 2, 256, 1536, ES_RESIZE_LABELS, 1, 1);
}

static void check_banded_pre(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t out_rows, ptrdiff_t out_cols) {
    const double low = -160.0, high = 240.0, scale = 1.0 / (high - low), offset = -low / (high - low);
    const ptrdiff_t nout = out_rows * out_cols;
    const ptrdiff_t bands = bands_for(1, out_rows, rows * cols + nout, ES_BAND_WORK);
    CHECK(bands >= 2, "%tdx%td -> %tdx%td: %td band(s), the test needs >= 2", rows, cols, out_rows, out_cols, bands);
    int16_t *img = malloc(sizeof(int16_t) * (size_t)(rows * cols));
    float *one = malloc(sizeof(float) * (size_t)nout), *many = malloc(sizeof(float) * (size_t)nout);
    double *want = malloc(sizeof(double) * (size_t)nout);
    unsigned st = 3u;
    for (ptrdiff_t i = 0; i < rows * cols; ++i) img[i] = (int16_t)((int)(test_rand(&st) % 1400) - 1000);
    es_slices s = {img, ES_INT16, 1, rows, cols, rows * cols, cols, 1};
    es_preprocess_spec sp = {low, high, scale, offset, out_rows, out_cols, ES_BILINEAR, ES_FLOAT32};
    CHECK(es_preprocess(&s, &sp, one, 1) == ES_OK, "status");
    CHECK(es_preprocess(&s, &sp, many, MANY) == ES_OK, "status");
    oracle_preprocess_bilinear(img, rows, cols, low, high, scale, offset, out_rows, out_cols, want);
    double worst = 0.0;
    for (ptrdiff_t i = 0; i < nout; ++i) {
        const double e = fabs((double)one[i] - want[i]);
        worst = e > worst ? e : worst;
    }
    CHECK(worst <= 1e-5, "%tdx%td -> %tdx%td: %g from the reference", rows, cols, out_rows, out_cols, worst);
    CHECK(memcmp(one, many, sizeof(float) * (size_t)nout) == 0, "1 and %d threads differ", MANY);
    free(img), free(one), free(many), free(want);
}

static void test_banded_resize_labels(void) {
    const ptrdiff_t rows = 300, cols = 200, out = 2048, nout = out * out;
    CHECK(bands_for(1, out, 2 * nout, 1) >= 2, "not banded");
    uint8_t *src = malloc((size_t)(rows * cols)), *want = malloc((size_t)nout);
    uint8_t *one = malloc((size_t)nout), *many = malloc((size_t)nout);
    unsigned st = 5u;
    for (ptrdiff_t i = 0; i < rows * cols; ++i) src[i] = (uint8_t)(test_rand(&st) % 5);
    oracle_resize_labels(src, 1, rows, cols, out, out, want);
    CHECK(es_resize_labels(src, 1, rows, cols, one, out, out, 1) == ES_OK, "status");
    CHECK(es_resize_labels(src, 1, rows, cols, many, out, out, MANY) == ES_OK, "status");
    CHECK(memcmp(one, want, (size_t)nout) == 0 && memcmp(many, want, (size_t)nout) == 0, "resize_labels");
    free(src), free(want), free(one), free(many);
}

/* The component filter never cuts a slice (a component may span it): its bands are slices. */
static void test_components_threads(void) {
    const ptrdiff_t count = 5, rows = 97, cols = 131, n = count * rows * cols;
    uint8_t *want = malloc((size_t)n), *one = malloc((size_t)n), *many = malloc((size_t)n);
    unsigned st = 11u;
    for (ptrdiff_t i = 0; i < n; ++i) want[i] = test_rand(&st) % 100 < 55 ? (uint8_t)(1 + test_rand(&st) % 3) : 0;
    memcpy(one, want, (size_t)n);
    memcpy(many, want, (size_t)n);
    CHECK(oracle_largest_component(want, count, rows, cols, 4), "oom");
    CHECK(es_largest_component(one, count, rows, cols, 4, 1) == ES_OK, "status");
    CHECK(es_largest_component(many, count, rows, cols, 4, MANY) == ES_OK, "status");
    CHECK(memcmp(one, want, (size_t)n) == 0, "1 thread differs from the flood-fill reference");
    CHECK(memcmp(many, want, (size_t)n) == 0, "%d threads differ from the flood-fill reference", MANY);
    free(want), free(one), free(many);
}

void test_bands_all(void) {
    CHECK(bands_for(1, 2048, (ptrdiff_t)1 << 20, ES_BAND_WORK) == 1, "a million pixels stay one band");
    CHECK(bands_for(1, 2048, (ptrdiff_t)1 << 24, ES_BAND_WORK) == 2 * MANY, "one slice: two bands a thread");
    CHECK(bands_for(8, 2048, (ptrdiff_t)1 << 24, ES_BAND_WORK) == 1, "enough slices: no bands");
    CHECK(bands_for(1, 31, (ptrdiff_t)1 << 24, ES_BAND_WORK) == 1, "bands keep >= 16 rows");
    CHECK(bands_for(1, 2048, (ptrdiff_t)1 << 24, 0) == 1, "band_work 0 never cuts a slice");
    test_banded_postprocess();
    check_banded_pre(1024, 1024, 1024, 1536); /* vertical first (out_rows <= rows) */
    check_banded_pre(512, 512, 1536, 1536);   /* horizontal first */
    test_banded_resize_labels();
    test_components_threads();
}
