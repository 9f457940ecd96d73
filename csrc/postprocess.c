/* Post-processing: class logits -> uint8 labels at the source size, optionally keeping only the
 * largest component of every class. This file plans the call, checks the logits, runs the bands
 * and resizes N-class logits; two classes take postprocess_two_class.c, label mode
 * postprocess_labels.c.
 *
 * Bilinear logits: the oracle resizes in double and rounds to float32 before the argmax, so a
 * float32 kernel could pick a different class where two classes (nearly) tie. The kernel runs in
 * float32 and tracks the gap between the best and second-best class; wherever the gap is within
 * a bound of the float32 rounding error it recomputes that pixel in double in the oracle's order
 * (vertical, then horizontal, rounded to float32). Ties are rare, so the labels match the oracle
 * exactly at float32 speed. */
#include <stdlib.h>

#include "es_postprocess.h"

static float logit_at(const post_plan *p, ptrdiff_t n, ptrdiff_t k, ptrdiff_t r, ptrdiff_t x) {
    const ptrdiff_t off = ((n * p->classes + k) * p->rows + r) * p->cols + x;
    if (p->dtype == ES_FLOAT32) return ((const float *)p->logits)[off];
    return es_h2f(((const uint16_t *)p->logits)[off]);
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
            const float a = es_max_abs((const float *)p->logits + off, len);
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

/* Double, vertical then horizontal, rounded to float32, then the argmax: the oracle's order. */
uint8_t es_post_exact_label(const post_plan *p, ptrdiff_t n, ptrdiff_t y, ptrdiff_t x) {
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
        const float *src = es_logit_row(p, w->conv, n, k, r);
        const float m = es_max_abs(src, p->cols);
        es_resize_row(&p->rx, src, dst);
        w->ring_row[slot] = r;
        w->ring_max[slot] = m;
    }
    if (w->ring_max[slot] > *maxabs) *maxabs = w->ring_max[slot];
    return dst;
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
        for (ptrdiff_t x = 0; x < oc; ++x) out[x] = es_post_exact_label(p, n, y, x);
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
        if (best[x] - second[x] <= tol) out[x] = es_post_exact_label(p, n, y, x);
}

static void process_band(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y0,
                         ptrdiff_t y1, float big) {
    const ptrdiff_t oc = p->out_cols;
    uint8_t *plane = p->labels + n * p->out_rows * oc;
    for (ptrdiff_t k = 0; k < 2 * p->classes; ++k) w->ring_row[k] = -1;
    if (p->classes == 1)
        memset(plane + y0 * oc, 0, (size_t)((y1 - y0) * oc));
    else if (p->mode == ES_RESIZE_LABELS)
        es_post_labels_band(p, w, n, y0, y1, plane);
    else if (p->classes == 2)
        es_post_two_class_band(p, w, n, y0, y1, big, plane);
    else
        for (ptrdiff_t y = y0; y < y1; ++y) logits_row(p, w, n, y, plane + y * oc);
}

/* Check this band's share of the source rows, and every row its outputs read, then run it. */
static int run_band(const void *ctx, void *scratch, const es_band *b) {
    const post_plan *p = (const post_plan *)ctx;
    ptrdiff_t r0 = b->index * p->rows / b->of, r1 = (b->index + 1) * p->rows / b->of;
    if (p->mode == ES_RESIZE_LOGITS) {
        const ptrdiff_t first = p->ry.first[b->y0], last = p->ry.first[b->y1 - 1] + p->ry.taps;
        r0 = first < r0 ? first : r0;
        r1 = last > r1 ? last : r1;
    }
    float big;
    if (rows_scan(p, b->slice, r0, r1, &big)) return ES_ENONFINITE;
    process_band(p, (post_work *)scratch, b->slice, b->y0, b->y1, big);
    return ES_OK;
}

static void work_free(void *scratch) {
    post_work *w = (post_work *)scratch;
    free(w->conv);
    free(w->ring);
    free(w->ring_row);
    free(w->ring_max);
    free(w->best);
    free(w->second);
    free(w->idx);
    free(w->row_labels);
    free(w->drow);
    free(w);
}

static void *work_alloc(const void *ctx) {
    const post_plan *p = (const post_plan *)ctx;
    post_work *w = (post_work *)calloc(1, sizeof(post_work));
    if (!w) return NULL;
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
    if (w->conv && w->ring && w->ring_row && w->ring_max && w->best && w->second && w->idx &&
        w->row_labels && w->drow)
        return w;
    work_free(w);
    return NULL;
}

static int plan_init(post_plan *p) {
    p->ry.first = p->rx.first = NULL;
    p->ry.wf = p->rx.wf = NULL;
    p->ry.wd = p->rx.wd = NULL;
    p->near_x = p->x_from = p->x_to = NULL;
    if (p->mode == ES_RESIZE_LABELS) return es_post_labels_plan(p);
    int rc = es_axis_init(&p->ry, p->rows, p->out_rows, ES_BILINEAR);
    if (rc == ES_OK) rc = es_axis_init(&p->rx, p->cols, p->out_cols, ES_BILINEAR);
    if (rc == ES_OK && p->classes == 2) rc = es_post_two_class_plan(p);
    return rc;
}

static void plan_free(post_plan *p) {
    es_axis_free(&p->ry);
    es_axis_free(&p->rx);
    free(p->near_x);
    free(p->x_from);
    free(p->x_to);
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
    p.mode = mode;
    p.labels = labels;
    int rc = plan_init(&p);
    if (rc == ES_OK) {
        es_band_job job;
        job.count = count;
        job.rows = out_rows;
        job.work = classes * rows * cols + out_rows * out_cols;
        job.band_work = ES_BAND_WORK;
        job.ctx = &p;
        job.thread_init = work_alloc;
        job.thread_free = work_free;
        job.run = run_band;
        rc = es_run_bands(&job, num_threads);
    }
    plan_free(&p);
    if (rc == ES_OK && keep_largest)
        rc = es_largest_component(labels, count, out_rows, out_cols, (int)classes, num_threads);
    return rc;
}
