/* fit=pad: the box geometry, pre-processing into it and post-processing out of it, against the
 * brute-force oracle (oracle.c) on odd shapes, float32 and float16, both resize modes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "edgeseg_kernels.h"
#include "oracle.h"

static void test_geometry_matches_search(void) {
    const ptrdiff_t outs[][2] = {{256, 256}, {64, 96}, {33, 17}};
    for (int o = 0; o < 3; ++o)
        for (ptrdiff_t rows = 1; rows <= 70; rows += 3)
            for (ptrdiff_t cols = 1; cols <= 600; cols += 7) {
                ptrdiff_t want[4];
                es_fit_box got;
                const int ok = oracle_fit_box(rows, cols, outs[o][0], outs[o][1], want);
                const int rc = es_fit_geometry(rows, cols, outs[o][0], outs[o][1], ES_FIT_PAD, &got);
                CHECK(rc == (ok ? ES_OK : ES_EINVAL), "%tdx%td into %tdx%td: status %d", rows, cols,
                      outs[o][0], outs[o][1], rc);
                if (ok && rc == ES_OK)
                    CHECK(got.rows == want[0] && got.cols == want[1] && got.top == want[2] &&
                              got.left == want[3],
                          "%tdx%td: box %td %td %td %td, oracle %td %td %td %td", rows, cols, got.rows,
                          got.cols, got.top, got.left, want[0], want[1], want[2], want[3]);
            }
    es_fit_box b;
    CHECK(es_fit_geometry(1, 512, 256, 256, ES_FIT_PAD, &b) == ES_EINVAL, "1x512 must be refused");
    CHECK(es_fit_geometry(1, 256, 256, 256, ES_FIT_PAD, &b) == ES_OK && b.rows == 1 && b.top == 127,
          "1x256 is a one-row box at row 127");
    CHECK(es_fit_geometry(153, 456, 256, 256, ES_FIT_STRETCH, &b) == ES_OK && b.rows == 256 && b.cols == 256,
          "stretch is the whole input");
}

/* Largest |got - want|, NaN if any got is NaN (fmax would skip it and pass the check). A plain
 * compare, too: GCC 12.2 for aarch64 crashes vectorising an fmax reduction here. */
static double max_error(const float *got, const uint16_t *half, const double *want, ptrdiff_t n) {
    double err = 0.0;
    for (ptrdiff_t p = 0; p < n; ++p) {
        const double d = fabs((half ? (double)es_half_to_float(half[p]) : (double)got[p]) - want[p]);
        err = d > err || d != d ? d : err;
        if (d != d) break;
    }
    return err;
}

static void test_preprocess_pad(void) {
    const ptrdiff_t shapes[][2] = {{153, 456}, {457, 351}, {1, 64}, {128, 2}, {9, 7}};
    const ptrdiff_t R = 64, C = 64;
    const double low = -1000.0, high = 400.0, scale = 1.0 / (high - low) / 0.5;
    const double offset = (-low / (high - low) - 0.25) / 0.5;
    float *got = malloc(sizeof(float) * R * C);
    uint16_t *half = malloc(sizeof(uint16_t) * R * C);
    double *want = malloc(sizeof(double) * R * C);
    for (int i = 0; i < 5; ++i) {
        const ptrdiff_t rows = shapes[i][0], cols = shapes[i][1];
        int16_t *img = malloc(sizeof(int16_t) * rows * cols);
        unsigned st = 7u + (unsigned)i;
        for (ptrdiff_t p = 0; p < rows * cols; ++p) img[p] = (int16_t)(test_rand(&st) % 2400) - 1200;
        es_slices s = {img, ES_INT16, 1, rows, cols, rows * cols, cols, 1};
        es_preprocess_spec sp = {low, high, scale, offset, R, C, ES_BILINEAR, ES_FLOAT32};
        CHECK(oracle_preprocess_pad(img, rows, cols, low, high, scale, offset, R, C, want), "oracle");
        CHECK(es_preprocess_fit(&s, &sp, ES_FIT_PAD, got, 2) == ES_OK, "status %tdx%td", rows, cols);
        double err = max_error(got, NULL, want, R * C);
        CHECK(err < 1e-5, "%tdx%td float32: max error %g", rows, cols, err);
        sp.out_dtype = ES_FLOAT16;
        CHECK(es_preprocess_fit(&s, &sp, ES_FIT_PAD, half, 1) == ES_OK, "status");
        err = max_error(NULL, half, want, R * C);
        CHECK(err < 2e-3, "%tdx%td float16: max error %g", rows, cols, err);
        free(img);
    }
    int16_t thin[512] = {0};
    es_slices s = {thin, ES_INT16, 1, 1, 512, 512, 512, 1};
    es_preprocess_spec sp = {low, high, scale, offset, 256, 256, ES_BILINEAR, ES_FLOAT32};
    CHECK(es_preprocess_fit(&s, &sp, ES_FIT_PAD, got, 1) == ES_EINVAL, "1x512 must be refused");
    free(got);
    free(half);
    free(want);
}

