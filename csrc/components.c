/* 8-connected components per foreground class and slice, filtered by per-class rules (largest
 * only, a minimum size): run-length labelling with union-find.
 *
 * Each row is cut into runs of one class; a run is joined with the runs of the same class in
 * the row above that touch it 8-connectedly (column ranges overlapping when widened by one).
 * Work is proportional to the pixels scanned plus the number of runs, not to the foreground
 * pixels, so a clean organ mask costs little more than reading the slice once.
 *
 * Runs are numbered in raster order and unions keep the smaller root, so every component's
 * root is its first run, whose first pixel is the component's first pixel in raster order.
 * scipy.ndimage.label numbers components in that same order, which makes "equal sizes keep the
 * lowest scipy label" the same as "equal sizes keep the lowest root" here. */
#include <stdlib.h>
#include <string.h>

#include "es_internal.h"

void es_lcc_slice(uint8_t *lab, ptrdiff_t rows, ptrdiff_t cols, int num_classes,
                  const es_component_rule *rules, int32_t *work) {
    const ptrdiff_t npix = rows * cols;
    int32_t *start = work;             /* first pixel (flat index) of each run */
    int32_t *len = work + npix;        /* pixels in each run */
    int32_t *parent = work + 2 * npix; /* union-find forest over runs */
    int32_t *count = work + 3 * npix;  /* pixels per root */
    int32_t *best = work + 4 * npix;   /* kept root per class (256 entries) */
    int32_t next = 0, prev_begin = 0, prev_end = 0;
    for (ptrdiff_t y = 0; y < rows; ++y) {
        const uint8_t *row = lab + y * cols;
        const int32_t row_begin = next;
        int32_t k = prev_begin; /* runs above before k end left of every run still to come */
        ptrdiff_t x = 0;
        while (x < cols) {
            x = es_skip_equal(row, x, cols, 0);
            if (x >= cols) break;
            const int c = row[x];
            if (c >= num_classes || !(rules[c].keep_largest || rules[c].min_size > 1)) {
                ++x;
                continue;
            }
            const ptrdiff_t x0 = x;
            x = es_skip_equal(row, x + 1, cols, (uint8_t)c);
            const int32_t r = next++;
            start[r] = (int32_t)(y * cols + x0);
            len[r] = (int32_t)(x - x0);
            parent[r] = r;
            /* Runs above touching columns [x0 - 1, x]: skip those ending before x0 - 1. */
            const ptrdiff_t above = (y - 1) * cols;
            while (k < prev_end && start[k] - above + len[k] < x0) ++k;
            for (int32_t j = k; j < prev_end && start[j] - above <= x; ++j)
                if (lab[start[j]] == c) es_unite(parent, j, r);
        }
        prev_begin = row_begin;
        prev_end = next;
    }
    int sized = 0; /* some class removes small components */
    for (int c = 1; c < num_classes; ++c) sized |= rules[c].min_size > 1;
    if (next == 0 || (next < 2 && !sized)) return; /* at most one run in the whole slice */
    memset(count, 0, (size_t)next * sizeof(int32_t));
    for (int32_t r = 0; r < next; ++r) count[es_find_root(parent, r)] += len[r];
    for (int c = 0; c < 256; ++c) best[c] = -1;
    for (int32_t r = 0; r < next; ++r) { /* roots in raster order; strict > keeps the first */
        if (parent[r] != r) continue;
        const int c = lab[start[r]];
        if (best[c] < 0 || count[r] > count[best[c]]) best[c] = r;
    }
    for (int32_t r = 0; r < next; ++r) {
        const int32_t root = es_find_root(parent, r);
        const es_component_rule *rule = &rules[lab[start[r]]];
        const int keep = (!rule->keep_largest || root == best[lab[start[r]]]) &&
                         (int64_t)count[root] >= rule->min_size;
        if (!keep) memset(lab + start[r], rule->removed_to, (size_t)len[r]);
    }
}

typedef struct {
    uint8_t *labels;
    ptrdiff_t rows, cols;
    int num_classes;
    const es_component_rule *rules;
} lcc_plan;

static void *lcc_work_alloc(const void *ctx) {
    const lcc_plan *p = (const lcc_plan *)ctx;
    return malloc((size_t)(4 * p->rows * p->cols + 256) * sizeof(int32_t));
}

/* A component can span the whole slice, so a slice is never cut: the job's bands are slices. */
static int lcc_run(const void *ctx, void *work, const es_band *b) {
    const lcc_plan *p = (const lcc_plan *)ctx;
    es_lcc_slice(p->labels + b->slice * p->rows * p->cols, p->rows, p->cols, p->num_classes,
                 p->rules, (int32_t *)work);
    return ES_OK;
}

int es_filter_components(uint8_t *labels, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                         int num_classes, const es_component_rule *rules, int num_threads) {
    if (!labels || !rules || count < 0 || rows < 1 || cols < 1 || num_classes < 0 ||
        num_classes > 256)
        return ES_EINVAL;
    if (rows * cols > INT32_MAX / 2) return ES_EINVAL;
    for (int c = 1; c < num_classes; ++c)
        if (rules[c].removed_to < 0 || rules[c].removed_to > 255) return ES_EINVAL;
    if (count == 0 || num_classes < 2) return ES_OK;
    lcc_plan p;
    p.labels = labels;
    p.rows = rows;
    p.cols = cols;
    p.num_classes = num_classes;
    p.rules = rules;
    es_band_job job;
    job.count = count;
    job.rows = rows;
    job.work = rows * cols;
    job.band_work = 0;
    job.ctx = &p;
    job.thread_init = lcc_work_alloc;
    job.thread_free = free;
    job.run = lcc_run;
    return es_run_bands(&job, num_threads);
}

int es_largest_component(uint8_t *labels, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                         int num_classes, int num_threads) {
    es_component_rule rules[256];
    for (int c = 0; c < 256; ++c) {
        rules[c].keep_largest = 1;
        rules[c].min_size = 0;
        rules[c].removed_to = 0;
    }
    return es_filter_components(labels, count, rows, cols, num_classes, rules, num_threads);
}
