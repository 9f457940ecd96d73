/* The bundle's per-class options as component rules at a given output size or voxel spacing:
 * the arithmetic of PostprocessOptions.slice_rules / volume_rules
 * (edgeseg/runtime/postprocess_options.py), step for step. No OpenVINO and no JSON here, so the
 * C kernel tests (csrc/tests) cover it. */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "es_runtime.h"

int64_t es_filter_size(double x) {
    const double size = ceil(x - 1e-9);
    /* 2^63 and above (+inf included) do not fit int64: converting them is undefined, and what
     * x86 gives (INT64_MIN) would switch the filter off. */
    return size >= 9223372036854775808.0 ? ES_FILTER_SIZE_ABOVE_ALL : (int64_t)size;
}

double es_voxel_ml(const double spacing[3]) {
    for (int i = 0; i < 3; i++)
        if (!(spacing[i] > 0 && isfinite(spacing[i]))) return 0.0;
    const double ml = spacing[0] * spacing[1] * spacing[2] / 1000.0;
    return isfinite(ml) && ml >= DBL_MIN /* normal */ ? ml : 0.0;
}

void es_slice_rules(const es_bundle *b, int rows, int cols, es_component_rule *rules, int *any) {
    const double ratio = ((double)rows * (double)cols) / ((double)b->rows * (double)b->cols);
    *any = 0;
    for (int c = 0; c < ES_MAX_CLASSES; ++c) {
        /* min_pixels counts pixels at the model's size: scaled by the area ratio, rounded up */
        rules[c].keep_largest = c > 0 && c < b->num_classes && b->slice_keep[c];
        rules[c].min_size = c > 0 && c < b->num_classes && b->min_pixels[c] > 0
                                ? es_filter_size((double)b->min_pixels[c] * ratio) : 0;
        rules[c].removed_to = c > 0 && c < b->num_classes ? b->removed_to[c] : 0;
        *any |= rules[c].keep_largest || rules[c].min_size > 1;
    }
}

int es_volume_rules(const es_bundle *b, const double *spacing, es_component_rule *rules, int *any, es_error *err) {
    *any = 0;
    for (int c = 0; c < ES_MAX_CLASSES; ++c) {
        rules[c].keep_largest = c > 0 && c < b->num_classes && b->volume_keep[c];
        rules[c].min_size = 0;
        rules[c].removed_to = c > 0 && c < b->num_classes ? b->removed_to[c] : 0;
        if (c > 0 && c < b->num_classes && b->min_ml[c] > 0) {
            if (!spacing)
                return es_fail(err, ES_EINVAL, "class %d removes 3-D components under %g mL, which needs the voxel spacing "
                               "(es_segment_volume_spaced)", c, b->min_ml[c]);
            const double voxel_ml = es_voxel_ml(spacing);
            if (voxel_ml == 0.0) return es_bad_spacing(spacing, err);
            rules[c].min_size = es_filter_size(b->min_ml[c] / voxel_ml);
        }
        *any |= rules[c].keep_largest || rules[c].min_size > 1;
    }
    return ES_OK;
}

int es_bad_spacing(const double spacing[3], es_error *err) {
    return es_fail(err, ES_EINVAL, "spacing must be three finite voxel sizes > 0 in mm whose voxel volume is a normal "
                   "number, got %g x %g x %g (z, y, x)", spacing[0], spacing[1], spacing[2]);
}
