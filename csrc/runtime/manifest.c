/* manifest.json -> es_bundle, with the checks of edgeseg/runtime/manifest.py and spec.py and
 * those Segmenter.load adds (float32 input whose shape matches the spec). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "es_runtime.h"

/* A pair of finite numbers; 0 if `item` is not one. */
static int number_pair(const cJSON *item, double out[2]) {
    if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) != 2) return 0;
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(item, i);
        if (!cJSON_IsNumber(v)) return 0;
        out[i] = v->valuedouble;
    }
    return 1;
}

/* The string at `key`, `fallback` where the key is absent, NULL where it is anything else: a
 * null is no string (Python refuses "fit": null rather than reading the default). */
static const char *string_or(const cJSON *obj, const char *key, const char *fallback) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) return fallback;
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static int one_of(const char *value, const char *const *choices) {
    for (; value && *choices; choices++)
        if (strcmp(value, *choices) == 0) return 1;
    return 0;
}

static int parse_spec(const cJSON *spec, es_bundle *b, const char *dir, es_error *err) {
    static const char *const known[] = {"schema", "window", "size", "interpolation", "mean",
                                        "std", "orientation", "dtype", "fit", NULL};
    static const char *const interps[] = {"bilinear", "area", NULL};
    static const char *const fits[] = {"stretch", "pad", NULL};
    if (!cJSON_IsObject(spec)) return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec must be a JSON object", dir);
    for (const cJSON *f = spec->child; f; f = f->next)
        if (!one_of(f->string, known))
            return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: unknown PreprocessSpec field '%s'", dir, f->string);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(spec, "schema");
    if (schema && !(es_json_is_integer(schema) && schema->valuedouble == ES_SPEC_SCHEMA))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: PreprocessSpec schema is not supported (this edgeseg reads %d)",
                       dir, ES_SPEC_SCHEMA);
    double window[2] = {0.0, 255.0}, size[2] = {256, 256};
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(spec, "window");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(spec, "size");
    if (w && !number_pair(w, window)) return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: window must be a pair of numbers", dir);
    if (!(isfinite(window[0]) && isfinite(window[1]) && window[0] < window[1]))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: window must be finite with low < high, got %g %g", dir, window[0], window[1]);
    if (s && !(number_pair(s, size) && es_json_is_integer(s->child) && es_json_is_integer(s->child->next)))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: size must be a pair of whole numbers", dir);
    if (size[0] < 1 || size[0] > ES_MAX_SIDE || size[1] < 1 || size[1] > ES_MAX_SIDE)
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: size must be between 1 and %d per axis, got %g x %g",
                       dir, ES_MAX_SIDE, size[0], size[1]);
    const char *interp = string_or(spec, "interpolation", "bilinear");
    const char *orientation = string_or(spec, "orientation", "LPS");
    const char *dtype = string_or(spec, "dtype", "float32");
    const char *fit = string_or(spec, "fit", "stretch"); /* specs written before fit: stretch */
    if (!one_of(fit, fits))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: fit must be stretch or pad", dir);
    if (!one_of(interp, interps))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: interpolation must be bilinear or area", dir);
    if (!orientation || strcmp(orientation, "LPS") != 0)
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: orientation must be LPS", dir);
    if (!dtype || strcmp(dtype, "float32") != 0)
        return es_fail(err, ES_EBUNDLE, "bundle %s: model input must be float32, spec says %s", dir, dtype ? dtype : "a non-string");
    const cJSON *mean = cJSON_GetObjectItemCaseSensitive(spec, "mean");
    const cJSON *std = cJSON_GetObjectItemCaseSensitive(spec, "std");
    if ((mean && !cJSON_IsNumber(mean)) || (std && !cJSON_IsNumber(std)))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: mean and std must be numbers", dir);
    b->mean = mean ? mean->valuedouble : 0.0;
    b->std = std ? std->valuedouble : 1.0;
    if (!(isfinite(b->mean) && isfinite(b->std) && b->std > 0))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest spec: std must be finite and > 0 and mean finite", dir);
    b->window_low = window[0];
    b->window_high = window[1];
    b->rows = (int)size[0];
    b->cols = (int)size[1];
    b->area = strcmp(interp, "area") == 0;
    b->pad = strcmp(fit, "pad") == 0;
    b->spec_json = es_json_print(spec);
    return b->spec_json ? ES_OK : es_fail(err, ES_ENOMEM, "bundle %s: no memory for the spec", dir);
}

