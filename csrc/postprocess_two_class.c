/* Post-processing of two-class logits (the usual organ model), logits mode.
 *
 * Interpolation is linear, so resizing d = logit1 - logit0 once and taking its sign gives the
 * argmax with half the work. Bilinear weights are >= 0 and sum to 1, so an output pixel whose
 * source pixels all have d < -T interpolates to below -T too: for T a few times the rounding
 * bound, it is background without being computed. Each output row interpolates only the span of
 * columns that read a source pixel with d >= -T (the organ and its rim) and fills the rest with
 * 0; pixels whose d is within the rounding bound of 0 are recomputed in the oracle's order. */
#include <stdlib.h>

#include "es_postprocess.h"

/* The ring holds resized d rows of two source rows. */
static const float *ring_get_diff(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r,
                                  float *maxabs) {
    const ptrdiff_t slot = r & 1, nc = p->cols;
    float *dst = w->ring + slot * p->out_cols;
    if (w->ring_row[slot] != r) {
        const float *ES_RESTRICT l0 = es_logit_row(p, w->conv, n, 0, r);
        const float *ES_RESTRICT l1 = es_logit_row(p, w->conv + nc, n, 1, r);
        float *ES_RESTRICT d = w->conv + 2 * nc;
        const float m0 = es_max_abs(l0, nc), m1 = es_max_abs(l1, nc), m = m0 > m1 ? m0 : m1;
        for (ptrdiff_t x = 0; x < nc; ++x) d[x] = l1[x] - l0[x];
        es_resize_row(&p->rx, d, dst);
        w->ring_row[slot] = r;
        w->ring_max[slot] = m;
    }
    if (w->ring_max[slot] > *maxabs) *maxabs = w->ring_max[slot];
    return dst;
}

/* One output row without skipping: the path for logits so large that float32 sums overflow. */
ES_WIDE static void two_class_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y,
                                  uint8_t *ES_RESTRICT out) {
    const es_axis *ry = &p->ry;
    const ptrdiff_t oc = p->out_cols, r0 = ry->first[y], r1 = ry->taps == 2 ? r0 + 1 : r0;
    const float w0 = ry->taps == 2 ? ry->wf[2 * y] : 1.0f;
    const float w1 = ry->taps == 2 ? ry->wf[2 * y + 1] : 0.0f;
    float m = 0.0f;
    const float *ES_RESTRICT a = ring_get_diff(p, w, n, r0, &m);
    const float *ES_RESTRICT b = ring_get_diff(p, w, n, r1, &m);
    /* Rounding of d and of both resize passes stays below ~2^-20 * m (see postprocess.c). */
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
        if (m > 1e30f || (d <= tol && d >= -tol)) out[x] = es_post_exact_label(p, n, y, x);
    }
}

/* d = logit1 - logit0 of source row r into its drow slot (unless it is there already), with the
 * first and last columns where d >= -T ("not clearly background"); lo > hi when there is none. */
ES_WIDE static void diff_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r, float T) {
    const ptrdiff_t slot = r & 1, nc = p->cols;
    if (w->drow_r[slot] == r) return;
    const float *ES_RESTRICT l0 = es_logit_row(p, w->conv, n, 0, r);
    const float *ES_RESTRICT l1 = es_logit_row(p, w->conv + nc, n, 1, r);
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

/* T is four times the rounding bound of two_class_row for every row pair of the band, so the
 * oracle also puts class 0 first where every source pixel has d < -T; inside the span the
 * arithmetic and the tie check are those of two_class_row. */
ES_WIDE void es_post_two_class_band(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y0,
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
            if (d <= tol && d >= -tol) out[x] = es_post_exact_label(p, n, y, x);
        }
    }
}

int es_post_two_class_plan(post_plan *p) {
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
