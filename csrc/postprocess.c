/* Post-processing: class logits -> uint8 labels at the source size, optionally keeping only the
 * largest component of every class.
 *
 * Bilinear logits: the oracle resizes in double and rounds to float32 before the argmax, so a
 * float32 kernel could pick a different class where two classes (nearly) tie. The kernel runs in
 * float32 and tracks the gap between the best and second-best class; wherever the gap is within
 * a bound of the float32 rounding error it recomputes that pixel in double in the oracle's order
 * (vertical, then horizontal, rounded to float32). Ties are rare, so the labels match the oracle
 * exactly at float32 speed. */
#include <math.h>
#include <stdlib.h>

#include "es_internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef struct {
    const void *logits;
    es_dtype dtype;
    ptrdiff_t classes, rows, cols, out_rows, out_cols;
    es_axis ry, rx;      /* logits mode */
    ptrdiff_t *near_x;   /* labels mode: source column of each output column */
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
static const float *logit_row(const post_plan *p, float *conv, ptrdiff_t n, ptrdiff_t k,
                              ptrdiff_t r) {
    const ptrdiff_t off = ((n * p->classes + k) * p->rows + r) * p->cols;
    if (p->dtype == ES_FLOAT32) return (const float *)p->logits + off;
    const uint16_t *ES_RESTRICT h = (const uint16_t *)p->logits + off;
    for (ptrdiff_t x = 0; x < p->cols; ++x) conv[x] = es_h2f(h[x]);
    return conv;
}

static float logit_at(const post_plan *p, ptrdiff_t n, ptrdiff_t k, ptrdiff_t r, ptrdiff_t x) {
    const ptrdiff_t off = ((n * p->classes + k) * p->rows + r) * p->cols + x;
    if (p->dtype == ES_FLOAT32) return ((const float *)p->logits)[off];
    return es_h2f(((const uint16_t *)p->logits)[off]);
}

/* Largest |x[i]|. Compilers keep a float max reduction serial (its NaN and signed-zero rules),
 * one element per max latency, which made this the slowest step of post-processing; SSE2 max
 * over four independent accumulators removes the chain. NaN is the caller's concern: callers
 * reject non-finite logits separately. */
