/* Brute-force references for the C test, written from the semantics in edgeseg_kernels.h (the
 * numpy oracle's definitions), pixel by pixel and without the kernels' tables or fast paths. */
#ifndef ES_TEST_ORACLE_H
#define ES_TEST_ORACLE_H

#include <stddef.h>
#include <stdint.h>

/* Source index of output j for nearest resize, floor((j + 0.5) * n_in / n_out) in integers. */
ptrdiff_t oracle_nearest(ptrdiff_t j, ptrdiff_t n_in, ptrdiff_t n_out);

/* Labels of (count, classes, rows, cols) float logits at (out_rows, out_cols): bilinear in
 * double (vertical, then horizontal), rounded to float32, argmax with ties to the lowest class. */
void oracle_logits_labels(const float *logits, ptrdiff_t count, ptrdiff_t classes, ptrdiff_t rows,
                          ptrdiff_t cols, ptrdiff_t out_rows, ptrdiff_t out_cols, uint8_t *out);

/* Label mode: float32 argmax at (rows, cols), then nearest resize. */
void oracle_argmax_nearest(const float *logits, ptrdiff_t count, ptrdiff_t classes,
                           ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t out_rows,
                           ptrdiff_t out_cols, uint8_t *out);

/* Nearest resize of (count, rows, cols) labels. */
void oracle_resize_labels(const uint8_t *src, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                          ptrdiff_t out_rows, ptrdiff_t out_cols, uint8_t *out);

/* In place: classes 1..classes-1 keep their largest 8-connected component per slice (flood fill;
 * equal sizes keep the one found first in raster order). Returns 0 if out of memory. */
int oracle_largest_component(uint8_t *labels, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                             int classes);

/* scale * bilinear(clip(v, low, high)) + offset of one int16 slice, in double. */
void oracle_preprocess_bilinear(const int16_t *img, ptrdiff_t rows, ptrdiff_t cols, double low,
                                double high, double scale, double offset, ptrdiff_t out_rows,
                                ptrdiff_t out_cols, double *out);

/* fit=pad box of a rows x cols slice in out_rows x out_cols, by search: the limiting side is the
 * one whose scale out/in is smaller; the other side is the k minimising |k - exact| (halves up).
 * Returns 0 (box untouched) when the exact short side is under 1 px. */
int oracle_fit_box(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t out_rows, ptrdiff_t out_cols,
                   ptrdiff_t box[4]);

/* fit=pad pre-processing of one int16 slice into (out_rows, out_cols) doubles: the margin holds
 * scale * low + offset, the box oracle_preprocess_bilinear. Returns 0 for a refused shape. */
int oracle_preprocess_pad(const int16_t *img, ptrdiff_t rows, ptrdiff_t cols, double low,
                          double high, double scale, double offset, ptrdiff_t out_rows,
                          ptrdiff_t out_cols, double *out);

/* Copy the box (rows, cols, top, left) of (count, classes, in_rows, in_cols) logits into
 * contiguous (count, classes, box rows, box cols). */
void oracle_crop_logits(const float *logits, ptrdiff_t count, ptrdiff_t classes, ptrdiff_t in_rows,
                        ptrdiff_t in_cols, const ptrdiff_t box[4], float *out);

/* IEEE binary16 bits of v, which must be exactly representable (zero, subnormal or normal). */
uint16_t oracle_half_bits(double v);

/* Logits of `classes` classes, multiples of 1/64 in [-16, 16] (exact in float16): class 0 holds
 * a plateau, every other class a few round blobs above it and clear background elsewhere, with
 * noise and a square where all classes tie exactly. `seed` varies the blobs. */
void make_blob_logits(float *logits, ptrdiff_t count, ptrdiff_t classes, ptrdiff_t rows,
                      ptrdiff_t cols, unsigned seed);

/* A deterministic pseudo-random stream (LCG), for test data only. */
unsigned test_rand(unsigned *state);

#endif
