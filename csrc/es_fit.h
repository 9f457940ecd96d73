/* Private to the fit files (fit.c, unpad.c) and preprocess.c: pre-processing into a box of a
 * larger plane. Not installed, not part of the API. */
#ifndef ES_FIT_H
#define ES_FIT_H

#include "es_internal.h"

/* es_preprocess with box->out_rows x box->out_cols written at (top, left) of contiguous
 * (count, 1, dst_rows, dst_cols) planes; the pixels outside the box are left untouched. */
int es_preprocess_box(const es_slices *src, const es_preprocess_spec *box, void *dst,
                      ptrdiff_t dst_rows, ptrdiff_t dst_cols, ptrdiff_t top, ptrdiff_t left,
                      int num_threads);

/* Copy the box of contiguous (count, classes, rows, cols) logits of `elem` bytes each into
 * contiguous (count, classes, box->rows, box->cols) `dst`. */
void es_unpad_logits(const void *logits, size_t elem, ptrdiff_t count, ptrdiff_t classes,
                     ptrdiff_t rows, ptrdiff_t cols, const es_fit_box *box, void *dst);

#endif
