/* es_segmenter: a checked bundle, an OpenVINO infer request, and the C kernels around it.
 * Same steps and settings as edgeseg/runtime/segmenter.py with runners/openvino.py, so the
 * masks are the Python runtime's. */
/* realpath: XSI, which _POSIX_C_SOURCE alone does not declare in every libc */
#define _XOPEN_SOURCE 700
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openvino/c/openvino.h>

#include "es_compiled_cache.h"
#include "es_hu_checks.h"
#include "es_mirror.h"
#include "es_runtime.h"

/* The kernels run on one thread, as in the Python runtime: more OpenMP workers keep spinning
 * after each call and take the cores OpenVINO runs on. */
#define KERNEL_THREADS 1

struct es_segmenter {
    es_bundle bundle;
    ov_core_t *core;
    ov_compiled_model_t *compiled;
    ov_infer_request_t *request;
    float *input;   /* batch * rows * cols model input, reused by every call */
    int batch;      /* slices per inference in es_segment_volume */
    ov_tensor_t *input_tensor; /* OpenVINO's view of `input` for `input_count` slices, set on the request */
    int input_count;
    int mirrors;    /* network passes per batch: 1 (none), 2 (flip) or 4 (mirror) */
    float *original; /* the pre-processed batch while its mirrors take seg->input's place */
    pthread_mutex_t lock;
};

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

