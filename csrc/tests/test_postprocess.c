/* Post-processing against brute-force references (oracle.c) and hand-derived answers: the
 * two-class fast path, N classes, label mode, float16 logits, es_resize_labels, components. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "edgeseg_kernels.h"
#include "es_internal.h"
#include "oracle.h"

typedef struct {
    ptrdiff_t count, classes, rows, cols, out_rows, out_cols;
} post_shape;

static ptrdiff_t differing(const uint8_t *a, const uint8_t *b, ptrdiff_t n) {
    ptrdiff_t d = 0;
    for (ptrdiff_t i = 0; i < n; ++i) d += a[i] != b[i];
    return d;
}

/* es_postprocess on float32 and on the same values as float16, 1 and 3 threads, must give the
 * reference labels exactly. `scale` multiplies the logits by a power of two (exact). */
static void check_post(const post_shape *s, es_resize_mode mode, int keep, unsigned seed,
                       float scale) {
    const ptrdiff_t nin = s->count * s->classes * s->rows * s->cols;
    const ptrdiff_t nout = s->count * s->out_rows * s->out_cols;
    float *logits = malloc(sizeof(float) * (size_t)nin);
    uint16_t *half = malloc(sizeof(uint16_t) * (size_t)nin);
    uint8_t *want = malloc((size_t)nout), *got = malloc((size_t)nout);
    make_blob_logits(logits, s->count, s->classes, s->rows, s->cols, seed);
    for (ptrdiff_t i = 0; i < nin; ++i) half[i] = oracle_half_bits(logits[i]);
    for (ptrdiff_t i = 0; i < nin; ++i) logits[i] *= scale;
    if (mode == ES_RESIZE_LOGITS)
        oracle_logits_labels(logits, s->count, s->classes, s->rows, s->cols, s->out_rows, s->out_cols, want);
    else
        oracle_argmax_nearest(logits, s->count, s->classes, s->rows, s->cols, s->out_rows, s->out_cols, want);
    if (keep) CHECK(oracle_largest_component(want, s->count, s->out_rows, s->out_cols, (int)s->classes), "oom");
    ptrdiff_t fg = 0;
    for (ptrdiff_t i = 0; i < nout; ++i) fg += want[i] != 0;
    CHECK(s->classes == 1 || (fg > 0 && fg < nout), "test data must hold background and foreground");
    for (int f16 = 0; f16 < (scale == 1.0f ? 2 : 1); ++f16)
        for (int threads = 1; threads <= 3; threads += 2) {
            memset(got, 0xee, (size_t)nout);
            const int rc = es_postprocess(f16 ? (const void *)half : (const void *)logits,
                                          f16 ? ES_FLOAT16 : ES_FLOAT32, s->count, s->classes,
                                          s->rows, s->cols, got, s->out_rows, s->out_cols, mode,
                                          keep, threads);
            CHECK(rc == ES_OK, "status %d", rc);
            const ptrdiff_t d = differing(got, want, nout);
            CHECK(d == 0, "%td classes %tdx%td -> %tdx%td mode %d keep %d %s %d threads x%g: %td of %td differ",
                  s->classes, s->rows, s->cols, s->out_rows, s->out_cols, (int)mode, keep,
                  f16 ? "float16" : "float32", threads, (double)scale, d, nout);
        }
    free(logits), free(half), free(want), free(got);
}

