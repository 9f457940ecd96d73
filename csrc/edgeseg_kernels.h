/* edgeseg C kernels: pre- and post-processing of CT slices. C99, no Python API.
 *
 * Semantics are defined by the numpy oracle edgeseg/kernels/reference.py:
 *  - resize uses pixel centres: output j of an axis n_in -> n_out samples the source at
 *    x = (j + 0.5) * n_in / n_out - 0.5; bilinear clamps x to [0, n_in - 1]
 *    (align_corners=False); area averages the exact source interval [j*s, (j+1)*s), s = n_in/n_out;
 *  - the HU window is applied before resizing; out = scale * clip(v, low, high) + offset;
 *  - argmax ties go to the lowest class; label maps resize by nearest at pixel centres,
 *    src = floor((j + 0.5) * n_in / n_out);
 *  - fit (PreprocessSpec.fit): ES_FIT_PAD resizes a rows x cols slice into the aspect-preserving
 *    box of es_fit_geometry, centred, and fills the rest with the model value of the window's
 *    low end; post-processing takes that box back out before resizing to the slice's shape;
 *  - largest component: 8-connected, per foreground class, per slice; equal sizes keep the
 *    component whose first pixel comes first in raster order. In 3-D (es_filter_components_3d)
 *    6-connected over the whole volume, raster order being (slice, row, column).
 *
 * All arrays are caller-owned. Strides are in elements (not bytes) and may be negative. Every
 * function returns ES_OK or an es_status code and never aborts. `num_threads` <= 0 means the
 * OpenMP default; builds without OpenMP ignore it and run serially.
 */
#ifndef EDGESEG_KERNELS_H
#define EDGESEG_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ES_OK = 0,
    ES_EINVAL = 1,     /* an argument is out of range (NULL pointer, size < 1, bad enum) */
    ES_ENOMEM = 2,     /* a work buffer could not be allocated */
    ES_ENONFINITE = 3  /* float input holds NaN or inf (HU or logits) */
} es_status;

typedef enum { ES_UINT8 = 0, ES_INT16 = 1, ES_UINT16 = 2, ES_FLOAT32 = 3, ES_FLOAT16 = 4 } es_dtype;

typedef enum { ES_BILINEAR = 0, ES_AREA = 1 } es_interp;

/* How post-processing brings class scores back to the source size. */
typedef enum {
    ES_RESIZE_LOGITS = 0, /* bilinear resize of every class's logits, then argmax */
    ES_RESIZE_LABELS = 1  /* argmax at the model's size, then nearest resize of the labels */
} es_resize_mode;

/* How a slice of another shape meets the model size (PreprocessSpec.fit). */
typedef enum { ES_FIT_STRETCH = 0, ES_FIT_PAD = 1 } es_fit;

/* Where a slice lands in the model input: `rows` x `cols` at (`top`, `left`). */
typedef struct {
    ptrdiff_t rows, cols, top, left;
} es_fit_box;

/* A stack of `count` 2-D slices of `rows` x `cols` elements of `dtype`. */
typedef struct {
    const void *data;
    es_dtype dtype;          /* ES_UINT8, ES_INT16, ES_UINT16 or ES_FLOAT32 */
    ptrdiff_t count, rows, cols;
    ptrdiff_t stride_slice, stride_row, stride_col; /* in elements */
} es_slices;

typedef struct {
    double window_low, window_high; /* HU window, low < high */
    double scale, offset;           /* model input = scale * clipped + offset */
    ptrdiff_t out_rows, out_cols;
    es_interp interp;
    es_dtype out_dtype;             /* ES_FLOAT32 or ES_FLOAT16 (IEEE binary16 bits) */
} es_preprocess_spec;

/* Window, resize and normalise `src` into `dst`, a contiguous (count, 1, out_rows, out_cols)
 * array of spec->out_dtype. NaN or inf in float input gives ES_ENONFINITE. */
int es_preprocess(const es_slices *src, const es_preprocess_spec *spec, void *dst,
                  int num_threads);

/* Contiguous (count, classes, rows, cols) logits of ES_FLOAT32 or ES_FLOAT16 -> contiguous
 * (count, out_rows, out_cols) uint8 labels. 1 <= classes <= 256. With keep_largest != 0 every
 * foreground class keeps only its largest component. NaN or inf logits give ES_ENONFINITE. */
int es_postprocess(const void *logits, es_dtype dtype, ptrdiff_t count, ptrdiff_t classes,
                   ptrdiff_t rows, ptrdiff_t cols, uint8_t *labels, ptrdiff_t out_rows,
                   ptrdiff_t out_cols, es_resize_mode mode, int keep_largest, int num_threads);