/* OpenVINO's compile of the artifact with `count` properties, `cache` as its CACHE_DIR (or none). */
static ov_status_e compile_with(es_segmenter *seg, const char *path, ov_property_t *props, size_t count,
                                const char *cache) {
    if (seg->compiled) ov_compiled_model_free(seg->compiled);
    seg->compiled = NULL;
    if (cache) props[count++] = (ov_property_t){ov_property_key_cache_dir, cache};
    /* From the file: with a cache hit OpenVINO skips reading and converting the ONNX graph. */
    return ov_core_compile_model_from_file_props(seg->core, path, "CPU", count, props, &seg->compiled);
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

static int compile_model(es_segmenter *seg, const char *dir, int threads, const char *cache_root, es_error *err) {
    size_t n = strlen(dir) + strlen(seg->bundle.artifact_file) + 2;
    char *path = malloc(n), thread_text[24], key[ES_CACHE_PATH + 256];
    if (!path) return es_fail(err, ES_ENOMEM, "no memory for a path");
    snprintf(path, n, "%s/%s", dir, seg->bundle.artifact_file);
    snprintf(thread_text, sizeof thread_text, "%d", threads);
    /* The Python runner's settings: latency hint, and f32 compute so that CPUs with bf16 do
     * not change an FP32 model's numbers (INT8 layers still run in int8). */
    ov_property_t props[4] = {{ov_property_key_hint_performance_mode, "LATENCY"},
                              {ov_property_key_hint_inference_precision, "f32"}};
    size_t count = 2;
    if (threads > 0) props[count++] = (ov_property_t){ov_property_key_inference_num_threads, thread_text};
    ov_status_e st = ov_core_create(&seg->core);
    if (st != OK) {
        free(path);
        return fail_backend(err, "start for", seg->bundle.artifact_file, st);
    }
    es_cache_entry *entry = malloc(sizeof *entry);
    if (!entry) {
        free(path);
        return es_fail(err, ES_ENOMEM, "no memory for a cache entry");
    }
    engine_key(threads, path, key, sizeof key);
    es_cache_prepare(cache_root, seg->bundle.sha256, key, entry);
    st = compile_with(seg, path, props, count, es_cache_folder(entry));
    if (st != OK && entry->hit) { /* blobs whose hashes match but OpenVINO refuses: build anew */
        es_cache_discard(entry);
        es_cache_prepare(cache_root, seg->bundle.sha256, key, entry);
        st = compile_with(seg, path, props, count, es_cache_folder(entry));
    }
    if (st != OK && es_cache_folder(entry)) { /* e.g. a full disk under the cache: run without it */
        es_cache_abandon(entry);
        st = compile_with(seg, path, props, count, NULL);
    }
    if (st == OK) es_cache_publish(entry);
    else es_cache_abandon(entry);
    free(entry);
    if (st == OK) st = ov_compiled_model_create_infer_request(seg->compiled, &seg->request);
    free(path);
    return st == OK ? ES_OK : fail_backend(err, "load", seg->bundle.artifact_file, st);
}

static void default_cache_dir(char *out, size_t size) {
    const char *root = getenv("EDGESEG_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    out[0] = '\0';
    if (root && *root) snprintf(out, size, "%s/openvino", root);
    else if (xdg && *xdg) snprintf(out, size, "%s/edgeseg/openvino", xdg);
    else if (home && *home) snprintf(out, size, "%s/.cache/edgeseg/openvino", home);
}

es_segmenter *es_open_cached(const char *bundle_dir, const char *precision, int threads, const char *cache_dir,
                             es_error *err) {
    if (threads < 0 || threads > ES_MAX_THREADS) {
        es_fail(err, ES_EINVAL, "threads must be between 0 (the backend's default) and %d, got %d", ES_MAX_THREADS, threads);
        return NULL;
    }
    es_segmenter *seg = calloc(1, sizeof *seg);
    if (!seg) {
        es_fail(err, ES_ENOMEM, "no memory for a segmenter");
        return NULL;
    }
    int rc = es_bundle_read(bundle_dir, precision, &seg->bundle, err);
    if (rc == ES_OK) rc = es_bundle_verify(bundle_dir, &seg->bundle, err);
    if (rc == ES_OK) {
        const es_bundle *b = &seg->bundle;
        seg->batch = b->fixed_batch ? b->fixed_batch : b->max_batch < ES_MAX_BATCH_CALL ? b->max_batch : ES_MAX_BATCH_CALL;
        seg->input = malloc((size_t)seg->batch * (size_t)b->rows * (size_t)b->cols * sizeof(float));
        if (!seg->input) rc = es_fail(err, ES_ENOMEM, "no memory for a %d x %d x %d input batch", seg->batch, b->rows, b->cols);
        seg->mirrors = 1;
    }
    if (rc == ES_OK) {
        rc = compile_model(seg, bundle_dir, threads, cache_dir, err);
    }
    if (rc == ES_OK && pthread_mutex_init(&seg->lock, NULL) != 0) rc = es_fail(err, ES_ENOMEM, "cannot create a mutex");
    if (rc != ES_OK) {
        if (seg->request) ov_infer_request_free(seg->request);
        if (seg->compiled) ov_compiled_model_free(seg->compiled);
        if (seg->core) ov_core_free(seg->core);
        es_bundle_free(&seg->bundle);
        free(seg->input);
        free(seg->original);
        free(seg);
        return NULL;
    }
    es_succeed(err);
    return seg;
}

es_segmenter *es_open(const char *bundle_dir, const char *precision, int threads, es_error *err) {
    char cache[4096];
    default_cache_dir(cache, sizeof cache);
    return es_open_cached(bundle_dir, precision, threads, cache, err);
}

/* Lend seg->input to the request as an `n`-slice tensor, unless it already holds that one: a
 * run of slices (or of equal batches) sets it once, and OpenVINO reads the pre-processed input
 * where the kernel wrote it. */
static ov_status_e lend_input(es_segmenter *seg, int n) {
    if (seg->input_tensor && seg->input_count == n) return OK;
    const es_bundle *b = &seg->bundle;
    int64_t dims[4] = {n, 1, b->rows, b->cols};
    ov_shape_t shape = {0, NULL};
    ov_tensor_t *tensor = NULL;
    ov_status_e st = ov_shape_create(4, dims, &shape);
    if (st == OK) st = ov_tensor_create_from_host_ptr(F32, shape, seg->input, &tensor);
    if (st == OK) st = ov_infer_request_set_input_tensor_by_index(seg->request, 0, tensor);
    if (shape.dims) ov_shape_free(&shape);
    if (st != OK) {
        if (tensor) ov_tensor_free(tensor);
        return st;
    }
    if (seg->input_tensor) ov_tensor_free(seg->input_tensor);
    seg->input_tensor = tensor;
    seg->input_count = n;
    return OK;
}

/* One network pass over the `n` slices now in seg->input: `*out` (freed by the caller) holds the
 * (n, classes, h, w) float32 logits at `*logits`, its dims in `dims`. */
static int run_model(es_segmenter *seg, int n, ov_tensor_t **out, float **logits, int64_t dims[4], es_error *err) {
    const es_bundle *b = &seg->bundle;
    ov_shape_t shape = {0, NULL};
    ov_element_type_e type = F32; /* read back below; only used when every call succeeded */
    void *data = NULL;
    ov_status_e st = lend_input(seg, n);
    if (st == OK) st = ov_infer_request_infer(seg->request);
    if (st == OK) st = ov_infer_request_get_output_tensor_by_index(seg->request, 0, out);
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

/* seg->mirrors passes over the `n` pre-processed slices, each reading them mirrored; `*mean`
 * (the caller frees it) receives the log of their mean softmax (es_mirror.h), `dims` its shape. */
static int run_mirrored(es_segmenter *seg, int n, float **mean, int64_t dims[4], es_error *err) {
    const es_bundle *b = &seg->bundle;
    size_t count = (size_t)n * (size_t)b->rows * (size_t)b->cols;
    memcpy(seg->original, seg->input, count * sizeof(float));
    float *sum = NULL;
    int rc = ES_OK;
    for (int pass = 0; pass < seg->mirrors && rc == ES_OK; pass++) {
        es_mirror_planes(seg->input, seg->original, n, b->rows, b->cols, pass);
        ov_tensor_t *out = NULL;
        float *logits = NULL;
        rc = run_model(seg, n, &out, &logits, dims, err);
        if (rc == ES_OK && dims[1] < 2)
            rc = es_fail(err, ES_EBACKEND, "test-time mirroring needs (N, K>=2, H, W) logits, got %lld class(es)",
                         (long long)dims[1]);
        if (rc == ES_OK && !sum && !(sum = malloc((size_t)n * (size_t)(dims[1] * dims[2] * dims[3]) * sizeof(float))))
            rc = es_fail(err, ES_ENOMEM, "no memory for the mirrored probabilities of %d slice(s)", n);
        if (rc == ES_OK) es_mirror_accumulate(sum, logits, n, dims[1], dims[2], dims[3], pass, b->regions);
        if (out) ov_tensor_free(out);
    }
    memcpy(seg->input, seg->original, count * sizeof(float)); /* as the caller left it */
    if (rc == ES_OK) {
        es_mirror_finish(sum, n, dims[1], dims[2], dims[3], seg->mirrors, b->regions);
        *mean = sum;
    } else {
        free(sum);
    }
    return rc;
}

/* The model's logits for the `run` slices now in seg->input (mirrored as seg->mirrors says), the
 * first `n` post-processed into `labels`. */
static int infer_and_postprocess(es_segmenter *seg, int run, int n, int rows, int cols, uint8_t *labels, es_error *err) {
    const es_bundle *b = &seg->bundle;
    ov_tensor_t *out = NULL;
    float *logits = NULL, *mean = NULL;
    int64_t dims[4] = {0, 0, 0, 0};
    int rc = seg->mirrors > 1 ? run_mirrored(seg, run, &mean, dims, err) : run_model(seg, run, &out, &logits, dims, err);
    if (mean) logits = mean;
    if (rc == ES_OK) {
        rc = es_postprocess_fit(logits, ES_FLOAT32, n, (ptrdiff_t)dims[1], (ptrdiff_t)dims[2], (ptrdiff_t)dims[3],
                                labels, rows, cols, b->resize_labels ? ES_RESIZE_LABELS : ES_RESIZE_LOGITS,
                                b->pad ? ES_FIT_PAD : ES_FIT_STRETCH, 0, KERNEL_THREADS);
        if (rc == ES_ENONFINITE) es_fail(err, rc, "%s: the model's logits hold NaN or inf", b->artifact_file);
        else if (rc) es_fail(err, rc, "postprocess: %s", es_status_message(rc));
    }
    if (rc == ES_OK) { /* the bundle's per-class component filters, per slice */
        es_component_rule rules[ES_MAX_CLASSES];
        int any;
        es_slice_rules(b, rows, cols, rules, &any);
        if (any && (rc = es_filter_components(labels, n, rows, cols, b->num_classes, rules, KERNEL_THREADS)))
            es_fail(err, rc, "component filter: %s", es_status_message(rc));
    }
    if (out) ov_tensor_free(out);
    free(mean);
    return rc;
}

/* Pre-process `n` slices into seg->input, run them, post-process into `labels`. */
static int segment_batch(es_segmenter *seg, const void *hu, es_dtype dtype, int n, const es_hu_layout *in,
                         uint8_t *labels, es_error *err) {
    const es_bundle *b = &seg->bundle;
    double low = b->window_low, high = b->window_high;
    /* PreprocessSpec.scale_offset, same operations in the same order */
    double scale = 1.0 / ((high - low) * b->std), offset = (-low / (high - low) - b->mean) / b->std;
    es_slices src = {hu, dtype, n, in->rows, in->cols, in->slice_stride, in->row_stride, 1};
    es_preprocess_spec spec = {low, high, scale, offset, b->rows, b->cols, b->area ? ES_AREA : ES_BILINEAR, ES_FLOAT32};
    int rc = es_preprocess_fit(&src, &spec, b->pad ? ES_FIT_PAD : ES_FIT_STRETCH, seg->input, KERNEL_THREADS);
    if (rc) return es_fail(err, rc, "preprocess: %s", es_status_message(rc));
    size_t plane = (size_t)b->rows * (size_t)b->cols;
    if ((rc = es_check_model_input(seg->input, (size_t)n * plane, b->artifact_file, err))) return rc;
    /* A model of a fixed batch (Segmenter._network): zero slices after the n, their logits unused. */
    int run = b->fixed_batch ? b->fixed_batch : n;
    memset(seg->input + (size_t)n * plane, 0, (size_t)(run - n) * plane * sizeof(float));
    return infer_and_postprocess(seg, run, n, in->rows, in->cols, labels, err);
}

/* The bundle's 3-D component filters over the whole (slices, rows, cols) result. */
static int filter_volume(const es_bundle *b, const es_hu_layout *in, const double *spacing, uint8_t *labels,
                         es_error *err) {
    es_component_rule rules[ES_MAX_CLASSES];
    int any;
    int rc = es_volume_rules(b, spacing, rules, &any, err);
    if (rc || !any) return rc;
    rc = es_filter_components_3d(labels, in->slices, in->rows, in->cols, b->num_classes, rules, KERNEL_THREADS);
    return rc ? es_fail(err, rc, "3-D component filter: %s", es_status_message(rc)) : ES_OK;
}

static int segment(es_segmenter *seg, const void *hu, es_dtype dtype, const es_hu_layout *in, const double *spacing,
                   uint8_t *labels, es_error *err) {
    if (!seg) return es_fail(err, ES_EINVAL, "segmenter is NULL");
    int rc = es_check_hu(&seg->bundle, hu, dtype, in, labels, err);
    if (rc) return rc;
    if (spacing && (rc = es_voxel_ml(spacing) == 0.0 ? es_bad_spacing(spacing, err) : es_check_fov(&seg->bundle, in, spacing, err))) return rc;
    if (in->volume) { /* refuse a missing spacing before any work */
        es_component_rule rules[ES_MAX_CLASSES];
        int any;
        if ((rc = es_volume_rules(&seg->bundle, spacing, rules, &any, err))) return rc;
    }
    size_t elem = dtype == ES_UINT8 ? 1 : dtype == ES_FLOAT32 ? 4 : 2;
    size_t plane = (size_t)in->rows * (size_t)in->cols;
    int step = in->volume ? seg->batch : 1;
    pthread_mutex_lock(&seg->lock);
    for (int z = 0; z < in->slices && rc == ES_OK; z += step) {
        int n = in->slices - z < step ? in->slices - z : step;
        const char *first = (const char *)hu + (size_t)z * (size_t)in->slice_stride * elem;
        rc = segment_batch(seg, first, dtype, n, in, labels + (size_t)z * plane, err);
    }
    pthread_mutex_unlock(&seg->lock);
    if (rc == ES_OK && in->volume) rc = filter_volume(&seg->bundle, in, spacing, labels, err);
    return rc ? rc : es_succeed(err);
}

int es_segment_slice(es_segmenter *seg, const void *hu, es_dtype dtype, int rows, int cols, ptrdiff_t row_stride,
                     uint8_t *labels, es_error *err) {
    /* The slice stride is never used for one slice; computed only where it cannot overflow. */
    int sane = rows >= 1 && rows <= ES_MAX_SIDE && row_stride >= 1 && row_stride <= PTRDIFF_MAX / ES_MAX_SIDE;
    es_hu_layout in = {1, rows, cols, row_stride, sane ? (ptrdiff_t)rows * row_stride : 0, 0};
    return segment(seg, hu, dtype, &in, NULL, labels, err);
}

int es_segment_volume(es_segmenter *seg, const void *hu, es_dtype dtype, int slices, int rows, int cols,
                      ptrdiff_t row_stride, ptrdiff_t slice_stride, uint8_t *labels, es_error *err) {
    es_hu_layout in = {slices, rows, cols, row_stride, slice_stride, 1};
    return segment(seg, hu, dtype, &in, NULL, labels, err);
}

int es_segment_volume_spaced(es_segmenter *seg, const void *hu, es_dtype dtype, int slices, int rows, int cols,
                             ptrdiff_t row_stride, ptrdiff_t slice_stride, const double spacing[3], uint8_t *labels,
                             es_error *err) {
    if (!spacing) return es_fail(err, ES_EINVAL, "spacing is NULL");
    es_hu_layout in = {slices, rows, cols, row_stride, slice_stride, 1};
    return segment(seg, hu, dtype, &in, spacing, labels, err);
}

int es_set_tta(es_segmenter *seg, const char *mode, es_error *err) {
    if (!seg) return es_fail(err, ES_EINVAL, "segmenter is NULL");
    static const char *const names[] = {"none", "flip", "mirror"};
    static const int passes[] = {1, 2, 4};
    int chosen = 0;
    for (int i = 0; i < 3 && !chosen; i++)
        if (mode && !strcmp(mode, names[i])) chosen = passes[i];
    if (!chosen)
        return es_fail(err, ES_EINVAL, "test-time augmentation must be one of none, flip, mirror, got %s%s%s",
                       mode ? "'" : "", mode ? mode : "NULL", mode ? "'" : "");
    pthread_mutex_lock(&seg->lock);
    int rc = ES_OK;
    if (chosen > 1 && !seg->original) {
        const es_bundle *b = &seg->bundle;
        seg->original = malloc((size_t)seg->batch * (size_t)b->rows * (size_t)b->cols * sizeof(float));
        if (!seg->original) rc = es_fail(err, ES_ENOMEM, "no memory for a %d x %d x %d mirrored batch", seg->batch, b->rows, b->cols);
    }
    if (rc == ES_OK) seg->mirrors = chosen;
    pthread_mutex_unlock(&seg->lock);
    return rc ? rc : es_succeed(err);
}

const char *const *es_labels(const es_segmenter *seg, int *count) {
    if (count) *count = seg ? seg->bundle.num_classes : 0;
    return seg ? (const char *const *)seg->bundle.labels : NULL;
}

const char *es_spec_json(const es_segmenter *seg) { return seg ? seg->bundle.spec_json : NULL; }

const char *es_artifact(const es_segmenter *seg) { return seg ? seg->bundle.artifact_key : NULL; }

const char *es_provenance(const es_segmenter *seg, const char *key) {
    return seg ? es_bundle_provenance_value(&seg->bundle, key, seg->mirrors) : NULL;
}

void es_close(es_segmenter *seg) {
    if (!seg) return;
    ov_infer_request_free(seg->request);
    if (seg->input_tensor) ov_tensor_free(seg->input_tensor);
    ov_compiled_model_free(seg->compiled);
    ov_core_free(seg->core);
    pthread_mutex_destroy(&seg->lock);
    es_bundle_free(&seg->bundle);
    free(seg->input);
    free(seg->original);
    free(seg);
}