static void test_two_class_by_hand(void) {
    /* One row, d = logit1 - logit0 = (-1, 3) doubled: outputs sample x = 0 (clamped), 0.25,
     * 0.75, 1 (clamped): d = -1, -0.75 + 0.75 = 0 (a tie: class 0), 2, 3. */
    const float logits[4] = {0.0f, 0.0f, -1.0f, 3.0f};
    uint16_t half[4];
    const uint8_t want[4] = {0, 0, 1, 1};
    uint8_t got[4];
    for (int i = 0; i < 4; ++i) half[i] = oracle_half_bits(logits[i]);
    CHECK(es_postprocess(logits, ES_FLOAT32, 1, 2, 1, 2, got, 1, 4, ES_RESIZE_LOGITS, 0, 1) == ES_OK, "status");
    CHECK(memcmp(got, want, 4) == 0, "float32: %d %d %d %d", got[0], got[1], got[2], got[3]);
    CHECK(es_postprocess(half, ES_FLOAT16, 1, 2, 1, 2, got, 1, 4, ES_RESIZE_LOGITS, 0, 1) == ES_OK, "status");
    CHECK(memcmp(got, want, 4) == 0, "float16: %d %d %d %d", got[0], got[1], got[2], got[3]);
    /* A tie only the oracle's rounding sees. Class 0 is 0.75, class 1 (0.75 + 2^-23,
     * 0.75 - 2^-22) (2 and -4 ulps), class 2 far below. Output 1 samples x = 0.25: exactly
     * 0.75 + 2^-25, half an ulp, which rounds to even, 0.75: a tie, class 0. In float32,
     * 0.75 * (0.75 + 2^-23) rounds up to 0.5625 + 2^-23 and the sum is 0.75 + 2^-24 (class 1), and
     * the two-class d = (2^-23, -2^-22) resizes to 2^-25 > 0: both paths must recompute. */
    const float near_tie[6] = {0.75f, 0.75f, 0.75f + 1.1920929e-07f, 0.75f - 2.3841858e-07f, -5.0f, -5.0f};
    const uint8_t want_tie[4] = {1, 0, 0, 0};
    for (int classes = 2; classes <= 3; ++classes) {
        CHECK(es_postprocess(near_tie, ES_FLOAT32, 1, classes, 1, 2, got, 1, 4, ES_RESIZE_LOGITS, 0, 1) == ES_OK, "status");
        CHECK(memcmp(got, want_tie, 4) == 0, "%d classes, near tie: %d %d %d %d", classes, got[0], got[1], got[2], got[3]);
    }
    /* Near FLT_MAX, logit1 - logit0 overflows to inf and a zero weight times inf is NaN: class 1
     * wins everywhere, which only the double path sees. */
    const float huge[6] = {-3e38f, -3e38f, 3e38f, 3e38f, -3e38f, -3e38f};
    const uint8_t want_huge[4] = {1, 1, 1, 1};
    for (int classes = 2; classes <= 3; ++classes) {
        CHECK(es_postprocess(huge, ES_FLOAT32, 1, classes, 1, 2, got, 1, 4, ES_RESIZE_LOGITS, 0, 1) == ES_OK, "status");
        CHECK(memcmp(got, want_huge, 4) == 0, "%d classes, huge: %d %d %d %d", classes, got[0], got[1], got[2], got[3]);
    }
    /* Label mode: argmax (0, 1), nearest doubling. */
    const uint8_t want_labels[4] = {0, 0, 1, 1};
    CHECK(es_postprocess(half, ES_FLOAT16, 1, 2, 1, 2, got, 1, 4, ES_RESIZE_LABELS, 0, 1) == ES_OK, "status");
    CHECK(memcmp(got, want_labels, 4) == 0, "labels: %d %d %d %d", got[0], got[1], got[2], got[3]);
}

static void test_float16_logits(void) {
    /* The encoder of the test agrees with the library's on exact values, and the kernel rejects
     * half inf/NaN logits like float32 ones. */
    const float v[6] = {1.5f, -16.0f, 0.015625f, 5.9604644775390625e-08f, -3.0517578125e-05f, 0.0f};
    for (int i = 0; i < 6; ++i)
        CHECK(oracle_half_bits(v[i]) == es_float_to_half(v[i]), "%g: 0x%04x", (double)v[i], oracle_half_bits(v[i]));
    /* Every finite binary16 decodes to (1024 + m) * 2^(e - 25), or m * 2^-24 when e = 0. */
    int wrong = 0;
    for (unsigned h = 0; h < 0x10000u; ++h) {
        const unsigned e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
        if (e == 0x1fu) continue;
        double v = e ? ldexp(1024.0 + m, (int)e - 25) : ldexp((double)m, -24);
        v = h & 0x8000u ? -v : v;
        wrong += es_half_to_float((uint16_t)h) != (float)v;
    }
    CHECK(wrong == 0, "%d binary16 values decode wrongly", wrong);
    uint16_t half[2 * 3 * 3];
    uint8_t got[4 * 4];
    for (int i = 0; i < 18; ++i) half[i] = oracle_half_bits((i % 5) - 2.0);
    CHECK(es_postprocess(half, ES_FLOAT16, 1, 2, 3, 3, got, 4, 4, ES_RESIZE_LOGITS, 0, 1) == ES_OK, "status");
    half[13] = 0x7c00; /* +inf */
    CHECK(es_postprocess(half, ES_FLOAT16, 1, 2, 3, 3, got, 4, 4, ES_RESIZE_LOGITS, 0, 1) == ES_ENONFINITE, "inf");
    half[13] = 0xfe00; /* NaN */
    CHECK(es_postprocess(half, ES_FLOAT16, 1, 2, 3, 3, got, 4, 4, ES_RESIZE_LABELS, 0, 1) == ES_ENONFINITE, "NaN");
}

