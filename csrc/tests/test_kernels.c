/* C-only test of the kernels: known inputs, known answers; post-processing in
 * test_postprocess.c, the banded (multi-thread) paths in test_bands.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "edgeseg_kernels.h"

int failures = 0;

static es_preprocess_spec spec(double low, double high, ptrdiff_t rows, ptrdiff_t cols,
                               es_interp interp) {
    es_preprocess_spec s;
    s.window_low = low;
    s.window_high = high;
    s.scale = 1.0 / (high - low);
    s.offset = -low / (high - low);
    s.out_rows = rows;
    s.out_cols = cols;
    s.interp = interp;
    s.out_dtype = ES_FLOAT32;
    return s;
}

static void test_constant_stays_constant(void) {
    int16_t img[6 * 10];
    float out[4 * 3];
    for (int i = 0; i < 60; ++i) img[i] = 50;
    es_slices s = {img, ES_INT16, 1, 6, 10, 60, 10, 1};
    for (int interp = 0; interp < 2; ++interp) {
        es_preprocess_spec sp = spec(0.0, 200.0, 4, 3, (es_interp)interp);
        CHECK(es_preprocess(&s, &sp, out, 1) == ES_OK, "status");
        for (int i = 0; i < 12; ++i) CHECK(fabsf(out[i] - 0.25f) < 1e-6f, "out[%d]=%g", i, out[i]);
    }
}

static void test_impulse_tent(void) {
    float img[25] = {0}, out[100];
    const float tent[10] = {0, 0, 0, 0.25f, 0.75f, 0.75f, 0.25f, 0, 0, 0};
    img[12] = 1.0f;
    es_slices s = {img, ES_FLOAT32, 1, 5, 5, 25, 5, 1};
    es_preprocess_spec sp = spec(0.0, 1.0, 10, 10, ES_BILINEAR);
    CHECK(es_preprocess(&s, &sp, out, 1) == ES_OK, "status");
    for (int y = 0; y < 10; ++y)
        for (int x = 0; x < 10; ++x)
            CHECK(fabsf(out[y * 10 + x] - tent[y] * tent[x]) < 1e-7f, "(%d,%d)=%g", y, x, out[y * 10 + x]);
}

static void test_area_block_mean_strided_uint8(void) {
    /* A 4x4 image read through a column stride of 2 (every other byte of 4x8). */
    uint8_t buf[4 * 8];
    float out[4];
    for (int i = 0; i < 32; ++i) buf[i] = (uint8_t)(i % 2 ? 255 : i);
    es_slices s = {buf, ES_UINT8, 1, 4, 4, 32, 8, 2};
    es_preprocess_spec sp = spec(0.0, 100.0, 2, 2, ES_AREA);
    CHECK(es_preprocess(&s, &sp, out, 1) == ES_OK, "status");
    /* block (0,0) holds 0, 2, 8, 10 -> mean 5 -> 0.05 */
    CHECK(fabsf(out[0] - 0.05f) < 1e-6f, "%g", out[0]);
    CHECK(fabsf(out[3] - (20 + 22 + 28 + 30) / 400.0f) < 1e-6f, "%g", out[3]);
}

