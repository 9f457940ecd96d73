/* Label mode (argmax at the model's size, then nearest resize of the labels) and
 * es_resize_labels: both pick source pixels by es_nearest_index, the oracle's pixel-centre floor. */
#include <stdlib.h>

#include "es_postprocess.h"

/* Source column of every output column. */
static ptrdiff_t *nearest_table(ptrdiff_t n_in, ptrdiff_t n_out) {
    ptrdiff_t *t = (ptrdiff_t *)malloc((size_t)n_out * sizeof(ptrdiff_t));
    if (t)
        for (ptrdiff_t x = 0; x < n_out; ++x) t[x] = es_nearest_index(x, n_in, n_out);
    return t;
}

int es_post_labels_plan(post_plan *p) {
    p->near_x = nearest_table(p->cols, p->out_cols);
    return p->near_x ? ES_OK : ES_ENOMEM;
}

/* Argmax of source row r of slice n into `out` (cols), float32 compare, ties to the lowest. */
ES_WIDE static void argmax_row(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t r,
                               uint8_t *ES_RESTRICT out) {
    float *ES_RESTRICT best = w->best;
    int32_t *ES_RESTRICT idx = w->idx;
    for (ptrdiff_t k = 0; k < p->classes; ++k) {
        const float *ES_RESTRICT v = es_logit_row(p, w->conv, n, k, r);
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

/* Consecutive output rows that read the same source row reuse its argmax. */
void es_post_labels_band(const post_plan *p, post_work *w, ptrdiff_t n, ptrdiff_t y0,
                         ptrdiff_t y1, uint8_t *plane) {
    const ptrdiff_t oc = p->out_cols;
    const ptrdiff_t *ES_RESTRICT near_x = p->near_x;
    ptrdiff_t held = -1; /* source row whose argmax is in row_labels */
    for (ptrdiff_t y = y0; y < y1; ++y) {
        uint8_t *ES_RESTRICT out = plane + y * oc;
        const ptrdiff_t r = es_nearest_index(y, p->rows, p->out_rows);
        if (r != held) {
            argmax_row(p, w, n, r, w->row_labels);
            held = r;
        }
        for (ptrdiff_t x = 0; x < oc; ++x) out[x] = w->row_labels[near_x[x]];
    }
}

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    ptrdiff_t rows, cols, out_rows, out_cols;
    ptrdiff_t *near_x;
} resize_plan;

static int resize_band(const void *ctx, void *scratch, const es_band *b) {
    const resize_plan *p = (const resize_plan *)ctx;
    const ptrdiff_t *ES_RESTRICT near_x = p->near_x;
    const ptrdiff_t oc = p->out_cols;
    (void)scratch;
    for (ptrdiff_t y = b->y0; y < b->y1; ++y) {
        const ptrdiff_t r = es_nearest_index(y, p->rows, p->out_rows);
        const uint8_t *ES_RESTRICT s = p->src + (b->slice * p->rows + r) * p->cols;
        uint8_t *ES_RESTRICT d = p->dst + (b->slice * p->out_rows + y) * oc;
        for (ptrdiff_t x = 0; x < oc; ++x) d[x] = s[near_x[x]];
    }
    return ES_OK;
}

int es_resize_labels(const uint8_t *src, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                     uint8_t *dst, ptrdiff_t out_rows, ptrdiff_t out_cols, int num_threads) {
    if (!src || !dst || count < 0 || rows < 1 || cols < 1 || out_rows < 1 || out_cols < 1)
        return ES_EINVAL;
    resize_plan p;
    p.src = src;
    p.dst = dst;
    p.rows = rows;
    p.cols = cols;
    p.out_rows = out_rows;
    p.out_cols = out_cols;
    p.near_x = nearest_table(cols, out_cols);
    if (!p.near_x) return ES_ENOMEM;
    es_band_job job;
    job.count = count;
    job.rows = out_rows;
    job.work = 2 * out_rows * out_cols; /* one read and one write per output pixel */
    job.band_work = 1; /* a slice is always cut across idle threads, as this kernel always did */
    job.ctx = &p;
    job.thread_init = NULL;
    job.thread_free = NULL;
    job.run = resize_band;
    const int rc = es_run_bands(&job, num_threads);
    free(p.near_x);
    return rc;
}