/* es_postprocess_fit against crop + oracle resize for one (classes, mode, dtype). */
static void check_postprocess_pad(ptrdiff_t classes, es_resize_mode mode, es_dtype dtype,
                                  ptrdiff_t rows, ptrdiff_t cols) {
    const ptrdiff_t N = 2, R = 40, C = 40;
    ptrdiff_t box[4];
    float *logits = malloc(sizeof(float) * N * classes * R * C);
    uint16_t *half = malloc(sizeof(uint16_t) * N * classes * R * C);
    uint8_t *got = malloc((size_t)(N * rows * cols)), *want = malloc((size_t)(N * rows * cols));
    make_blob_logits(logits, N, classes, R, C, (unsigned)(rows * 31 + cols));
    for (ptrdiff_t p = 0; p < N * classes * R * C; ++p) half[p] = oracle_half_bits(logits[p]);
    CHECK(oracle_fit_box(rows, cols, R, C, box), "oracle box");
    float *crop = malloc(sizeof(float) * N * classes * box[0] * box[1]);
    oracle_crop_logits(logits, N, classes, R, C, box, crop);
    if (mode == ES_RESIZE_LOGITS)
        oracle_logits_labels(crop, N, classes, box[0], box[1], rows, cols, want);
    else
        oracle_argmax_nearest(crop, N, classes, box[0], box[1], rows, cols, want);
    const void *src = dtype == ES_FLOAT32 ? (const void *)logits : (const void *)half;
    const int rc = es_postprocess_fit(src, dtype, N, classes, R, C, got, rows, cols, mode, ES_FIT_PAD, 0, 2);
    CHECK(rc == ES_OK, "status %d", rc);
    ptrdiff_t diff = 0;
    for (ptrdiff_t p = 0; p < N * rows * cols; ++p) diff += got[p] != want[p];
    CHECK(diff == 0, "%tdx%td, %td classes, mode %d, dtype %d: %td labels differ", rows, cols, classes,
          (int)mode, (int)dtype, diff);
    free(crop);
    free(logits);
    free(half);
    free(got);
    free(want);
}

static void test_postprocess_pad(void) {
    const ptrdiff_t shapes[][2] = {{153, 456}, {457, 351}, {1, 40}, {40, 1}, {23, 24}, {40, 40}};
    for (int i = 0; i < 6; ++i)
        for (ptrdiff_t classes = 2; classes <= 3; ++classes)
            for (int mode = 0; mode < 2; ++mode)
                for (int h = 0; h < 2; ++h)
                    check_postprocess_pad(classes, (es_resize_mode)mode, h ? ES_FLOAT16 : ES_FLOAT32,
                                          shapes[i][0], shapes[i][1]);
    float logits[2 * 16] = {0};
    uint8_t labels[80];
    CHECK(es_postprocess_fit(logits, ES_FLOAT32, 1, 2, 4, 4, labels, 1, 80, ES_RESIZE_LOGITS, ES_FIT_PAD, 0, 1) ==
              ES_EINVAL,
          "1x80 into 4x4 scales to 0.2 px and must be refused");
}

void test_fit_all(void) {
    test_geometry_matches_search();
    test_preprocess_pad();
    test_postprocess_pad();
}