static float max_abs(const float *ES_RESTRICT x, ptrdiff_t n) {
    float m = 0.0f;
    ptrdiff_t i = 0;
#if defined(__SSE2__)
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
#endif
    for (; i < n; ++i) {
        const float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

/* 1 if any logit of slice n in source rows [r0, r1) is NaN or inf; *maxabs gets the largest
 * |logit| there. */
ES_WIDE static int rows_scan(const post_plan *p, ptrdiff_t n, ptrdiff_t r0, ptrdiff_t r1, float *maxabs) {
    int bad = 0;
    float m = 0.0f;
    for (ptrdiff_t k = 0; k < p->classes; ++k) {
        const ptrdiff_t off = ((n * p->classes + k) * p->rows + r0) * p->cols;
        const ptrdiff_t len = (r1 - r0) * p->cols;
        if (p->dtype == ES_FLOAT32) {
            const uint32_t *ES_RESTRICT u = (const uint32_t *)p->logits + off;
            for (ptrdiff_t i = 0; i < len; ++i) bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
            const float a = max_abs((const float *)p->logits + off, len);
            m = a > m ? a : m;
        } else {
            const uint16_t *ES_RESTRICT u = (const uint16_t *)p->logits + off;
            int16_t h = 0; /* |half| bits are below 0x8000 and grow with |value| */
            for (ptrdiff_t i = 0; i < len; ++i) {
                bad |= (u[i] & 0x7c00u) == 0x7c00u;
                const int16_t b = (int16_t)(u[i] & 0x7fffu);
                h = b > h ? b : h;
            }
            const float a = es_h2f((uint16_t)h);
            m = a > m ? a : m;
        }
    }
    *maxabs = m;
    return bad;
}

/* The oracle's label for output pixel (y, x): double, vertical then horizontal, float32 argmax. */
static uint8_t exact_label(const post_plan *p, ptrdiff_t n, ptrdiff_t y, ptrdiff_t x) {
    const es_axis *ry = &p->ry, *rx = &p->rx;
    const ptrdiff_t r0 = ry->first[y], c0 = rx->first[x];
    float best = 0.0f;
    int arg = 0;
    for (ptrdiff_t k = 0; k < p->classes; ++k) {
        double d = 0.0;
        for (int tx = 0; tx < rx->taps; ++tx) {
            double v = 0.0;
            for (int ty = 0; ty < ry->taps; ++ty)
                v += ry->wd[y * ry->taps + ty] * (double)logit_at(p, n, k, r0 + ty, c0 + tx);
            d += rx->wd[x * rx->taps + tx] * v;
        }
        const float f = (float)d;
        if (k == 0 || f > best) {
            best = f;
            arg = (int)k;
        }
    }
    return (uint8_t)arg;
}

static const float *ring_get(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t k,
                             ptrdiff_t r, float *maxabs) {
    const ptrdiff_t slot = 2 * k + (r & 1);
    float *dst = w->ring + slot * p->out_cols;
    if (w->ring_row[slot] != r) {
        const float *src = logit_row(p, w->conv, n, k, r);
        const float m = max_abs(src, p->cols);
        es_resize_row(&p->rx, src, dst);
        w->ring_row[slot] = r;
        w->ring_max[slot] = m;
    }
    if (w->ring_max[slot] > *maxabs) *maxabs = w->ring_max[slot];
    return dst;
}

/* Two classes: interpolation is linear, so resizing d = logit1 - logit0 once and taking its sign
 * gives the argmax with half the work. The ring holds resized d rows. */
static const float *ring_get_diff(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r,
                                  float *maxabs) {
    const ptrdiff_t slot = r & 1, nc = p->cols;
    float *dst = w->ring + slot * p->out_cols;
    if (w->ring_row[slot] != r) {
        const float *ES_RESTRICT l0 = logit_row(p, w->conv, n, 0, r);
        const float *ES_RESTRICT l1 = logit_row(p, w->conv + nc, n, 1, r);
        float *ES_RESTRICT d = w->conv + 2 * nc;
        const float m0 = max_abs(l0, nc), m1 = max_abs(l1, nc), m = m0 > m1 ? m0 : m1;
        for (ptrdiff_t x = 0; x < nc; ++x) d[x] = l1[x] - l0[x];
        es_resize_row(&p->rx, d, dst);
        w->ring_row[slot] = r;
        w->ring_max[slot] = m;
    }
    if (w->ring_max[slot] > *maxabs) *maxabs = w->ring_max[slot];
    return dst;
}

ES_WIDE static void two_class_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y,
                          uint8_t *ES_RESTRICT out) {
    const es_axis *ry = &p->ry;
    const ptrdiff_t oc = p->out_cols, r0 = ry->first[y], r1 = ry->taps == 2 ? r0 + 1 : r0;
    const float w0 = ry->taps == 2 ? ry->wf[2 * y] : 1.0f;
    const float w1 = ry->taps == 2 ? ry->wf[2 * y + 1] : 0.0f;
    float m = 0.0f;
    const float *ES_RESTRICT a = ring_get_diff(p, w, n, r0, &m);
    const float *ES_RESTRICT b = ring_get_diff(p, w, n, r1, &m);
    /* Rounding of d and of both resize passes stays below ~2^-20 * m; see logits_row. */
    const float tol = m * 1.9073486e-06f + 1e-37f;
    int near = 0;
    if (m > 1e30f) near = 1;
    for (ptrdiff_t x = 0; x < oc; ++x) {
        const float d = w0 * a[x] + w1 * b[x];
        out[x] = (uint8_t)(d > 0.0f);
        near |= (d <= tol) & (d >= -tol);
    }
    if (!near) return;
    for (ptrdiff_t x = 0; x < oc; ++x) {
        const float d = w0 * a[x] + w1 * b[x];
        if (m > 1e30f || (d <= tol && d >= -tol)) out[x] = exact_label(p, n, y, x);
    }
}

/* d = logit1 - logit0 of source row r into its drow slot (unless it is there already), with the
 * first and last columns where d >= -T ("not clearly background"); lo > hi when there is none. */
ES_WIDE static void diff_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r, float T) {
    const ptrdiff_t slot = r & 1, nc = p->cols;
    if (w->drow_r[slot] == r) return;
    const float *ES_RESTRICT l0 = logit_row(p, w->conv, n, 0, r);
    const float *ES_RESTRICT l1 = logit_row(p, w->conv + nc, n, 1, r);
    float *ES_RESTRICT d = w->drow + slot * nc;
    int any = 0;
    for (ptrdiff_t x = 0; x < nc; ++x) {
        d[x] = l1[x] - l0[x];
        any |= d[x] >= -T;
    }
    ptrdiff_t lo = any ? 0 : nc, hi = nc - 1;
    while (lo < nc && d[lo] < -T) ++lo;
    while (hi > lo && d[hi] < -T) --hi;
    w->drow_r[slot] = r;
    w->lo[slot] = lo;
    w->hi[slot] = lo < nc ? hi : -1;
}