static void test_float16_output_and_nan(void) {
    float img[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    uint16_t out[4];
    es_slices s = {img, ES_FLOAT32, 1, 2, 2, 4, 2, 1};
    es_preprocess_spec sp = spec(0.0, 4.0, 2, 2, ES_BILINEAR);
    sp.out_dtype = ES_FLOAT16;
    CHECK(es_preprocess(&s, &sp, out, 1) == ES_OK, "status");
    CHECK(out[3] == 0x3a00, "0.75 as half is 0x3a00, got 0x%04x", out[3]); /* 3/4 */
    img[2] = NAN;
    CHECK(es_preprocess(&s, &sp, out, 1) == ES_ENONFINITE, "NaN must be reported");
    img[2] = INFINITY;
    CHECK(es_preprocess(&s, &sp, out, 1) == ES_ENONFINITE, "inf must be reported");
    img[2] = -INFINITY;
    CHECK(es_preprocess(&s, &sp, out, 1) == ES_ENONFINITE, "-inf must be reported");
    CHECK(es_float_to_half(65520.0f) == 0x7c00, "overflow to inf");
    CHECK(es_half_to_float(0x0001) == 5.9604644775390625e-08f, "smallest subnormal");
}

static void test_invalid_arguments(void) {
    int16_t img[4] = {0};
    float out[4];
    es_slices s = {img, ES_INT16, 1, 2, 2, 4, 2, 1};
    es_preprocess_spec sp = spec(0.0, 1.0, 2, 2, ES_BILINEAR);
    sp.window_low = 2.0; /* inverted */
    CHECK(es_preprocess(&s, &sp, out, 1) == ES_EINVAL, "inverted window");
    CHECK(es_preprocess(NULL, &sp, out, 1) == ES_EINVAL, "NULL source");
    CHECK(strcmp(es_status_message(ES_ENOMEM), "out of memory") == 0, "message");
}

static void test_postprocess_ties_and_resize(void) {
    /* 2 classes on 2x2; class 1 wins only at (0,1); ties elsewhere go to class 0. */
    float logits[2 * 4] = {0, 0, 0, 0, 0, 5, 0, 0};
    uint8_t labels[16];
    CHECK(es_postprocess(logits, ES_FLOAT32, 1, 2, 2, 2, labels, 4, 4, ES_RESIZE_LABELS, 0, 1) == ES_OK, "status");
    const uint8_t want[16] = {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK(memcmp(labels, want, 16) == 0, "nearest doubling");
    CHECK(es_postprocess(logits, ES_FLOAT32, 1, 2, 2, 2, labels, 4, 4, ES_RESIZE_LOGITS, 0, 2) == ES_OK, "status");
    CHECK(labels[3] == 1 && labels[12] == 0, "bilinear keeps the corner");
    logits[0] = INFINITY;
    CHECK(es_postprocess(logits, ES_FLOAT32, 1, 2, 2, 2, labels, 4, 4, ES_RESIZE_LOGITS, 0, 1) == ES_ENONFINITE, "inf");
}

static void test_largest_component(void) {
    uint8_t lab[5 * 6] = {
        1, 1, 0, 0, 0, 2,
        1, 0, 0, 1, 0, 0,
        0, 0, 0, 1, 1, 0,
        2, 0, 1, 0, 0, 0, /* diagonal: joins the class-1 blob above (4 px beats 3 px) */
        0, 0, 0, 0, 0, 1,
    };
    const uint8_t want[5 * 6] = {
        0, 0, 0, 0, 0, 2, /* class 2: two single pixels, the first in raster order stays */
        0, 0, 0, 1, 0, 0,
        0, 0, 0, 1, 1, 0,
        0, 0, 1, 0, 0, 0,
        0, 0, 0, 0, 0, 0,
    };
    CHECK(es_largest_component(lab, 1, 5, 6, 3, 1) == ES_OK, "status");
    CHECK(memcmp(lab, want, sizeof want) == 0, "largest components");
}

static void test_threads_agree(void) {
    enum { N = 3, H = 61, W = 47, OH = 32, OW = 29 };
    int16_t *img = malloc(sizeof(int16_t) * N * H * W);
    float *a = malloc(sizeof(float) * N * OH * OW), *b = malloc(sizeof(float) * N * OH * OW);
    for (int i = 0; i < N * H * W; ++i) img[i] = (int16_t)((i * 7919) % 4000 - 1000);
    es_slices s = {img, ES_INT16, N, H, W, H * W, W, 1};
    es_preprocess_spec sp = spec(-100.0, 400.0, OH, OW, ES_BILINEAR);
    CHECK(es_preprocess(&s, &sp, a, 1) == ES_OK, "status");
    CHECK(es_preprocess(&s, &sp, b, 4) == ES_OK, "status");
    CHECK(memcmp(a, b, sizeof(float) * N * OH * OW) == 0, "1 and 4 threads differ");
    free(img);
    free(a);
    free(b);
}

int main(void) {
    test_constant_stays_constant();
    test_impulse_tent();
    test_area_block_mean_strided_uint8();
    test_float16_output_and_nan();
    test_invalid_arguments();
    test_postprocess_ties_and_resize();
    test_largest_component();
    test_threads_agree();
    test_postprocess_all();
    test_bands_all();
    test_components_all();
    test_fit_all();
    test_mirror_all();
    test_component_rules_all();
    test_portable_all();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("csrc/tests: all checks passed (OpenMP: %s; %s)\n", es_has_openmp() ? "yes" : "no",
           test_build_variant());
    return 0;
}
