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

typedef struct {
    const void *logits;
    es_dtype dtype;
    ptrdiff_t classes, rows, cols, out_rows, out_cols;
    es_axis ry, rx;      /* logits mode */
    ptrdiff_t *near_x;   /* labels mode: source column of each output column */
} post_plan;

typedef struct {
    float *conv;         /* source rows as float (3 * cols: two classes and their difference) */
    float *ring;         /* classes * 2 horizontally resized rows (out_cols each) */
    ptrdiff_t *ring_row; /* source row held by each ring slot, -1 if none */
    uint32_t *ring_max;  /* max |bits| of the source row behind each slot */
    float *best, *second;
    int32_t *idx;
    uint8_t *row_labels; /* labels mode: argmax of one source row */
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

/* 1 if any logit of slice n in source rows [r0, r1) is NaN or inf. */
static int rows_nonfinite(const post_plan *p, ptrdiff_t n, ptrdiff_t r0, ptrdiff_t r1) {
    int bad = 0;
    for (ptrdiff_t k = 0; k < p->classes; ++k) {
        const ptrdiff_t off = ((n * p->classes + k) * p->rows + r0) * p->cols;
        const ptrdiff_t len = (r1 - r0) * p->cols;
        if (p->dtype == ES_FLOAT32) {
            const uint32_t *ES_RESTRICT u = (const uint32_t *)p->logits + off;
            for (ptrdiff_t i = 0; i < len; ++i) bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
        } else {
            const uint16_t *ES_RESTRICT u = (const uint16_t *)p->logits + off;
            for (ptrdiff_t i = 0; i < len; ++i) bad |= (u[i] & 0x7c00u) == 0x7c00u;
        }
    }
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
                             ptrdiff_t r, uint32_t *maxbits) {
    const ptrdiff_t slot = 2 * k + (r & 1);
    float *dst = w->ring + slot * p->out_cols;
    if (w->ring_row[slot] != r) {
        const float *src = logit_row(p, w->conv, n, k, r);
        uint32_t m = 0;
        for (ptrdiff_t x = 0; x < p->cols; ++x) {
            uint32_t b = es_f32_bits(src[x]) & 0x7fffffffu;
            m = b > m ? b : m;
        }
        es_resize_row(&p->rx, src, dst);
        w->ring_row[slot] = r;
        w->ring_max[slot] = m;
    }
    if (w->ring_max[slot] > *maxbits) *maxbits = w->ring_max[slot];
    return dst;
}

/* Two classes: interpolation is linear, so resizing d = logit1 - logit0 once and taking its sign
 * gives the argmax with half the work. The ring holds resized d rows. */
static const float *ring_get_diff(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r,
                                  uint32_t *maxbits) {
    const ptrdiff_t slot = r & 1, nc = p->cols;
    float *dst = w->ring + slot * p->out_cols;
    if (w->ring_row[slot] != r) {
        const float *ES_RESTRICT l0 = logit_row(p, w->conv, n, 0, r);
        const float *ES_RESTRICT l1 = logit_row(p, w->conv + nc, n, 1, r);
        float *ES_RESTRICT d = w->conv + 2 * nc;
        uint32_t m = 0;
        for (ptrdiff_t x = 0; x < nc; ++x) {
            const uint32_t b0 = es_f32_bits(l0[x]) & 0x7fffffffu, b1 = es_f32_bits(l1[x]) & 0x7fffffffu;
            const uint32_t b = b0 > b1 ? b0 : b1;
            m = b > m ? b : m;
            d[x] = l1[x] - l0[x];
        }
        es_resize_row(&p->rx, d, dst);
        w->ring_row[slot] = r;
        w->ring_max[slot] = m;
    }
    if (w->ring_max[slot] > *maxbits) *maxbits = w->ring_max[slot];
    return dst;
}

static void two_class_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y,
                          uint8_t *ES_RESTRICT out) {
    const es_axis *ry = &p->ry;
    const ptrdiff_t oc = p->out_cols, r0 = ry->first[y], r1 = ry->taps == 2 ? r0 + 1 : r0;
    const float w0 = ry->taps == 2 ? ry->wf[2 * y] : 1.0f;
    const float w1 = ry->taps == 2 ? ry->wf[2 * y + 1] : 0.0f;
    uint32_t maxbits = 0;
    const float *ES_RESTRICT a = ring_get_diff(p, w, n, r0, &maxbits);
    const float *ES_RESTRICT b = ring_get_diff(p, w, n, r1, &maxbits);
    const float m = es_bits_f32(maxbits);
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

/* One output row of labels from bilinearly resized logits. */
static void logits_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y,
                       uint8_t *ES_RESTRICT out) {
    const es_axis *ry = &p->ry;
    const ptrdiff_t oc = p->out_cols, r0 = ry->first[y], r1 = ry->taps == 2 ? r0 + 1 : r0;
    const float w0 = ry->taps == 2 ? ry->wf[2 * y] : 1.0f;
    const float w1 = ry->taps == 2 ? ry->wf[2 * y + 1] : 0.0f;
    float *ES_RESTRICT best = w->best, *ES_RESTRICT second = w->second;
    int32_t *ES_RESTRICT idx = w->idx;
    uint32_t maxbits = 0;
    for (ptrdiff_t k = 0; k < p->classes; ++k) {
        const float *ES_RESTRICT a = ring_get(p, w, n, k, r0, &maxbits);
        const float *ES_RESTRICT b = ring_get(p, w, n, k, r1, &maxbits);
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
    const float m = es_bits_f32(maxbits);
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
static void argmax_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r,
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
                         ptrdiff_t y0, ptrdiff_t y1, uint8_t *labels) {
    const ptrdiff_t oc = p->out_cols;
    const ptrdiff_t *ES_RESTRICT near_x = p->near_x;
    uint8_t *plane = labels + n * p->out_rows * oc;
    ptrdiff_t held = -1; /* labels mode: source row whose argmax is in row_labels */
    for (ptrdiff_t k = 0; k < 2 * p->classes; ++k) w->ring_row[k] = -1;
    for (ptrdiff_t y = y0; y < y1; ++y) {
        uint8_t *ES_RESTRICT out = plane + y * oc;
        if (p->classes == 1) {
            memset(out, 0, (size_t)oc);
        } else if (mode == ES_RESIZE_LOGITS && p->classes == 2) {
            two_class_row(p, w, n, y, out);
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
    w->ring_max = (uint32_t *)malloc((size_t)(2 * p->classes) * sizeof(uint32_t));
    w->best = (float *)malloc((size_t)wide * sizeof(float));
    w->second = (float *)malloc((size_t)wide * sizeof(float));
    w->idx = (int32_t *)malloc((size_t)wide * sizeof(int32_t));
    w->row_labels = (uint8_t *)malloc((size_t)p->cols);
    return w->conv && w->ring && w->ring_row && w->ring_max && w->best && w->second && w->idx &&
           w->row_labels;
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
}

static int plan_init(post_plan *p, es_resize_mode mode) {
    p->ry.first = p->rx.first = NULL;
    p->ry.wf = p->rx.wf = NULL;
    p->ry.wd = p->rx.wd = NULL;
    p->near_x = NULL;
    if (mode == ES_RESIZE_LOGITS) {
        int rc = es_axis_init(&p->ry, p->rows, p->out_rows, ES_BILINEAR);
        if (rc == ES_OK) rc = es_axis_init(&p->rx, p->cols, p->out_cols, ES_BILINEAR);
        return rc;
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
            if (rows_nonfinite(p, n, b * p->rows / bands, (b + 1) * p->rows / bands)) {
                err |= 1 << ES_ENONFINITE;
                continue;
            }
            process_band(p, &w, mode, n, b * p->out_rows / bands, (b + 1) * p->out_rows / bands,
                         labels);
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