/* The drow of source row r (diff_row must have filled it) resized to the output width, kept
 * in a ring slot so that each source row is resized once per band. */
static const float *resized_diff(const post_plan *p, post_work *w, ptrdiff_t r) {
    const ptrdiff_t slot = r & 1;
    float *dst = w->ring + slot * p->out_cols;
    if (w->ring_row[slot] != r) {
        es_resize_row(&p->rx, w->drow + slot * p->cols, dst);
        w->ring_row[slot] = r;
    }
    return dst;
}

/* Output rows [y0, y1) of slice n, two classes, skipping what is clearly background.
 *
 * Bilinear weights are >= 0 and sum to 1, so an output pixel whose source pixels all have
 * d = logit1 - logit0 < -T interpolates to below -T too. T is four times the rounding bound of
 * two_class_row for every row pair of the band, so the oracle also puts class 0 first there and
 * the pixel is 0 without being computed. Each output row interpolates only the span of columns
 * that read a source pixel with d >= -T (the organ and its rim) and memsets the rest; inside the
 * span the arithmetic and the tie check are those of two_class_row. */
ES_WIDE static void two_class_band(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y0,
                           ptrdiff_t y1, float big, uint8_t *plane) {
    const es_axis *ry = &p->ry;
    const ptrdiff_t oc = p->out_cols;
    if (!(big <= 1e30f)) { /* float32 sums could overflow: the row-by-row path decides in double */
        for (ptrdiff_t y = y0; y < y1; ++y) two_class_row(p, w, n, y, plane + y * oc);
        return;
    }
    /* The band's largest |logit| bounds every row pair's: two_class_row's tie tolerance, and
     * four times it as the margin of "clearly background". */
    const float tol = big * 1.9073486e-06f + 1e-37f, T = 4.0f * tol;
    w->drow_r[0] = w->drow_r[1] = -1;
    for (ptrdiff_t y = y0; y < y1; ++y) {
        uint8_t *ES_RESTRICT out = plane + y * oc;
        const ptrdiff_t r0 = ry->first[y], r1 = ry->taps == 2 ? r0 + 1 : r0;
        const float w0 = ry->taps == 2 ? ry->wf[2 * y] : 1.0f;
        const float w1 = ry->taps == 2 ? ry->wf[2 * y + 1] : 0.0f;
        diff_row(p, w, n, r0, T);
        diff_row(p, w, n, r1, T);
        const ptrdiff_t s0 = r0 & 1, s1 = r1 & 1;
        const ptrdiff_t lo = w->lo[s0] < w->lo[s1] ? w->lo[s0] : w->lo[s1];
        const ptrdiff_t hi = w->hi[s0] > w->hi[s1] ? w->hi[s0] : w->hi[s1];
        if (lo > hi) {
            memset(out, 0, (size_t)oc);
            continue;
        }
        const ptrdiff_t x0 = p->x_from[lo], x1 = p->x_to[hi]; /* inclusive; x0 > x1: none */
        if (x0 > 0) memset(out, 0, (size_t)(x0 < oc ? x0 : oc));
        if (x1 < oc - 1) memset(out + x1 + 1, 0, (size_t)(oc - 1 - x1));
        const float *ES_RESTRICT a = resized_diff(p, w, r0);
        const float *ES_RESTRICT b = resized_diff(p, w, r1);
        int near = 0;
        for (ptrdiff_t x = x0; x <= x1; ++x) {
            const float d = w0 * a[x] + w1 * b[x];
            out[x] = (uint8_t)(d > 0.0f);
            near |= (d <= tol) & (d >= -tol);
        }
        if (!near) continue;
        for (ptrdiff_t x = x0; x <= x1; ++x) {
            const float d = w0 * a[x] + w1 * b[x];
            if (d <= tol && d >= -tol) out[x] = exact_label(p, n, y, x);
        }
    }
}

