/* Largest 8-connected component per foreground class: one raster scan with union-find.
 *
 * Provisional labels are handed out in raster order and unions always keep the smaller root, so
 * every component's root is the label of its first pixel in raster order. scipy.ndimage.label
 * numbers components in that same order, which makes "equal sizes keep the lowest scipy label"
 * the same as "equal sizes keep the lowest root" here. */
#include <stdlib.h>

#include "es_internal.h"

static int32_t find_root(int32_t *parent, int32_t x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]]; /* path halving */
        x = parent[x];
    }
    return x;
}

static int32_t unite(int32_t *parent, int32_t a, int32_t b) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a < b) {
        parent[b] = a;
        return a;
    }
    parent[a] = b;
    return b;
}

void es_lcc_slice(uint8_t *lab, ptrdiff_t rows, ptrdiff_t cols, int num_classes, int32_t *work) {
    const ptrdiff_t npix = rows * cols;
    int32_t *cc = work;                /* provisional label per pixel, -1 for ignored pixels */
    int32_t *parent = work + npix;     /* union-find forest over provisional labels */
    int32_t *count = work + 2 * npix;  /* pixels per root */
    int32_t *cls = work + 3 * npix;    /* class of each provisional label */
    int32_t *best = work + 4 * npix;   /* kept root per class (256 entries) */
    int32_t next = 0;
    for (ptrdiff_t y = 0; y < rows; ++y) {
        const uint8_t *row = lab + y * cols, *up = row - cols;
        int32_t *crow = cc + y * cols, *cup = crow - cols;
        for (ptrdiff_t x = 0; x < cols; ++x) {
            const int c = row[x];
            int32_t l = -1;
            crow[x] = -1;
            if (c == 0 || c >= num_classes) continue;
            /* Already scanned 8-neighbours: west, north-west, north, north-east. */
            if (x > 0 && row[x - 1] == c) l = crow[x - 1];
            if (y > 0) {
                if (x > 0 && up[x - 1] == c) l = l < 0 ? cup[x - 1] : unite(parent, l, cup[x - 1]);
                if (up[x] == c) l = l < 0 ? cup[x] : unite(parent, l, cup[x]);
                if (x + 1 < cols && up[x + 1] == c)
                    l = l < 0 ? cup[x + 1] : unite(parent, l, cup[x + 1]);
            }
            if (l < 0) {
                l = next++;
                parent[l] = l;
                cls[l] = c;
            }
            crow[x] = l;
        }
    }
    if (next < 2) return; /* at most one component in the whole slice */
    for (int32_t l = 0; l < next; ++l) count[l] = 0;
    for (ptrdiff_t p = 0; p < npix; ++p) {
        if (cc[p] < 0) continue;
        cc[p] = find_root(parent, cc[p]);
        count[cc[p]]++;
    }
    for (int c = 0; c < 256; ++c) best[c] = -1;
    for (int32_t l = 0; l < next; ++l) { /* roots in raster order; strict > keeps the first */
        if (parent[l] != l) continue;
        const int c = cls[l];
        if (best[c] < 0 || count[l] > count[best[c]]) best[c] = l;
    }
    for (ptrdiff_t p = 0; p < npix; ++p)
        if (cc[p] >= 0 && cc[p] != best[lab[p]]) lab[p] = 0;
}

int es_largest_component(uint8_t *labels, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                         int num_classes, int num_threads) {
    if (!labels || count < 0 || rows < 1 || cols < 1 || num_classes < 0 || num_classes > 256)
        return ES_EINVAL;
    if (rows * cols > INT32_MAX / 2) return ES_EINVAL;
    if (count == 0 || num_classes < 2) return ES_OK;
    const int nt = es_threads_for(num_threads, count);
    int err = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : err)
#endif
    {
        int32_t *work = (int32_t *)malloc((size_t)(4 * rows * cols + 256) * sizeof(int32_t));
        if (!work) err = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (ptrdiff_t n = 0; n < count; ++n)
            if (work) es_lcc_slice(labels + n * rows * cols, rows, cols, num_classes, work);
        free(work);
    }
    (void)nt;
    return err ? ES_ENOMEM : ES_OK;
}