/* A labels key as Python reads it (ASCII digits only: no sign, no space); -1 if it is not one. */
static long class_number(const char *key) {
    long k = 0;
    for (const char *d = key; *d; d++) {
        if (*d < '0' || *d > '9') return -1;
        if (k < ES_MAX_CLASSES) k = k * 10 + (*d - '0'); /* beyond that only "too large" matters */
    }
    return *key ? k : -1;
}

static int parse_labels(const cJSON *labels, es_bundle *b, const char *dir, es_error *err) {
    const char *seen[ES_MAX_CLASSES] = {NULL};
    if (!cJSON_IsObject(labels)) return es_fail(err, ES_EBUNDLE, "bundle %s: manifest labels must map class numbers to names", dir);
    int top = -1;
    for (const cJSON *l = labels->child; l; l = l->next) {
        long k = class_number(l->string);
        if (k < 0 || !cJSON_IsString(l))
            return es_fail(err, ES_EBUNDLE, "bundle %s: manifest labels must map class numbers to names, got key '%s'", dir, l->string);
        if (k >= ES_MAX_CLASSES)
            return es_fail(err, ES_EBUNDLE, "bundle %s: manifest labels: class %s does not fit uint8 labels (at most %d classes)",
                           dir, l->string, ES_MAX_CLASSES);
        if (seen[k] && strcmp(seen[k], l->string) != 0) /* "1" and "01"; the same key twice: the last, as in Python */
            return es_fail(err, ES_EBUNDLE, "bundle %s: manifest labels name a class twice: '%s' and '%s'", dir, seen[k], l->string);
        seen[k] = l->string;
        if (k > top) top = (int)k;
    }
    if (!seen[0]) return es_fail(err, ES_EBUNDLE, "bundle %s: labels must name class 0 (background)", dir);
    b->num_classes = top + 1;
    if (!(b->labels = calloc((size_t)b->num_classes, sizeof *b->labels)))
        return es_fail(err, ES_ENOMEM, "bundle %s: no memory for labels", dir);
    for (const cJSON *l = labels->child; l; l = l->next) {
        long k = class_number(l->string);
        free(b->labels[k]);
        if (!(b->labels[k] = strdup(l->valuestring))) return es_fail(err, ES_ENOMEM, "bundle %s: no memory for labels", dir);
    }
    for (int k = 0; k < b->num_classes; k++)
        if (!b->labels[k] && !(b->labels[k] = strdup(""))) return es_fail(err, ES_ENOMEM, "bundle %s: no memory for labels", dir);
    return ES_OK;
}

/* One tensor entry; `shape` receives its 4 dims for the input check (rank in *rank). */
static int parse_tensor(const cJSON *list, const char *what, long long shape[4], int *rank, const char *dir, es_error *err) {
    static const char *const dtypes[] = {"float32", "float16", "int64", "uint8", NULL};
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 1)
        return es_fail(err, ES_EBUNDLE, "bundle %s: a bundle model has one input and one output; manifest %s is not a list of one", dir, what);
    const cJSON *t = list->child;
    const char *name = string_or(t, "name", NULL);
    const cJSON *dims = cJSON_GetObjectItemCaseSensitive(t, "shape");
    const char *dtype = string_or(t, "dtype", "float32");
    if (!cJSON_IsObject(t) || !name || !*name || !cJSON_IsArray(dims))
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest %s entry needs a 'name' and a 'shape'", dir, what);
    if (!one_of(dtype, dtypes)) return es_fail(err, ES_EBUNDLE, "bundle %s: tensor '%s': unknown dtype", dir, name);
    *rank = 0;
    for (const cJSON *d = dims->child; d; d = d->next, (*rank)++) {
        if (!es_json_is_integer(d))
            return es_fail(err, ES_EBUNDLE, "bundle %s: tensor '%s': shape must be a list of integers", dir, name);
        if (d->valuedouble < -1 || d->valuedouble == 0)
            return es_fail(err, ES_EBUNDLE, "bundle %s: tensor '%s': shape has a size below 1 (use -1 for dynamic)", dir, name);
        if (*rank < 4) shape[*rank] = (long long)d->valuedouble;
    }
    if (strcmp(what, "inputs") == 0 && strcmp(dtype, "float32") != 0)
        return es_fail(err, ES_EBUNDLE, "bundle %s: model input must be float32, manifest says %s", dir, dtype);
    return ES_OK;
}

