/* The OpenVINO side of a segmenter: compile the bundle's ONNX artifact (through the
 * compiled-model cache) and run it, with the settings of edgeseg/runtime/runners/openvino.py, so
 * the logits are the Python runtime's. */
/* realpath: XSI, which _POSIX_C_SOURCE alone does not declare in every libc */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_compiled_cache.h"
#include "es_openvino.h"

/* es_fail with OpenVINO's own last message appended, on one line (es_one_line). */
static int fail_backend(es_error *err, const char *what, const char *file, ov_status_e status) {
    const char *detail = ov_get_last_err_msg();
    char line[400] = "";
    if (detail) {
        es_one_line(detail, line, sizeof line);
        ov_free(detail);
    }
    return es_fail(err, ES_EBACKEND, "openvino could not %s %s: %s%s%s", what, file, ov_get_error_info(status),
                   *line ? ": " : "", line);
}

/* One OpenVINO property: a key (ov_property_key_*) and its value. */
typedef struct {
    const char *key, *value;
} es_ov_property;

/* OpenVINO's compile of the artifact with `count` properties (2 to 3; room for 4), `cache` as its
 * CACHE_DIR (or none). The variadic call is the one every OpenVINO C API has (the wheels ship the
 * C library from 2024.3 on); ov_core_compile_model_from_file_props, taking an array, only from
 * 2026.4. Its size argument counts keys and values, two per property. */
static ov_status_e compile_with(es_ov_model *m, const char *path, es_ov_property *props, size_t count,
                                const char *cache) {
    if (m->compiled) ov_compiled_model_free(m->compiled);
    m->compiled = NULL;
    if (cache) props[count++] = (es_ov_property){ov_property_key_cache_dir, cache};
    const es_ov_property *p = props;
    /* From the file: with a cache hit OpenVINO skips reading and converting the ONNX graph. */
    switch (count) {
    case 2:
        return ov_core_compile_model_from_file(m->core, path, "CPU", 4, &m->compiled, p[0].key, p[0].value, p[1].key,
                                               p[1].value);
    case 3:
        return ov_core_compile_model_from_file(m->core, path, "CPU", 6, &m->compiled, p[0].key, p[0].value, p[1].key,
                                               p[1].value, p[2].key, p[2].value);
    default:
        return ov_core_compile_model_from_file(m->core, path, "CPU", 8, &m->compiled, p[0].key, p[0].value, p[1].key,
                                               p[1].value, p[2].key, p[2].value, p[3].key, p[3].value);
    }
}

/* The engine key of a cache entry, as edgeseg/runtime/runners/openvino.py spells it. The
 * artifact's resolved path is part of it because OpenVINO names its blob after the model's
 * path: two copies of a bundle get an entry each instead of adding blobs to one another's. */
static void engine_key(int threads, const char *artifact, char *out, size_t size) {
    ov_version_t version = {NULL, NULL};
    int ok = ov_get_openvino_version(&version) == OK && version.buildNumber;
    char *resolved = realpath(artifact, NULL);
    snprintf(out, size, "openvino %s CPU LATENCY f32 threads %d %s", ok ? version.buildNumber : "unknown", threads,
             resolved ? resolved : artifact);
    free(resolved);
    if (ok) ov_version_free(&version);
}

int es_ov_compile(es_ov_model *m, const es_bundle *b, const char *dir, int threads, const char *cache_root, es_error *err) {
    size_t n = strlen(dir) + strlen(b->artifact_file) + 2;
    char *path = malloc(n), thread_text[24], key[ES_CACHE_PATH + 256];
    if (!path) return es_fail(err, ES_ENOMEM, "no memory for a path");
    snprintf(path, n, "%s/%s", dir, b->artifact_file);
    snprintf(thread_text, sizeof thread_text, "%d", threads);
    /* The Python runner's settings: latency hint, and f32 compute so that CPUs with bf16 do
     * not change an FP32 model's numbers (INT8 layers still run in int8). */
    es_ov_property props[4] = {{ov_property_key_hint_performance_mode, "LATENCY"},
                               {ov_property_key_hint_inference_precision, "f32"}};
    size_t count = 2;
    if (threads > 0) props[count++] = (es_ov_property){ov_property_key_inference_num_threads, thread_text};
    ov_status_e st = ov_core_create(&m->core);
    if (st != OK) {
        free(path);
        return fail_backend(err, "start for", b->artifact_file, st);
    }
    es_cache_entry *entry = malloc(sizeof *entry);
    if (!entry) {
        free(path);
        return es_fail(err, ES_ENOMEM, "no memory for a cache entry");
    }
    engine_key(threads, path, key, sizeof key);
    es_cache_prepare(cache_root, b->sha256, key, entry);
    st = compile_with(m, path, props, count, es_cache_folder(entry));
    if (st != OK && entry->hit) { /* blobs whose hashes match but OpenVINO refuses: build anew */
        es_cache_discard(entry);
        es_cache_prepare(cache_root, b->sha256, key, entry);
        st = compile_with(m, path, props, count, es_cache_folder(entry));
    }
    if (st != OK && es_cache_folder(entry)) { /* e.g. a full disk under the cache: run without it */
        es_cache_abandon(entry);
        st = compile_with(m, path, props, count, NULL);
    }
    if (st == OK) es_cache_publish(entry);
    else es_cache_abandon(entry);
    free(entry);
    if (st == OK) st = ov_compiled_model_create_infer_request(m->compiled, &m->request);
    free(path);
    return st == OK ? ES_OK : fail_backend(err, "load", b->artifact_file, st);
}

