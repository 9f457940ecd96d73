/* Post-processing with a fit: take the slice's box back out of the model's logits, then run the
 * ordinary post-processing (logits or labels resize, two-class path, float16) on that box. */
#include <stdlib.h>

#include "es_fit.h"

void es_unpad_logits(const void *logits, size_t elem, ptrdiff_t count, ptrdiff_t classes,
                     ptrdiff_t rows, ptrdiff_t cols, const es_fit_box *box, void *dst) {
    const char *src = (const char *)logits;
    char *out = (char *)dst;
    const size_t row_bytes = (size_t)box->cols * elem;
    for (ptrdiff_t plane = 0; plane < count * classes; ++plane) {
        const char *first = src + ((plane * rows + box->top) * cols + box->left) * (ptrdiff_t)elem;
        for (ptrdiff_t y = 0; y < box->rows; ++y) {
            memcpy(out, first + y * cols * (ptrdiff_t)elem, row_bytes);
            out += row_bytes;
        }
    }
}

int es_postprocess_fit(const void *logits, es_dtype dtype, ptrdiff_t count, ptrdiff_t classes,
                       ptrdiff_t rows, ptrdiff_t cols, uint8_t *labels, ptrdiff_t out_rows,
                       ptrdiff_t out_cols, es_resize_mode mode, es_fit fit, int keep_largest,
                       int num_threads) {
    es_fit_box box;
    if (!logits || !labels || count < 0 || classes < 1 || classes > 256) return ES_EINVAL;
    if (dtype != ES_FLOAT32 && dtype != ES_FLOAT16) return ES_EINVAL;
    int rc = es_fit_geometry(out_rows, out_cols, rows, cols, fit, &box);
    if (rc != ES_OK) return rc;
    if (box.rows == rows && box.cols == cols)  /* stretch, or a pad box that fills the model */
        return es_postprocess(logits, dtype, count, classes, rows, cols, labels, out_rows,
                              out_cols, mode, keep_largest, num_threads);
    if (count == 0) return ES_OK;
    const size_t elem = dtype == ES_FLOAT32 ? 4 : 2;
    void *crop = malloc((size_t)(count * classes * box.rows * box.cols) * elem);
    if (!crop) return ES_ENOMEM;
    es_unpad_logits(logits, elem, count, classes, rows, cols, &box, crop);
    rc = es_postprocess(crop, dtype, count, classes, box.rows, box.cols, labels, out_rows,
                        out_cols, mode, keep_largest, num_threads);
    free(crop);
    return rc;
}