/* One output row of labels from bilinearly resized logits. */
ES_WIDE static void logits_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y,
                       uint8_t *ES_RESTRICT out) {
    const es_axis *ry = &p->ry;
    const ptrdiff_t oc = p->out_cols, r0 = ry->first[y], r1 = ry->taps == 2 ? r0 + 1 : r0;
    const float w0 = ry->taps == 2 ? ry->wf[2 * y] : 1.0f;
    const float w1 = ry->taps == 2 ? ry->wf[2 * y + 1] : 0.0f;
    float *ES_RESTRICT best = w->best, *ES_RESTRICT second = w->second;
    int32_t *ES_RESTRICT idx = w->idx;
    float m = 0.0f;
    for (ptrdiff_t k = 0; k < p->classes; ++k) {
        const float *ES_RESTRICT a = ring_get(p, w, n, k, r0, &m);
        const float *ES_RESTRICT b = ring_get(p, w, n, k, r1, &m);
        if (k == 0) {
            for (ptrdiff_t x = 0; x < oc; ++x) {
                best[x] = w0 * a[x] + w1 * b[x];
                second[x] = -HUGE_VALF;
                idx[x] = 0;
            }
            continue;
        }
        const int32_t kk = (int32_t)k;
        for (ptrdiff_t x = 0; x < oc; ++x) {
            /* Branch-free top-two update (vectorises): second = max(min(g, best), second). */
            const float g = w0 * a[x] + w1 * b[x];
            const float bx = best[x], sx = second[x];
            const int32_t gt = -(int32_t)(g > bx); /* an int mask: GCC if-converts this form */
            const float lo = g < bx ? g : bx;
            second[x] = lo > sx ? lo : sx;
            best[x] = g > bx ? g : bx;
            idx[x] = (idx[x] & ~gt) | (kk & gt);
        }
    }
    if (m > 1e30f) { /* float32 sums could overflow: let double decide every pixel */
        for (ptrdiff_t x = 0; x < oc; ++x) out[x] = exact_label(p, n, y, x);
        return;
    }
    /* |float32 result - exact| <= ~6 * 2^-24 * m, the oracle's rounding to float32 adds one ulp:
     * a gap above 2^-19 * m means both put the same class first. */
    const float tol = m * 1.9073486e-06f + 1e-37f;
    int near = 0;
    for (ptrdiff_t x = 0; x < oc; ++x) {
        out[x] = (uint8_t)idx[x];
        near |= best[x] - second[x] <= tol;
    }
    if (!near) return;
    for (ptrdiff_t x = 0; x < oc; ++x)
        if (best[x] - second[x] <= tol) out[x] = exact_label(p, n, y, x);
}

/* Argmax of source row r of slice n into `out` (cols), float32 compare, ties to the lowest. */
ES_WIDE static void argmax_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r,
                       uint8_t *ES_RESTRICT out) {
    float *ES_RESTRICT best = w->best;
    int32_t *ES_RESTRICT idx = w->idx;
    for (ptrdiff_t k = 0; k < p->classes; ++k) {
        const float *ES_RESTRICT v = logit_row(p, w->conv, n, k, r);
        const int32_t kk = (int32_t)k;
        if (k == 0) {
            for (ptrdiff_t x = 0; x < p->cols; ++x) {
                best[x] = v[x];
                idx[x] = 0;
            }
            continue;
        }
        for (ptrdiff_t x = 0; x < p->cols; ++x) {
            const int32_t gt = -(int32_t)(v[x] > best[x]);
            best[x] = v[x] > best[x] ? v[x] : best[x];
            idx[x] = (idx[x] & ~gt) | (kk & gt);
        }
    }
    for (ptrdiff_t x = 0; x < p->cols; ++x) out[x] = (uint8_t)idx[x];
}

