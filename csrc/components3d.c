/* 6-connected components per foreground class over a whole label volume, filtered by per-class
 * rules (largest only, a minimum size in voxels): run-length labelling with union-find over runs.
 *
 * A run is a maximal stretch of one class along a row. Two runs of the same class are
 * 6-connected when their column ranges overlap and they lie in neighbouring rows of one slice or
 * in the same row of neighbouring slices. The volume is scanned in four passes:
 *   1. count the runs of every row (slices in parallel), so every buffer is sized exactly;
 *   2. record each slice's runs and join those of neighbouring rows (slices in parallel: a
 *      slice's unions touch only its own runs);
 *   3. join each slice's runs with the slice before (serial, one pass over the runs);
 *   4. size every component, pick what each class keeps, and clear the rest (slices in
 *      parallel).
 * Runs are numbered in raster order (slice, row, column) and unions keep the smaller root, so a
 * component's root is its first run and "equal sizes keep the lowest root" is scipy's "lowest
 * label": the result does not depend on the thread count. */
#include <stdlib.h>

#include "es_internal.h"

typedef struct {
    uint8_t *labels;
    ptrdiff_t depth, rows, cols;
    int num_classes;
    const es_component_rule *rules;
    uint8_t active[256]; /* classes whose rule removes anything */
    int64_t *row_first;  /* depth * rows + 1: index of each row's first run */
    int32_t *x0, *len, *parent;
    uint8_t *cls;
    uint8_t *keep; /* per root: 1 if the component stays */
} vol_plan;

/* The next run of an active class in `row` at or after column *end: its first column goes to
 * *start, the column after it to *end. Returns 0 when the row holds no more. */
static int next_run(const vol_plan *p, const uint8_t *row, ptrdiff_t *start, ptrdiff_t *end) {
    ptrdiff_t x = *end;
    while (x < p->cols) {
        const ptrdiff_t x0 = es_skip_equal(row, x, p->cols, 0);
        if (x0 >= p->cols) break;
        x = es_skip_equal(row, x0 + 1, p->cols, row[x0]);
        if (p->active[row[x0]]) {
            *start = x0;
            *end = x;
            return 1;
        }
    }
    *end = p->cols;
    return 0;
}

static int count_runs(const void *ctx, void *scratch, const es_band *b) {
    const vol_plan *p = (const vol_plan *)ctx;
    (void)scratch;
    for (ptrdiff_t y = 0; y < p->rows; ++y) {
        const uint8_t *row = p->labels + (b->slice * p->rows + y) * p->cols;
        int64_t n = 0;
        ptrdiff_t x0 = 0, x1 = 0;
        while (next_run(p, row, &x0, &x1)) ++n;
        p->row_first[b->slice * p->rows + y + 1] = n;
    }
    return ES_OK;
}

/* Joins runs [a0, a1) with runs [b0, b1) of an adjacent row where classes match and column
 * ranges overlap; both lists are sorted by column, so one merge-like sweep finds every pair. */
static void join_rows(const vol_plan *p, int32_t a0, int32_t a1, int32_t b0, int32_t b1) {
    int32_t j = b0;
    for (int32_t i = a0; i < a1; ++i) {
        const int32_t s = p->x0[i], e = s + p->len[i];
        while (j < b1 && p->x0[j] + p->len[j] <= s) ++j;
        for (int32_t k = j; k < b1 && p->x0[k] < e; ++k)
            if (p->cls[k] == p->cls[i]) es_unite(p->parent, k, i);
    }
}

static int record_runs(const void *ctx, void *scratch, const es_band *b) {
    const vol_plan *p = (const vol_plan *)ctx;
    (void)scratch;
    for (ptrdiff_t y = 0; y < p->rows; ++y) {
        const ptrdiff_t r = b->slice * p->rows + y;
        const uint8_t *row = p->labels + r * p->cols;
        int32_t n = (int32_t)p->row_first[r];
        ptrdiff_t x0 = 0, x1 = 0;
        while (next_run(p, row, &x0, &x1)) {
            p->x0[n] = (int32_t)x0;
            p->len[n] = (int32_t)(x1 - x0);
            p->cls[n] = row[x0];
            p->parent[n] = n;
            ++n;
        }
        if (y > 0)
            join_rows(p, (int32_t)p->row_first[r], n, (int32_t)p->row_first[r - 1],
                      (int32_t)p->row_first[r]);
    }
    return ES_OK;
}

static int clear_dropped(const void *ctx, void *scratch, const es_band *b) {
    const vol_plan *p = (const vol_plan *)ctx;
    (void)scratch;
    for (ptrdiff_t y = 0; y < p->rows; ++y) {
        const ptrdiff_t r = b->slice * p->rows + y;
        uint8_t *row = p->labels + r * p->cols;
        for (int64_t k = p->row_first[r]; k < p->row_first[r + 1]; ++k)
            if (!p->keep[p->parent[k]]) memset(row + p->x0[k], p->rules[p->cls[k]].removed_to, (size_t)p->len[k]);
    }
    return ES_OK;
}

