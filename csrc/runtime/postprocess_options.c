/* manifest.json "postprocess" -> the bundle's per-class component rules, with the checks and the
 * one migration of edgeseg/runtime/postprocess_options.py: {"keep_largest": true|false} (the
 * layout before per-class options) means the per-slice largest component for every class. */
#include <math.h>
#include <string.h>

#include "cJSON.h"
#include "es_runtime.h"

static int is_class_key(const char *key, int num_classes) {
    if (!key || !*key || strlen(key) > 3) return -1;
    int c = 0;
    for (const char *k = key; *k; ++k) {
        if (*k < '0' || *k > '9') return -1;
        c = c * 10 + (*k - '0');
    }
    if (key[0] == '0' && key[1]) return -1; /* "01" is not how Python writes 1 */
    return c >= 1 && c < num_classes ? c : -1;
}

static int parse_class(const cJSON *opts, int c, es_bundle *b, const char *dir, es_error *err) {
    static const char *const known[] = {"keep_largest", "min_pixels", "keep_largest_3d", "min_ml", "removed_to", NULL};
    if (!cJSON_IsObject(opts)) return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes[\"%d\"] must be an object", dir, c);
    for (const cJSON *item = opts->child; item; item = item->next) {
        int ok = 0;
        for (int k = 0; known[k]; ++k) ok |= item->string && strcmp(item->string, known[k]) == 0;
        if (!ok) return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes[\"%d\"] has an unknown option", dir, c);
    }
    const cJSON *keep = cJSON_GetObjectItemCaseSensitive(opts, "keep_largest");
    const cJSON *keep3d = cJSON_GetObjectItemCaseSensitive(opts, "keep_largest_3d");
    const cJSON *pixels = cJSON_GetObjectItemCaseSensitive(opts, "min_pixels");
    const cJSON *ml = cJSON_GetObjectItemCaseSensitive(opts, "min_ml");
    const cJSON *to = cJSON_GetObjectItemCaseSensitive(opts, "removed_to");
    if ((keep && !cJSON_IsBool(keep)) || (keep3d && !cJSON_IsBool(keep3d)))
        return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes[\"%d\"] keep_largest options must be true or false", dir, c);
    if (pixels && !(es_json_is_integer(pixels) && pixels->valuedouble >= 0 && pixels->valuedouble <= 1e15))
        return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes[\"%d\"].min_pixels must be an integer from 0 to 10^15", dir, c);
    if (ml && !(cJSON_IsNumber(ml) && isfinite(ml->valuedouble) && ml->valuedouble >= 0))
        return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes[\"%d\"].min_ml must be a number >= 0", dir, c);
    if (to && !(es_json_is_integer(to) && to->valuedouble >= 0 && to->valuedouble < b->num_classes &&
                (int)to->valuedouble != c))
        return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes[\"%d\"].removed_to must be another class "
                       "number in 0..%d", dir, c, b->num_classes - 1);
    b->slice_keep[c] = keep && cJSON_IsTrue(keep);
    b->min_pixels[c] = pixels ? (long long)pixels->valuedouble : 0;
    b->volume_keep[c] = keep3d && cJSON_IsTrue(keep3d);
    b->min_ml[c] = ml ? ml->valuedouble : 0.0;
    b->removed_to[c] = to ? (int)to->valuedouble : 0;
    return ES_OK;
}

int es_parse_postprocess(const cJSON *post, es_bundle *b, const char *dir, es_error *err) {
    const cJSON *keep = post ? cJSON_GetObjectItemCaseSensitive(post, "keep_largest") : NULL;
    const cJSON *classes = post ? cJSON_GetObjectItemCaseSensitive(post, "classes") : NULL;
    if (keep && classes)
        return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess holds both the per-class 'classes' and the old 'keep_largest'", dir);
    if (!classes) {
        if (keep && !cJSON_IsBool(keep) && !cJSON_IsNull(keep))
            return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.keep_largest must be true or false", dir);
        for (int c = 1; c < b->num_classes; ++c) b->slice_keep[c] = keep && cJSON_IsTrue(keep);
        return ES_OK;
    }
    if (!cJSON_IsObject(classes))
        return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes must map class numbers to options", dir);
    for (const cJSON *item = classes->child; item; item = item->next) {
        const int c = is_class_key(item->string, b->num_classes);
        if (c < 0) return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.classes key is not a foreground class", dir);
        int rc = parse_class(item, c, b, dir, err);
        if (rc) return rc;
    }
    return ES_OK;
}

int es_parse_regions(const cJSON *model, es_bundle *b, const char *dir, es_error *err) {
    const cJSON *regions = cJSON_IsObject(model) ? cJSON_GetObjectItemCaseSensitive(model, "regions") : NULL;
    b->regions = regions && !cJSON_IsNull(regions);
    if (!b->regions) return 0;
    int ok = cJSON_IsArray(regions) && cJSON_GetArraySize(regions) == b->num_classes - 1;
    for (const cJSON *r = ok ? regions->child : NULL; r && ok; r = r->next) {
        ok = cJSON_IsArray(r) && r->child;
        for (const cJSON *c = ok ? r->child : NULL; c && ok; c = c->next)
            ok = es_json_is_integer(c) && c->valuedouble >= 1 && c->valuedouble < b->num_classes;
    }
    return ok ? 0 : es_fail(err, ES_EBUNDLE, "bundle %s: model.regions must be null or one list of classes 1..%d per foreground class",
                            dir, b->num_classes - 1);
}