static void process_band(const post_plan *p, post_work *w, es_resize_mode mode, ptrdiff_t n,
                         ptrdiff_t y0, ptrdiff_t y1, float big, uint8_t *labels) {
    const ptrdiff_t oc = p->out_cols;
    const ptrdiff_t *ES_RESTRICT near_x = p->near_x;
    uint8_t *plane = labels + n * p->out_rows * oc;
    ptrdiff_t held = -1; /* labels mode: source row whose argmax is in row_labels */
    for (ptrdiff_t k = 0; k < 2 * p->classes; ++k) w->ring_row[k] = -1;
    if (mode == ES_RESIZE_LOGITS && p->classes == 2) {
        two_class_band(p, w, n, y0, y1, big, plane);
        return;
    }
    for (ptrdiff_t y = y0; y < y1; ++y) {
        uint8_t *ES_RESTRICT out = plane + y * oc;
        if (p->classes == 1) {
            memset(out, 0, (size_t)oc);
        } else if (mode == ES_RESIZE_LOGITS) {
            logits_row(p, w, n, y, out);
        } else {
            const ptrdiff_t r = es_nearest_index(y, p->rows, p->out_rows);
            if (r != held) {
                argmax_row(p, w, n, r, w->row_labels);
                held = r;
            }
            for (ptrdiff_t x = 0; x < oc; ++x) out[x] = w->row_labels[near_x[x]];
        }
    }
}

static int work_alloc(const post_plan *p, post_work *w) {
    const ptrdiff_t wide = p->cols > p->out_cols ? p->cols : p->out_cols;
    w->conv = (float *)malloc((size_t)(3 * p->cols) * sizeof(float));
    w->ring = (float *)malloc((size_t)(2 * p->classes * p->out_cols) * sizeof(float));
    w->ring_row = (ptrdiff_t *)malloc((size_t)(2 * p->classes) * sizeof(ptrdiff_t));
    w->ring_max = (float *)malloc((size_t)(2 * p->classes) * sizeof(float));
    w->best = (float *)malloc((size_t)wide * sizeof(float));
    w->second = (float *)malloc((size_t)wide * sizeof(float));
    w->idx = (int32_t *)malloc((size_t)wide * sizeof(int32_t));
    w->row_labels = (uint8_t *)malloc((size_t)p->cols);
    w->drow = (float *)malloc((size_t)(2 * p->cols) * sizeof(float));
    return w->conv && w->ring && w->ring_row && w->ring_max && w->best && w->second && w->idx &&
           w->row_labels && w->drow;
}

static void work_free(post_work *w) {
    free(w->conv);
    free(w->ring);
    free(w->ring_row);
    free(w->ring_max);
    free(w->best);
    free(w->second);
    free(w->idx);
    free(w->row_labels);
    free(w->drow);
}

static int plan_init(post_plan *p, es_resize_mode mode) {
    p->ry.first = p->rx.first = NULL;
    p->ry.wf = p->rx.wf = NULL;
    p->ry.wd = p->rx.wd = NULL;
    p->near_x = p->x_from = p->x_to = NULL;
    if (mode == ES_RESIZE_LOGITS) {
        int rc = es_axis_init(&p->ry, p->rows, p->out_rows, ES_BILINEAR);
        if (rc == ES_OK) rc = es_axis_init(&p->rx, p->cols, p->out_cols, ES_BILINEAR);
        if (rc != ES_OK) return rc;
        /* Output columns that read source column c: first[x] is non-decreasing in x. */
        p->x_from = (ptrdiff_t *)malloc((size_t)p->cols * sizeof(ptrdiff_t));
        p->x_to = (ptrdiff_t *)malloc((size_t)p->cols * sizeof(ptrdiff_t));
        if (!p->x_from || !p->x_to) return ES_ENOMEM;
        const int32_t *first = p->rx.first;
        const ptrdiff_t last_tap = p->rx.taps - 1;
        ptrdiff_t x = 0;
        for (ptrdiff_t c = 0; c < p->cols; ++c) {
            while (x < p->out_cols && first[x] + last_tap < c) ++x;
            p->x_from[c] = x;
        }
        x = p->out_cols - 1;
        for (ptrdiff_t c = p->cols - 1; c >= 0; --c) {
            while (x >= 0 && first[x] > c) --x;
            p->x_to[c] = x;
        }
        return ES_OK;
    }
    p->near_x = (ptrdiff_t *)malloc((size_t)p->out_cols * sizeof(ptrdiff_t));
    if (!p->near_x) return ES_ENOMEM;
    for (ptrdiff_t x = 0; x < p->out_cols; ++x)
        p->near_x[x] = es_nearest_index(x, p->cols, p->out_cols);
    return ES_OK;
}

static void plan_free(post_plan *p) {
    es_axis_free(&p->ry);
    es_axis_free(&p->rx);
    free(p->near_x);
    free(p->x_from);
    free(p->x_to);
}