static int check_artifact(const cJSON *a, const char *dir, es_error *err) {
    static const char *const formats[] = {"torchscript", "onnx", "tensorrt", NULL}; /* what the runners load */
    static const char *const precisions[] = {"fp32", "fp16", "int8", NULL};
    static const char *const needed[] = {"file", "format", "precision", "sha256", "bytes", NULL};
    for (const char *const *key = needed; *key; key++)
        if (!cJSON_IsObject(a) || !cJSON_GetObjectItemCaseSensitive(a, *key))
            return es_fail(err, ES_EBUNDLE, "bundle %s: artifact entry lacks '%s'", dir, *key);
    const char *file = string_or(a, "file", NULL), *sha = string_or(a, "sha256", NULL);
    if (!file || !*file || strchr(file, '/') || strcmp(file, ".") == 0 || strcmp(file, "..") == 0)
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact file must be a plain file name inside the bundle", dir);
    if (!one_of(string_or(a, "format", NULL), formats))
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s: unknown format", dir, file);
    if (!one_of(string_or(a, "precision", NULL), precisions))
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s: unknown precision", dir, file);
    if (!sha || strlen(sha) != 64)
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s: sha256 must be 64 hex digits", dir, file);
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(a, "bytes");
    if (!es_json_is_integer(bytes) || bytes->valuedouble < 0)
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s: bytes must be a whole number", dir, file);
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(a, "extra");
    if (extra && !cJSON_IsNull(extra) && !cJSON_IsObject(extra))
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s: extra must be a JSON object", dir, file);
    const cJSON *excluded = cJSON_GetObjectItemCaseSensitive(a, "excluded");
    int reasons_ok = !excluded || cJSON_IsNull(excluded) || cJSON_IsObject(excluded);
    for (const cJSON *r = reasons_ok && excluded ? excluded->child : NULL; r; r = r->next) reasons_ok &= cJSON_IsString(r);
    if (!reasons_ok)
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s: 'excluded' must map backend names to reasons", dir, file);
    const cJSON *scored = cJSON_GetObjectItemCaseSensitive(a, "scored");
    int names_ok = !scored || cJSON_IsNull(scored) || cJSON_IsArray(scored);
    for (const cJSON *r = names_ok && scored ? scored->child : NULL; r; r = r->next) names_ok &= cJSON_IsString(r) && *r->valuestring;
    if (!names_ok) return es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s: 'scored' must list backend names", dir, file);
    return ES_OK;
}

/* Check every artifact entry, refuse two ONNX files of one precision, pick the one to load. */
static int choose_artifact(const cJSON *artifacts, const char *precision, es_bundle *b, const char *dir, es_error *err) {
    static const char *const order[] = {"int8", "fp32", "fp16", NULL};
    const cJSON *found[3] = {NULL, NULL, NULL};
    if (!cJSON_IsArray(artifacts)) return es_fail(err, ES_EBUNDLE, "bundle %s: manifest artifacts must be a list", dir);
    for (const cJSON *a = artifacts->child; a; a = a->next) {
        int rc = check_artifact(a, dir, err);
        if (rc) return rc;
        if (strcmp(string_or(a, "format", ""), "onnx") != 0) continue;
        for (int i = 0; order[i]; i++)
            if (strcmp(string_or(a, "precision", ""), order[i]) == 0) {
                if (found[i]) return es_fail(err, ES_EBUNDLE, "bundle %s: two artifacts are onnx-%s", dir, order[i]);
                found[i] = a;
            }
    }
    const cJSON *pick = NULL;
    int automatic = !precision || strcmp(precision, "auto") == 0;
    char skipped[3 * 200] = "", why[200];
    cJSON *record = automatic ? es_parity_record(dir, artifacts) : NULL; /* for entries without "scored" */
    for (int i = 0; order[i] && !pick; i++) {
        if (!found[i] || !(automatic || strcmp(precision, order[i]) == 0)) continue;
        if (automatic && es_auto_skips(found[i], record, why, sizeof why)) { /* an explicit precision loads anyway */
            size_t used = strlen(skipped);
            snprintf(skipped + used, sizeof skipped - used, "%sonnx-%s: %s", used ? "; " : "", order[i], why);
            continue;
        }
        pick = found[i];
    }
    cJSON_Delete(record);
    if (!pick) {
        if (!automatic && !one_of(precision, order))
            return es_fail(err, ES_EINVAL, "precision must be int8, fp32, fp16 or auto, got '%s'", precision);
        if (*skipped)
            return es_fail(err, ES_EBUNDLE, "bundle %s: auto may run none of its ONNX artifacts here (%s); open one by precision to run it anyway",
                           dir, skipped);
        return es_fail(err, ES_EBUNDLE, "bundle %s has no onnx-%s artifact", dir, automatic ? "*" : precision);
    }
    snprintf(b->artifact_file, sizeof b->artifact_file, "%s", string_or(pick, "file", ""));
    snprintf(b->artifact_key, sizeof b->artifact_key, "onnx-%s", string_or(pick, "precision", ""));
    snprintf(b->sha256, sizeof b->sha256, "%s", string_or(pick, "sha256", ""));
    b->artifact_bytes = (long long)cJSON_GetObjectItemCaseSensitive(pick, "bytes")->valuedouble;
    if (strlen(b->artifact_file) != strlen(string_or(pick, "file", "")))
        return es_fail(err, ES_EBUNDLE, "bundle %s: artifact file name is too long", dir);
    return ES_OK;
}