/* The box a rows x cols slice occupies in an out_rows x out_cols model input. Stretch: the whole
 * input. Pad: with s = min(out_rows / rows, out_cols / cols) the limiting side fills the model and
 * the other is round(other * s), halves up, computed in integers; top = (out_rows - box rows) / 2
 * and left = (out_cols - box cols) / 2, rounded down. ES_EINVAL when the exact scaled short side
 * is under 1 pixel (1 x 512 into 256 x 256) or a size is < 1. */
int es_fit_geometry(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t out_rows, ptrdiff_t out_cols,
                    es_fit fit, es_fit_box *box);

/* es_preprocess with a fit: ES_FIT_STRETCH is es_preprocess; ES_FIT_PAD resizes every slice
 * into its es_fit_geometry box of the (out_rows, out_cols) planes and fills the rest with
 * scale * window_low + offset (the model value of clipped air). */
int es_preprocess_fit(const es_slices *src, const es_preprocess_spec *spec, es_fit fit,
                      void *dst, int num_threads);

/* es_postprocess with a fit: (rows, cols) is the model size and (out_rows, out_cols) the
 * slice's. ES_FIT_PAD first takes the slice's es_fit_geometry box out of the logits (a work
 * copy of count * classes * box pixels), then resizes that box to the slice's shape. */
int es_postprocess_fit(const void *logits, es_dtype dtype, ptrdiff_t count, ptrdiff_t classes,
                       ptrdiff_t rows, ptrdiff_t cols, uint8_t *labels, ptrdiff_t out_rows,
                       ptrdiff_t out_cols, es_resize_mode mode, es_fit fit, int keep_largest,
                       int num_threads);

/* Nearest (pixel-centre) resize of contiguous (count, rows, cols) labels. */
int es_resize_labels(const uint8_t *src, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                     uint8_t *dst, ptrdiff_t out_rows, ptrdiff_t out_cols, int num_threads);

/* In place on contiguous (count, rows, cols) labels: classes 1..num_classes-1 keep only their
 * largest 8-connected component per slice; other pixels are left as they are. */
int es_largest_component(uint8_t *labels, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                         int num_classes, int num_threads);

/* What survives of one class's connected components. A component is kept when it is the class's
 * largest (or keep_largest is 0) and holds at least min_size pixels (voxels in 3-D); a removed
 * component's pixels take the class removed_to (0, background, in a zero-initialised rule).
 * Components are found on the labels as they came in, so a pixel given to another class by one
 * rule never joins that class's components in the same call. */
typedef struct {
    int keep_largest; /* nonzero: only the largest component (equal sizes: the first in raster order) */
    int64_t min_size; /* components of fewer pixels / voxels are removed; <= 1 removes none */
    int removed_to;   /* the label removed pixels take, 0..255 */
} es_component_rule;

/* In place on contiguous (count, rows, cols) labels, per slice and 8-connected: class c in
 * 1..num_classes-1 follows rules[c] (rules[0] is not read). Pixels of other classes are left.
 * A removed_to outside 0..255 in rules[1..num_classes-1] gives ES_EINVAL. */
int es_filter_components(uint8_t *labels, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                         int num_classes, const es_component_rule *rules, int num_threads);

/* In place on a contiguous (depth, rows, cols) label volume, 6-connected across rows and slices:
 * class c in 1..num_classes-1 follows rules[c], min_size in voxels. Volumes of more than
 * INT32_MAX voxels give ES_EINVAL. */
int es_filter_components_3d(uint8_t *labels, ptrdiff_t depth, ptrdiff_t rows, ptrdiff_t cols,
                            int num_classes, const es_component_rule *rules, int num_threads);

/* Threads a call with num_threads <= 0 uses (1 without OpenMP). */
int es_default_threads(void);

/* 1 when built with OpenMP. */
int es_has_openmp(void);

/* The _OPENMP date (e.g. 201511 for OpenMP 4.5) the kernels were built with; 0 without OpenMP. */
int es_openmp_version(void);

/* The compiler that built the kernels, e.g. "gcc 12.2.0". */
const char *es_build_compiler(void);

/* The hand-written SIMD paths the kernels were built with: "sse2" (SSE2 intrinsics), "avx2" (hot
 * loops cloned for AVX2, picked at load time where the CPU has it), both as "sse2+avx2", or
 * "portable" (none: -DES_NO_SIMD, or a CPU other than x86-64 such as aarch64). */
const char *es_build_simd(void);

/* A short English description of a status code. */
const char *es_status_message(int status);

/* IEEE binary16 <-> binary32, round to nearest even; exposed for tests and clients. */
float es_half_to_float(uint16_t h);
uint16_t es_float_to_half(float f);

#ifdef __cplusplus
}
#endif

#endif