/* Resize (and argmax) every slice; then, if asked, filter components slice by slice. */
static int run_bands(post_plan *p, es_resize_mode mode, ptrdiff_t count, uint8_t *labels,
                     int num_threads) {
    const int nt0 = es_threads_for(num_threads, count * p->out_rows);
    const ptrdiff_t bands = es_bands_per_slice(
        count, p->out_rows, p->classes * p->rows * p->cols + p->out_rows * p->out_cols, nt0);
    const ptrdiff_t items = count * bands;
    const int nt = es_threads_for(nt0, items);
    int err = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : err)
#endif
    {
        post_work w;
        const int ok = work_alloc(p, &w);
        if (!ok) err |= 1 << ES_ENOMEM;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (ptrdiff_t it = 0; it < items; ++it) {
            const ptrdiff_t n = it / bands, b = it % bands;
            if (!ok) continue;
            const ptrdiff_t y0 = b * p->out_rows / bands, y1 = (b + 1) * p->out_rows / bands;
            /* Check this band's share of the rows, and every row its outputs read. */
            ptrdiff_t r0 = b * p->rows / bands, r1 = (b + 1) * p->rows / bands;
            if (mode == ES_RESIZE_LOGITS) {
                const ptrdiff_t first = p->ry.first[y0], last = p->ry.first[y1 - 1] + p->ry.taps;
                r0 = first < r0 ? first : r0;
                r1 = last > r1 ? last : r1;
            }
            float big;
            if (rows_scan(p, n, r0, r1, &big)) {
                err |= 1 << ES_ENONFINITE;
                continue;
            }
            process_band(p, &w, mode, n, y0, y1, big, labels);
        }
        work_free(&w);
    }
    (void)nt;
    if (err & (1 << ES_ENOMEM)) return ES_ENOMEM;
    if (err & (1 << ES_ENONFINITE)) return ES_ENONFINITE;
    return ES_OK;
}

int es_postprocess(const void *logits, es_dtype dtype, ptrdiff_t count, ptrdiff_t classes,
                   ptrdiff_t rows, ptrdiff_t cols, uint8_t *labels, ptrdiff_t out_rows,
                   ptrdiff_t out_cols, es_resize_mode mode, int keep_largest, int num_threads) {
    if (!logits || !labels || count < 0 || classes < 1 || classes > 256 || rows < 1 || cols < 1 ||
        out_rows < 1 || out_cols < 1)
        return ES_EINVAL;
    if (dtype != ES_FLOAT32 && dtype != ES_FLOAT16) return ES_EINVAL;
    if (mode != ES_RESIZE_LOGITS && mode != ES_RESIZE_LABELS) return ES_EINVAL;
    if (count == 0) return ES_OK;
    post_plan p;
    p.logits = logits;
    p.dtype = dtype;
    p.classes = classes;
    p.rows = rows;
    p.cols = cols;
    p.out_rows = out_rows;
    p.out_cols = out_cols;
    int rc = plan_init(&p, mode);
    if (rc == ES_OK) rc = run_bands(&p, mode, count, labels, num_threads);
    plan_free(&p);
    if (rc == ES_OK && keep_largest)
        rc = es_largest_component(labels, count, out_rows, out_cols, (int)classes, num_threads);
    return rc;
}

int es_resize_labels(const uint8_t *src, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                     uint8_t *dst, ptrdiff_t out_rows, ptrdiff_t out_cols, int num_threads) {
    if (!src || !dst || count < 0 || rows < 1 || cols < 1 || out_rows < 1 || out_cols < 1)
        return ES_EINVAL;
    ptrdiff_t *near_x = (ptrdiff_t *)malloc((size_t)out_cols * sizeof(ptrdiff_t));
    if (!near_x) return ES_ENOMEM;
    for (ptrdiff_t x = 0; x < out_cols; ++x) near_x[x] = es_nearest_index(x, cols, out_cols);
    const ptrdiff_t items = count * out_rows;
    const int nt = es_threads_for(num_threads, items);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
    for (ptrdiff_t it = 0; it < items; ++it) {
        const ptrdiff_t n = it / out_rows, y = it % out_rows;
        const uint8_t *ES_RESTRICT s = src + (n * rows + es_nearest_index(y, rows, out_rows)) * cols;
        uint8_t *ES_RESTRICT d = dst + it * out_cols;
        for (ptrdiff_t x = 0; x < out_cols; ++x) d[x] = s[near_x[x]];
    }
    (void)nt;
    free(near_x);
    return ES_OK;
}