void es_ov_default_cache_dir(char *out, size_t size) {
    const char *root = getenv("EDGESEG_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    out[0] = '\0';
    if (root && *root) snprintf(out, size, "%s/openvino", root);
    else if (xdg && *xdg) snprintf(out, size, "%s/edgeseg/openvino", xdg);
    else if (home && *home) snprintf(out, size, "%s/.cache/edgeseg/openvino", home);
}

/* Lend `input` to the request as an `n`-slice tensor, unless it already holds that one: a run
 * of slices (or of equal batches) sets it once, and OpenVINO reads the pre-processed input where
 * the kernel wrote it. */
static ov_status_e lend_input(es_ov_model *m, const es_bundle *b, float *input, int n) {
    if (m->input_tensor && m->input_count == n) return OK;
    int64_t dims[4] = {n, 1, b->rows, b->cols};
    ov_shape_t shape = {0, NULL};
    ov_tensor_t *tensor = NULL;
    ov_status_e st = ov_shape_create(4, dims, &shape);
    if (st == OK) st = ov_tensor_create_from_host_ptr(F32, shape, input, &tensor);
    if (st == OK) st = ov_infer_request_set_input_tensor_by_index(m->request, 0, tensor);
    if (shape.dims) ov_shape_free(&shape);
    if (st != OK) {
        if (tensor) ov_tensor_free(tensor);
        return st;
    }
    if (m->input_tensor) ov_tensor_free(m->input_tensor);
    m->input_tensor = tensor;
    m->input_count = n;
    return OK;
}

int es_ov_run(es_ov_model *m, const es_bundle *b, float *input, int n, ov_tensor_t **out, float **logits,
              int64_t dims[4], es_error *err) {
    ov_shape_t shape = {0, NULL};
    ov_element_type_e type = F32; /* read back below; only used when every call succeeded */
    void *data = NULL;
    ov_status_e st = lend_input(m, b, input, n);
    if (st == OK) st = ov_infer_request_infer(m->request);
    if (st == OK) st = ov_infer_request_get_output_tensor_by_index(m->request, 0, out);
    if (st == OK) st = ov_tensor_get_shape(*out, &shape);
    if (st == OK) st = ov_tensor_get_element_type(*out, &type);
    if (st == OK) st = ov_tensor_data(*out, &data);
    int rc = st == OK ? ES_OK : fail_backend(err, "run", b->artifact_file, st);
    /* the manifest's output tensor: a graph that gives other classes or another size does not
     * match its bundle, and its labels would name classes es_labels does not */
    if (rc == ES_OK && (shape.rank != 4 || shape.dims[0] != n || shape.dims[1] != b->num_classes ||
                        shape.dims[2] != b->rows || shape.dims[3] != b->cols || type != F32))
        rc = es_fail(err, ES_EBACKEND, "%s: output is not (%d, %d, %d, %d) float32 logits, as the bundle declares "
                     "(a model that does not match its manifest)", b->artifact_file, n, b->num_classes, b->rows, b->cols);
    if (rc == ES_OK) {
        for (int i = 0; i < 4; i++) dims[i] = shape.dims[i];
        *logits = data;
    }
    if (shape.dims) ov_shape_free(&shape);
    return rc;
}

void es_ov_free(es_ov_model *m) {
    if (m->request) ov_infer_request_free(m->request);
    if (m->input_tensor) ov_tensor_free(m->input_tensor);
    if (m->compiled) ov_compiled_model_free(m->compiled);
    if (m->core) ov_core_free(m->core);
    *m = (es_ov_model){NULL, NULL, NULL, NULL, 0};
}