static int run_slices(vol_plan *p, int (*run)(const void *, void *, const es_band *), int nt) {
    es_band_job job;
    job.count = p->depth;
    job.rows = p->rows;
    job.work = p->rows * p->cols;
    job.band_work = 0; /* one band per slice: a slice's runs are one thread's */
    job.ctx = p;
    job.thread_init = NULL;
    job.thread_free = NULL;
    job.run = run;
    return es_run_bands(&job, nt);
}

/* Pass 4's serial part: flatten the forest, size the components and mark what stays. */
static int choose_kept(vol_plan *p, int32_t nruns) {
    int64_t *size = (int64_t *)calloc((size_t)nruns, sizeof(int64_t));
    if (!size) return ES_ENOMEM;
    /* Every parent index is below its child's, so one ascending pass leaves roots only. */
    for (int32_t r = 0; r < nruns; ++r) {
        p->parent[r] = p->parent[p->parent[r]];
        size[p->parent[r]] += p->len[r];
    }
    int32_t best[256];
    for (int c = 0; c < 256; ++c) best[c] = -1;
    for (int32_t r = 0; r < nruns; ++r) { /* roots in raster order; strict > keeps the first */
        if (p->parent[r] != r) continue;
        const int c = p->cls[r];
        if (best[c] < 0 || size[r] > size[best[c]]) best[c] = r;
    }
    for (int32_t r = 0; r < nruns; ++r) {
        if (p->parent[r] != r) continue;
        const es_component_rule *rule = &p->rules[p->cls[r]];
        p->keep[r] = (uint8_t)((!rule->keep_largest || best[p->cls[r]] == r) &&
                               size[r] >= rule->min_size);
    }
    free(size);
    return ES_OK;
}

static void plan_free(vol_plan *p) {
    free(p->row_first);
    free(p->x0);
    free(p->len);
    free(p->parent);
    free(p->cls);
    free(p->keep);
}

static int filter_volume(vol_plan *p, int num_threads) {
    const ptrdiff_t nrows = p->depth * p->rows;
    p->row_first = (int64_t *)calloc((size_t)nrows + 1, sizeof(int64_t));
    if (!p->row_first) return ES_ENOMEM;
    int rc = run_slices(p, count_runs, num_threads);
    if (rc != ES_OK) return rc;
    for (ptrdiff_t r = 0; r < nrows; ++r) p->row_first[r + 1] += p->row_first[r];
    const int64_t total = p->row_first[nrows];
    if (total == 0) return ES_OK;
    const int32_t nruns = (int32_t)total; /* voxels <= INT32_MAX bounds the run count */
    p->x0 = (int32_t *)malloc((size_t)nruns * sizeof(int32_t));
    p->len = (int32_t *)malloc((size_t)nruns * sizeof(int32_t));
    p->parent = (int32_t *)malloc((size_t)nruns * sizeof(int32_t));
    p->cls = (uint8_t *)malloc((size_t)nruns);
    p->keep = (uint8_t *)calloc((size_t)nruns, 1);
    if (!p->x0 || !p->len || !p->parent || !p->cls || !p->keep) return ES_ENOMEM;
    rc = run_slices(p, record_runs, num_threads);
    if (rc != ES_OK) return rc;
    for (ptrdiff_t z = 1; z < p->depth; ++z)
        for (ptrdiff_t y = 0; y < p->rows; ++y) {
            const ptrdiff_t r = z * p->rows + y, q = r - p->rows;
            join_rows(p, (int32_t)p->row_first[r], (int32_t)p->row_first[r + 1],
                      (int32_t)p->row_first[q], (int32_t)p->row_first[q + 1]);
        }
    rc = choose_kept(p, nruns);
    if (rc != ES_OK) return rc;
    return run_slices(p, clear_dropped, num_threads);
}

int es_filter_components_3d(uint8_t *labels, ptrdiff_t depth, ptrdiff_t rows, ptrdiff_t cols,
                            int num_classes, const es_component_rule *rules, int num_threads) {
    if (!labels || !rules || depth < 0 || rows < 1 || cols < 1 || num_classes < 0 ||
        num_classes > 256)
        return ES_EINVAL;
    if (depth > 0 && rows * cols > INT32_MAX / depth) return ES_EINVAL;
    for (int c = 1; c < num_classes; ++c)
        if (rules[c].removed_to < 0 || rules[c].removed_to > 255) return ES_EINVAL;
    vol_plan p;
    memset(&p, 0, sizeof p);
    int any = 0;
    for (int c = 1; c < num_classes; ++c) {
        p.active[c] = (uint8_t)(rules[c].keep_largest || rules[c].min_size > 1);
        any |= p.active[c];
    }
    if (depth == 0 || !any) return ES_OK;
    p.labels = labels;
    p.depth = depth;
    p.rows = rows;
    p.cols = cols;
    p.num_classes = num_classes;
    p.rules = rules;
    const int rc = filter_volume(&p, num_threads);
    plan_free(&p);
    return rc;
}
