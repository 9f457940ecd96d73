/* The manifest's training_fov: the field of view (longer side, mm) and pixel spacing of the
 * model's training cases, read with the checks of edgeseg/data/field_of_view.py, and the check of
 * a caller's volume against it: a warning by default (the segmenter's warning channel), a refusal
 * where EDGESEG_FOV_CHECK=refuse, nothing where =off; in the Python runtime's words. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "es_hu_checks.h"
#include "es_runtime.h"

#define FOV_FACTOR 1.25 /* field_of_view.py FOV_FACTOR */

/* A [low, high] of finite numbers with 0 < low <= high. */
static int range(const cJSON *pair, double out[2]) {
    if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2) return 0;
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(pair, i);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return 0;
        out[i] = v->valuedouble;
    }
    return out[0] > 0 && out[0] <= out[1];
}

int es_parse_training_fov(const cJSON *root, es_bundle *b, const char *dir, es_error *err) {
    const cJSON *record = cJSON_GetObjectItemCaseSensitive(root, "training_fov");
    double fov[2], spacing[2];
    b->has_fov = 0;
    if (!record || cJSON_IsNull(record)) return ES_OK;
    const cJSON *cases = cJSON_IsObject(record) ? cJSON_GetObjectItemCaseSensitive(record, "cases") : NULL;
    if (!cJSON_IsObject(record) || !range(cJSON_GetObjectItemCaseSensitive(record, "fov_mm"), fov) ||
        !range(cJSON_GetObjectItemCaseSensitive(record, "spacing_mm"), spacing) || !es_json_is_integer(cases) ||
        cases->valuedouble < 1)
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest training_fov must be null or {\"fov_mm\": [low, high], "
                       "\"spacing_mm\": [low, high], \"cases\": N} with finite 0 < low <= high and N a whole number >= 1", dir);
    b->has_fov = 1;
    b->fov_low = fov[0];
    b->fov_high = fov[1];
    return ES_OK;
}

int es_check_fov(const es_bundle *b, const es_hu_layout *in, const double spacing[3], es_warning_list *warnings,
                 es_error *err) {
    const char *mode = getenv("EDGESEG_FOV_CHECK");
    if (mode && strcmp(mode, "off") == 0) return ES_OK;
    int refuse = mode && strcmp(mode, "refuse") == 0;
    if (mode && *mode && !refuse && strcmp(mode, "warn") != 0)
        return es_fail(err, ES_EINVAL, "EDGESEG_FOV_CHECK=%s is not one of warn, refuse, off", mode);
    if (!b->has_fov) return ES_OK;
    double rows_mm = in->rows * spacing[1], cols_mm = in->cols * spacing[2];
    double fov = rows_mm >= cols_mm ? rows_mm : cols_mm;
    if (fov >= b->fov_low / FOV_FACTOR && fov <= b->fov_high * FOV_FACTOR) return ES_OK;
    /* one text for both: field_of_view.py's fov_problem */
    es_error problem;
    es_fail(&problem, ES_EINVAL, "%s: field of view %.0f mm (%d x %g mm) lies outside the %.0f-%.0f mm the model was "
            "trained on by more than a factor %g, so the anatomy is at a scale it never saw "
            "(EDGESEG_FOV_CHECK=refuse refuses such input, =off silences this)", in->volume ? "volume" : "slice", fov,
            rows_mm >= cols_mm ? in->rows : in->cols, rows_mm >= cols_mm ? spacing[1] : spacing[2], b->fov_low,
            b->fov_high, FOV_FACTOR);
    if (refuse) {
        if (err) *err = problem;
        return ES_EINVAL;
    }
    es_warn(warnings, ES_WARN_FIELD_OF_VIEW, problem.message);
    return ES_OK;
}
