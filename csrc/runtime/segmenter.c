/* es_segmenter: a checked bundle, an OpenVINO infer request (openvino_model.c), and the C kernels
 * around it. Same steps as edgeseg/runtime/segmenter.py, so the masks are the Python runtime's. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "es_hu_checks.h"
#include "es_mirror.h"
#include "es_openvino.h"

/* The kernels run on one thread, as in the Python runtime: more OpenMP workers keep spinning
 * after each call and take the cores OpenVINO runs on. */
#define KERNEL_THREADS 1

struct es_segmenter {
    es_bundle bundle;
    es_ov_model model;
    float *input;   /* batch * rows * cols model input, reused by every call */
    int batch;      /* slices per inference in es_segment_volume */
    int mirrors;    /* network passes per batch: 1 (none), 2 (flip) or 4 (mirror) */
    float *original; /* the pre-processed batch while its mirrors take seg->input's place */
    pthread_mutex_t lock;
    es_warning_channel warnings; /* es_set_warning_callback, es_last_warnings (warnings.c) */
};

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
        rc = es_ov_compile(&seg->model, &seg->bundle, bundle_dir, threads, cache_dir, err);
    }
    if (rc == ES_OK && pthread_mutex_init(&seg->lock, NULL) != 0) rc = es_fail(err, ES_ENOMEM, "cannot create a mutex");
    if (rc == ES_OK && es_channel_init(&seg->warnings) != 0) {
        pthread_mutex_destroy(&seg->lock);
        rc = es_fail(err, ES_ENOMEM, "cannot create a mutex");
    }
    if (rc != ES_OK) {
        es_ov_free(&seg->model);
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
    es_ov_default_cache_dir(cache, sizeof cache);
    return es_open_cached(bundle_dir, precision, threads, cache, err);
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
        rc = es_ov_run(&seg->model, b, seg->input, n, &out, &logits, dims, err);
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
    int rc = seg->mirrors > 1 ? run_mirrored(seg, run, &mean, dims, err)
                              : es_ov_run(&seg->model, b, seg->input, run, &out, &logits, dims, err);
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

static int segment_checked(es_segmenter *seg, const void *hu, es_dtype dtype, const es_hu_layout *in,
                           const double *spacing, uint8_t *labels, es_warning_list *warnings, es_error *err) {
    int rc = es_check_hu(&seg->bundle, hu, dtype, in, labels, err);
    if (rc) return rc;
    if (spacing && (rc = es_voxel_ml(spacing) == 0.0 ? es_bad_spacing(spacing, err)
                                                      : es_check_fov(&seg->bundle, in, spacing, warnings, err)))
        return rc;
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

/* A segment call: its checks and work, then its warnings to the channel, whatever the outcome (a
 * refusal too: es_last_warnings never gives an earlier call's). `spaced`: es_segment_volume_spaced. */
static int segment(es_segmenter *seg, const void *hu, es_dtype dtype, const es_hu_layout *in, const double *spacing,
                   int spaced, uint8_t *labels, es_error *err) {
    if (!seg) return es_fail(err, ES_EINVAL, "segmenter is NULL");
    es_warning_list warnings = {0};
    int rc = spaced && !spacing ? es_fail(err, ES_EINVAL, "spacing is NULL")
                                : segment_checked(seg, hu, dtype, in, spacing, labels, &warnings, err);
    es_channel_deliver(&seg->warnings, &warnings);
    return rc;
}

int es_segment_slice(es_segmenter *seg, const void *hu, es_dtype dtype, int rows, int cols, ptrdiff_t row_stride,
                     uint8_t *labels, es_error *err) {
    /* The slice stride is never used for one slice; computed only where it cannot overflow. */
    int sane = rows >= 1 && rows <= ES_MAX_SIDE && row_stride >= 1 && row_stride <= PTRDIFF_MAX / ES_MAX_SIDE;
    es_hu_layout in = {1, rows, cols, row_stride, sane ? (ptrdiff_t)rows * row_stride : 0, 0};
    return segment(seg, hu, dtype, &in, NULL, 0, labels, err);
}

int es_segment_volume(es_segmenter *seg, const void *hu, es_dtype dtype, int slices, int rows, int cols,
                      ptrdiff_t row_stride, ptrdiff_t slice_stride, uint8_t *labels, es_error *err) {
    es_hu_layout in = {slices, rows, cols, row_stride, slice_stride, 1};
    return segment(seg, hu, dtype, &in, NULL, 0, labels, err);
}

int es_segment_volume_spaced(es_segmenter *seg, const void *hu, es_dtype dtype, int slices, int rows, int cols,
                             ptrdiff_t row_stride, ptrdiff_t slice_stride, const double spacing[3], uint8_t *labels,
                             es_error *err) {
    es_hu_layout in = {slices, rows, cols, row_stride, slice_stride, 1};
    return segment(seg, hu, dtype, &in, spacing, 1, labels, err);
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

int es_set_warning_callback(es_segmenter *seg, es_warning_fn fn, void *user, es_error *err) {
    if (!seg) return es_fail(err, ES_EINVAL, "segmenter is NULL");
    es_channel_set(&seg->warnings, fn, user);
    return es_succeed(err);
}

int es_last_warnings(es_segmenter *seg, es_warning *out, int capacity) {
    return seg ? es_channel_copy(&seg->warnings, out, capacity) : 0;
}

void es_close(es_segmenter *seg) {
    if (!seg) return;
    es_ov_free(&seg->model);
    pthread_mutex_destroy(&seg->lock);
    es_channel_destroy(&seg->warnings);
    es_bundle_free(&seg->bundle);
    free(seg->input);
    free(seg->original);
    free(seg);
}