static void test_postprocess_against_oracle(void) {
    static const post_shape two[] = {
        {2, 2, 37, 53, 120, 91}, {1, 2, 64, 64, 512, 512}, {1, 2, 96, 80, 48, 33},
        {1, 2, 1, 9, 4, 20},     {3, 2, 40, 40, 40, 40},
        /* integer up-scaling of the columns by 4 (the demo model's 128 -> 512), 3, 5, 6, 7 */
        {1, 2, 128, 128, 512, 512}, {1, 2, 30, 33, 90, 99}, {2, 2, 21, 50, 64, 250}, {1, 2, 16, 40, 48, 240},
        {1, 2, 24, 24, 168, 168},
    };
    static const post_shape many[] = {{2, 3, 37, 53, 120, 91}, {1, 5, 30, 30, 64, 100}, {1, 1, 8, 8, 16, 16},
                                      {1, 3, 32, 32, 128, 128}, {1, 4, 20, 24, 60, 192}};
    for (size_t i = 0; i < sizeof two / sizeof two[0]; ++i) {
        check_post(&two[i], ES_RESIZE_LOGITS, 0, (unsigned)i, 1.0f);
        check_post(&two[i], ES_RESIZE_LABELS, 0, (unsigned)i, 1.0f);
    }
    for (size_t i = 0; i < sizeof many / sizeof many[0]; ++i) {
        check_post(&many[i], ES_RESIZE_LOGITS, 0, 10u + (unsigned)i, 1.0f);
        check_post(&many[i], ES_RESIZE_LABELS, 0, 10u + (unsigned)i, 1.0f);
    }
    check_post(&two[0], ES_RESIZE_LOGITS, 1, 20u, 1.0f);
    check_post(&many[0], ES_RESIZE_LABELS, 1, 21u, 1.0f);
    /* |logits| up to 2^127: logit1 - logit0 overflows float32, every pixel is decided in double. */
    const float big = 1.0633824e37f; /* 2^123 */
    check_post(&two[0], ES_RESIZE_LOGITS, 0, 30u, big);
    check_post(&many[0], ES_RESIZE_LOGITS, 0, 31u, big);
}

static void test_resize_labels(void) {
    /* By hand: 3 columns -> 2 take columns floor(0.75) = 0 and floor(2.25) = 2. */
    const uint8_t row[3] = {1, 2, 3};
    uint8_t two[2];
    CHECK(es_resize_labels(row, 1, 1, 3, two, 1, 2, 1) == ES_OK, "status");
    CHECK(two[0] == 1 && two[1] == 3, "%d %d", two[0], two[1]);
    static const ptrdiff_t shapes[][5] = {
        {3, 37, 41, 100, 13}, {1, 1, 1, 5, 7}, {2, 64, 64, 32, 32}, {1, 5, 7, 5, 7}, {2, 10, 3, 7, 11},
    };
    unsigned st = 7u;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; ++i) {
        const ptrdiff_t *s = shapes[i], nin = s[0] * s[1] * s[2], nout = s[0] * s[3] * s[4];
        uint8_t *src = malloc((size_t)nin), *want = malloc((size_t)nout), *got = malloc((size_t)nout);
        for (ptrdiff_t k = 0; k < nin; ++k) src[k] = (uint8_t)(test_rand(&st) % 7);
        oracle_resize_labels(src, s[0], s[1], s[2], s[3], s[4], want);
        for (int threads = 1; threads <= 4; threads += 3) {
            memset(got, 0xee, (size_t)nout);
            CHECK(es_resize_labels(src, s[0], s[1], s[2], got, s[3], s[4], threads) == ES_OK, "status");
            CHECK(differing(got, want, nout) == 0, "shape %zu, %d threads", i, threads);
        }
        free(src), free(want), free(got);
    }
    CHECK(es_resize_labels(row, 1, 1, 3, two, 0, 2, 1) == ES_EINVAL, "zero rows");
    CHECK(es_resize_labels(NULL, 1, 1, 3, two, 1, 2, 1) == ES_EINVAL, "NULL source");
}

/* The integer up-scaling path is taken where the oracle comparisons above expect it, and gives
 * every output of the table's own expression, w0 * in[first] + w1 * in[first + 1], bit for bit. */
static void test_integer_upscaling_rows(void) {
    static const struct { ptrdiff_t n_in; int want; } cases[] = {
        {128, 4}, {64, 8}, {2, 4}, {33, 3}, {50, 5}, {40, 6}, {24, 7}, {17, 8}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        const ptrdiff_t n_in = cases[c].n_in, n_out = n_in * cases[c].want;
        es_axis ax;
        CHECK(es_axis_init(&ax, n_in, n_out, ES_BILINEAR) == ES_OK, "axis %td -> %td", n_in, n_out);
        /* power-of-two factors have exact weights, so their interior is always periodic */
        if ((cases[c].want & (cases[c].want - 1)) == 0)
            CHECK(ax.upf == cases[c].want, "%td -> %td: upf %d", n_in, n_out, ax.upf);
        float *in = malloc(sizeof(float) * (size_t)n_in), *out = malloc(sizeof(float) * (size_t)n_out);
        for (ptrdiff_t i = 0; i < n_in; ++i) in[i] = (float)((i * 7919) % 1009) / 37.0f - 13.0f;
        es_resize_row(&ax, in, out);
        ptrdiff_t wrong = 0;
        for (ptrdiff_t j = 0; j < n_out; ++j) {
            const float want = ax.wf[2 * j] * in[ax.first[j]] + ax.wf[2 * j + 1] * in[ax.first[j] + 1];
            wrong += memcmp(&want, &out[j], sizeof want) != 0;
        }
        CHECK(wrong == 0, "%td -> %td (upf %d): %td outputs differ from the table", n_in, n_out, ax.upf, wrong);
        es_axis_free(&ax);
        free(in), free(out);
    }
}

void test_postprocess_all(void) {
    test_integer_upscaling_rows();
    test_two_class_by_hand();
    test_float16_logits();
    test_postprocess_against_oracle();
    test_resize_labels();
}