static int parse_options(const cJSON *root, es_bundle *b, const char *dir, es_error *err) {
    const cJSON *max_batch = cJSON_GetObjectItemCaseSensitive(root, "max_batch");
    const cJSON *resize_input = cJSON_GetObjectItemCaseSensitive(root, "resize_input");
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "postprocess");
    if (max_batch && !(es_json_is_integer(max_batch) && max_batch->valuedouble >= 1 && max_batch->valuedouble <= ES_MAX_BATCH))
        return es_fail(err, ES_EBUNDLE, "bundle %s: max_batch must be a whole number from 1 to %d", dir, ES_MAX_BATCH);
    b->max_batch = max_batch ? (int)max_batch->valuedouble : 1;
    if (resize_input && !cJSON_IsBool(resize_input))
        return es_fail(err, ES_EBUNDLE, "bundle %s: resize_input must be true or false", dir);
    b->resize_input = !resize_input || cJSON_IsTrue(resize_input);
    int rc_regions = es_parse_regions(cJSON_GetObjectItemCaseSensitive(root, "model"), b, dir, err); /* mirror.c */
    if (rc_regions || (rc_regions = es_parse_training_fov(root, b, dir, err))) return rc_regions;
    const char *resize = post ? string_or(post, "resize", "logits") : "logits";
    int rc = es_parse_postprocess(post, b, dir, err);
    if (rc) return rc;
    if (!resize || (strcmp(resize, "logits") != 0 && strcmp(resize, "labels") != 0))
        return es_fail(err, ES_EBUNDLE, "bundle %s: postprocess.resize must be logits or labels", dir);
    b->resize_labels = strcmp(resize, "labels") == 0;
    return ES_OK;
}

static int check_schema(const cJSON *root, const char *path, const char *dir, es_error *err) {
    static const char *const needed[] = {"spec", "labels", "inputs", "outputs", "artifacts", NULL};
    static const char *const objects[] = {"model", "source", "postprocess", NULL}; /* each may be null */
    if (!cJSON_IsObject(root)) return es_fail(err, ES_EBUNDLE, "%s: manifest must be a JSON object", path);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(root, "schema");
    if (!es_json_is_integer(schema)) return es_fail(err, ES_EBUNDLE, "%s: manifest has no integer 'schema' field", path);
    if (schema->valuedouble > ES_MANIFEST_SCHEMA)
        return es_fail(err, ES_EBUNDLE, "bundle %s: manifest schema %.0f is newer than this edgeseg reads (%d); upgrade edgeseg",
                       dir, schema->valuedouble, ES_MANIFEST_SCHEMA);
    if (schema->valuedouble < 1) return es_fail(err, ES_EBUNDLE, "bundle %s: manifest schema %.0f is not valid", dir, schema->valuedouble);
    for (const char *const *key = needed; *key; key++)
        if (!cJSON_GetObjectItemCaseSensitive(root, *key)) return es_fail(err, ES_EBUNDLE, "bundle %s: manifest lacks '%s'", dir, *key);
    for (const char *const *key = objects; *key; key++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, *key);
        if (item && !cJSON_IsNull(item) && !cJSON_IsObject(item))
            return es_fail(err, ES_EBUNDLE, "bundle %s: manifest %s must be a JSON object", dir, *key);
    }
    return ES_OK;
}

