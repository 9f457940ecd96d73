/* PreprocessSpec.fit: the geometry of the aspect-preserving box and pre-processing into it.
 * The numpy oracle (edgeseg/kernels/reference.py) and PreprocessSpec.fit_box define the same
 * box independently; the tests compare all three. */
#include "es_fit.h"

/* Sizes beyond this are no image; it keeps the products below in range. */
#define FIT_MAX_SIDE ((ptrdiff_t)1 << 28)

int es_fit_geometry(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t out_rows, ptrdiff_t out_cols,
                    es_fit fit, es_fit_box *box) {
    if (!box || rows < 1 || cols < 1 || out_rows < 1 || out_cols < 1) return ES_EINVAL;
    if (rows > FIT_MAX_SIDE || cols > FIT_MAX_SIDE || out_rows > FIT_MAX_SIDE ||
        out_cols > FIT_MAX_SIDE)
        return ES_EINVAL;
    if (fit == ES_FIT_STRETCH) {
        box->rows = out_rows;
        box->cols = out_cols;
        box->top = box->left = 0;
        return ES_OK;
    }
    if (fit != ES_FIT_PAD) return ES_EINVAL;
    /* Exact scaled length of the non-limiting side: num / den pixels. */
    const int rows_limit = (int64_t)rows * out_cols >= (int64_t)cols * out_rows;
    const int64_t num = rows_limit ? (int64_t)cols * out_rows : (int64_t)rows * out_cols;
    const int64_t den = rows_limit ? rows : cols;
    if (num < den) return ES_EINVAL;
    const ptrdiff_t other = (ptrdiff_t)((2 * num + den) / (2 * den)); /* nearest, halves up */
    box->rows = rows_limit ? out_rows : other;
    box->cols = rows_limit ? other : out_cols;
    box->top = (out_rows - box->rows) / 2;
    box->left = (out_cols - box->cols) / 2;
    return ES_OK;
}

/* Every pixel of the (count, rows, cols) planes outside `box` gets `value`. */
static void fill_margins(void *dst, es_dtype dtype, ptrdiff_t count, ptrdiff_t rows,
                         ptrdiff_t cols, const es_fit_box *box, float value) {
    const uint16_t half = es_f2h(value);
    for (ptrdiff_t n = 0; n < count; ++n) {
        for (ptrdiff_t y = 0; y < rows; ++y) {
            const int inside = y >= box->top && y < box->top + box->rows;
            const ptrdiff_t base = (n * rows + y) * cols;
            for (ptrdiff_t x = 0; x < cols; ++x) {
                if (inside && x == box->left) x += box->cols;
                if (x >= cols) break;
                if (dtype == ES_FLOAT32)
                    ((float *)dst)[base + x] = value;
                else
                    ((uint16_t *)dst)[base + x] = half;
            }
        }
    }
}

int es_preprocess_fit(const es_slices *src, const es_preprocess_spec *spec, es_fit fit,
                      void *dst, int num_threads) {
    if (!src || !spec || !dst) return ES_EINVAL;
    if (fit == ES_FIT_STRETCH) return es_preprocess(src, spec, dst, num_threads);
    es_fit_box box;
    int rc = es_fit_geometry(src->rows, src->cols, spec->out_rows, spec->out_cols, fit, &box);
    if (rc != ES_OK) return rc;
    if (spec->out_dtype != ES_FLOAT32 && spec->out_dtype != ES_FLOAT16) return ES_EINVAL;
    es_preprocess_spec inner = *spec;
    inner.out_rows = box.rows;
    inner.out_cols = box.cols;
    rc = es_preprocess_box(src, &inner, dst, spec->out_rows, spec->out_cols, box.top, box.left,
                           num_threads);
    if (rc != ES_OK && rc != ES_ENONFINITE) return rc;
    /* The same float expression as the kernel's clipped-low value: 0 * a + c. */
    const float pad = (float)(spec->offset + spec->scale * spec->window_low);
    fill_margins(dst, spec->out_dtype, src->count, spec->out_rows, spec->out_cols, &box, pad);
    return rc;
}
