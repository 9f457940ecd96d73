/* Private to libedgeseg: the checks of caller input before anything runs. */
#ifndef ES_HU_CHECKS_H
#define ES_HU_CHECKS_H

#include "es_runtime.h"
#include "es_warnings.h"

/* Where the caller's slices are: sizes and strides in elements. */
typedef struct {
    int slices, rows, cols;
    ptrdiff_t row_stride, slice_stride;
    int volume; /* called as a volume (messages say "volume") */
} es_hu_layout;

/* ES_OK, or the first reason the input cannot be segmented with bundle `b`. */
int es_check_hu(const es_bundle *b, const void *hu, es_dtype dtype, const es_hu_layout *in, const uint8_t *labels,
                es_error *err);

/* ES_OK, or ES_ENONFINITE where the `count` pre-processed model inputs hold NaN or inf: a spec
 * whose window and normalisation overflow float32. The Python runner refuses such a batch. */
int es_check_model_input(const float *input, size_t count, const char *artifact, es_error *err);

/* Where the input's field of view at `spacing` (z, y, x mm) lies outside the bundle's training_fov
 * by more than the factor field_of_view.py states: ES_EINVAL where EDGESEG_FOV_CHECK=refuse, else
 * (unset or "warn") ES_OK with an ES_WARN_FIELD_OF_VIEW in `warnings`; "off": ES_OK, no warning. */
int es_check_fov(const es_bundle *b, const es_hu_layout *in, const double spacing[3], es_warning_list *warnings,
                 es_error *err);

#endif