static int parse_manifest(const cJSON *root, const char *precision, es_bundle *b, const char *path, const char *dir, es_error *err) {
    long long in_shape[4] = {0, 0, 0, 0}, out_shape[4];
    int in_rank = 0, out_rank = 0, rc;
    if ((rc = check_schema(root, path, dir, err)) || (rc = parse_spec(cJSON_GetObjectItemCaseSensitive(root, "spec"), b, dir, err)) ||
        (rc = parse_labels(cJSON_GetObjectItemCaseSensitive(root, "labels"), b, dir, err)) ||
        (rc = parse_tensor(cJSON_GetObjectItemCaseSensitive(root, "inputs"), "inputs", in_shape, &in_rank, dir, err)) ||
        (rc = parse_tensor(cJSON_GetObjectItemCaseSensitive(root, "outputs"), "outputs", out_shape, &out_rank, dir, err)) ||
        (rc = parse_options(root, b, dir, err)) ||
        (rc = choose_artifact(cJSON_GetObjectItemCaseSensitive(root, "artifacts"), precision, b, dir, err)))
        return rc;
    if (in_rank != 4 || in_shape[1] != 1 || in_shape[2] != b->rows || in_shape[3] != b->cols)
        return es_fail(err, ES_EBUNDLE, "bundle %s: input shape does not match the spec size [%d, %d] (expected [-1, 1, %d, %d])",
                       dir, b->rows, b->cols, b->rows, b->cols);
    if (in_shape[0] > b->max_batch)
        return es_fail(err, ES_EBUNDLE, "bundle %s: input has a fixed batch of %lld, above max_batch %d", dir, in_shape[0],
                       b->max_batch);
    b->fixed_batch = in_shape[0] > 0 ? (int)in_shape[0] : 0;
    if (out_rank != 4 || out_shape[1] != b->num_classes || out_shape[2] != b->rows || out_shape[3] != b->cols)
        return es_fail(err, ES_EBUNDLE, "bundle %s: output shape does not match the spec and labels (expected [-1, %d, %d, %d])",
                       dir, b->num_classes, b->rows, b->cols);
    return ES_OK;
}

int es_bundle_read(const char *dir, const char *precision, es_bundle *b, es_error *err) {
    memset(b, 0, sizeof *b);
    if (!dir || !*dir) return es_fail(err, ES_EINVAL, "bundle_dir is NULL or empty");
    size_t n = strlen(dir) + sizeof "/manifest.json";
    char *path = malloc(n);
    if (!path) return es_fail(err, ES_ENOMEM, "no memory for a path");
    snprintf(path, n, "%s/manifest.json", dir);
    int rc = es_inside_bundle(dir, "manifest.json", err);
    char *text = rc ? NULL : es_manifest_text(path, dir, err);
    if (!rc) rc = text ? ES_OK : err ? err->code : ES_EBUNDLE;
    if (text) {
        const char *end = text; /* ParseWithOpts reports where parsing stopped without a global */
        cJSON *root = es_json_parse(text, &end); /* 1: trailing bytes are an error, as in Python */
        int flaw = 0;
        long at = root ? es_manifest_text_flaw(text, &flaw) : -1;
        if (!root) rc = es_fail(err, ES_EBUNDLE, "%s: not readable JSON (error near byte %ld)", path, (long)(end - text));
        else if (flaw == ES_FLAW_NUL) /* a C string ends there: a file name would lose its tail */
            rc = es_fail(err, ES_EBUNDLE, "%s: a manifest string holds a NUL character (\\u0000) at byte %ld", path, at);
        else if (flaw == ES_FLAW_CONTROL)
            rc = es_fail(err, ES_EBUNDLE, "%s: not readable JSON (a control character in a string at byte %ld)", path, at);
        else if (flaw == ES_FLAW_SPACE)
            rc = es_fail(err, ES_EBUNDLE, "%s: not readable JSON (a control character outside a string at byte %ld)", path, at);
        else if (flaw == ES_FLAW_NUMBER)
            rc = es_fail(err, ES_EBUNDLE, "%s: not readable JSON (a malformed number at byte %ld)", path, at);
        else if (es_json_mark_fractions(root, text)) rc = es_fail(err, ES_EBUNDLE, "%s: not readable JSON", path);
        else if (es_json_keep_last_keys(root)) rc = es_fail(err, ES_ENOMEM, "%s: no memory to read the manifest", path);
        else if (!(rc = parse_manifest(root, precision, b, path, dir, err))) rc = es_bundle_provenance(root, text, b, dir, err);
        cJSON_Delete(root);
        free(text);
    }
    free(path);
    if (rc) es_bundle_free(b);
    return rc;
}

void es_bundle_free(es_bundle *b) {
    if (!b) return;
    for (int k = 0; b->labels && k < b->num_classes; k++) free(b->labels[k]);
    free(b->labels);
    cJSON_free(b->spec_json);
    es_bundle_provenance_free(b);
    b->labels = NULL;
    b->spec_json = NULL;
}
