/* Private to the post-processing files: the plan of one es_postprocess call, per-thread scratch,
 * and the paths each file provides. postprocess.c drives the call and runs N-class logits;
 * postprocess_two_class.c the two-class fast path; postprocess_labels.c label mode and
 * es_resize_labels. */
#ifndef ES_POSTPROCESS_H
#define ES_POSTPROCESS_H

#include <math.h>

#include "es_internal.h"

#if ES_SSE2
#include <emmintrin.h>
#endif

typedef struct {
    const void *logits;
    es_dtype dtype;
    ptrdiff_t classes, rows, cols, out_rows, out_cols;
    es_resize_mode mode;
    uint8_t *labels;
    es_axis ry, rx;           /* logits mode */
    ptrdiff_t *near_x;        /* labels mode: source column of each output column */
    ptrdiff_t *x_from, *x_to; /* two classes: outputs x_from[c]..x_to[c] read source column c */
} post_plan;

typedef struct {
    float *conv;         /* source rows as float (3 * cols: two classes and their difference) */
    float *ring;         /* classes * 2 horizontally resized rows (out_cols each) */
    ptrdiff_t *ring_row; /* source row held by each ring slot, -1 if none */
    float *ring_max;     /* max |logit| of the source row behind each slot */
    float *best, *second;
    int32_t *idx;
    uint8_t *row_labels; /* labels mode: argmax of one source row */
    float *drow;         /* two classes: d = logit1 - logit0 of two source rows (2 * cols) */
    ptrdiff_t drow_r[2]; /* source row held by each drow slot, -1 if none */
    ptrdiff_t lo[2], hi[2]; /* first/last column of that row not clearly background */
} post_work;

/* Row r of class k of slice n as floats: a pointer into the logits, or `conv` for float16. */
static inline const float *es_logit_row(const post_plan *p, float *conv, ptrdiff_t n,
                                        ptrdiff_t k, ptrdiff_t r) {
    const ptrdiff_t off = ((n * p->classes + k) * p->rows + r) * p->cols;
    if (p->dtype == ES_FLOAT32) return (const float *)p->logits + off;
    const uint16_t *ES_RESTRICT h = (const uint16_t *)p->logits + off;
    for (ptrdiff_t x = 0; x < p->cols; ++x) conv[x] = es_h2f(h[x]);
    return conv;
}

/* Largest |x[i]|. Compilers keep a float max reduction serial (its NaN and signed-zero rules),
 * one element per max latency, which made this the slowest step of post-processing; SSE2 max
 * over four independent accumulators removes the chain. NaN is the caller's concern: callers
 * reject non-finite logits separately. */
static inline float es_max_abs(const float *ES_RESTRICT x, ptrdiff_t n) {
    float m = 0.0f;
    ptrdiff_t i = 0;
#if ES_SSE2
    const __m128 mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128 m0 = _mm_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm_max_ps(m0, _mm_and_ps(_mm_loadu_ps(x + i), mask));
        m1 = _mm_max_ps(m1, _mm_and_ps(_mm_loadu_ps(x + i + 4), mask));
        m2 = _mm_max_ps(m2, _mm_and_ps(_mm_loadu_ps(x + i + 8), mask));
        m3 = _mm_max_ps(m3, _mm_and_ps(_mm_loadu_ps(x + i + 12), mask));
    }
    float lanes[4];
    _mm_storeu_ps(lanes, _mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3)));
    for (int k = 0; k < 4; ++k) m = lanes[k] > m ? lanes[k] : m;
#else
    /* Elsewhere (aarch64, ES_NO_SIMD) eight independent maxima break the chain the same way,
     * and the compiler may vectorise them: the maximum is exact, so the order does not matter. */
    float m8[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) {
            const float a = fabsf(x[i + k]);
            m8[k] = a > m8[k] ? a : m8[k];
        }
    for (int k = 0; k < 8; ++k) m = m8[k] > m ? m8[k] : m;
#endif
    for (; i < n; ++i) {
        const float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

/* The oracle's label for output pixel (y, x) of slice n, logits mode (postprocess.c). */
uint8_t es_post_exact_label(const post_plan *p, ptrdiff_t n, ptrdiff_t y, ptrdiff_t x);

/* Two classes, logits mode (postprocess_two_class.c): the x_from/x_to tables, and output rows
 * [y0, y1) of slice n into `plane`, given the largest |logit| `big` those rows read. */
int es_post_two_class_plan(post_plan *p);
void es_post_two_class_band(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y0,
                            ptrdiff_t y1, float big, uint8_t *plane);

/* Label mode (postprocess_labels.c): the near_x table, and output rows [y0, y1) of slice n. */
int es_post_labels_plan(post_plan *p);
void es_post_labels_band(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y0,
                         ptrdiff_t y1, uint8_t *plane);

#endif
