/* Timings of libedgeseg for benchmarks/capi_report.py.
 *
 *   bench_capi latency BUNDLE PRECISION IN.raw ROWS COLS RUNS MODEL_FILE MODEL_SIDE THREADS
 *       after 3 warm-up calls, RUNS rounds of: es_segment_slice on the int16 slice (end to end)
 *       and the same model alone, in alternating order (OpenVINO C API, BUNDLE/MODEL_FILE with libedgeseg's settings,
 *       on one MODEL_SIDE^2 input); prints "e2e_ms MEDIAN" and "model_ms MEDIAN".
 *   bench_capi cold BUNDLE PRECISION IN.raw ROWS COLS CACHE_DIR|- THREADS
 *       es_open_cached + one es_segment_slice, then exit: the caller times the whole process.
 *       Prints "vmhwm_kb N", the process's peak resident memory (VmHWM of /proc/self/status).
 * THREADS is OpenVINO's inference thread count, 0 for its default.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <edgeseg.h>
#include <openvino/c/openvino.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Peak resident memory of this process in kB (Linux), or -1. */
static long peak_rss_kb(void) {
    char line[256];
    long kb = -1;
    FILE *fh = fopen("/proc/self/status", "r");
    while (fh && fgets(line, sizeof line, fh))
        if (sscanf(line, "VmHWM: %ld", &kb) == 1) break;
    if (fh) fclose(fh);
    return kb;
}

static int die(const char *what, const char *detail) {
    fprintf(stderr, "bench_capi: error: %s: %s\n", what, detail);
    return 2;
}

/* The model alone: OpenVINO compiled with the settings libedgeseg uses, input of `side`^2. */
static ov_infer_request_t *model_alone(const char *bundle, const char *file, int side, const char *threads,
                                       ov_core_t **core, ov_compiled_model_t **compiled, ov_tensor_t **input) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", bundle, file);
    ov_property_t props[3] = {{ov_property_key_hint_performance_mode, "LATENCY"},
                              {ov_property_key_hint_inference_precision, "f32"},
                              {ov_property_key_inference_num_threads, threads}};
    size_t count = atoi(threads) > 0 ? 3 : 2;
    ov_infer_request_t *request = NULL;
    int64_t dims[4] = {1, 1, side, side};
    ov_shape_t shape;
    if (ov_core_create(core) || ov_core_compile_model_from_file_props(*core, path, "CPU", count, props, compiled) ||
        ov_compiled_model_create_infer_request(*compiled, &request) || ov_shape_create(4, dims, &shape))
        return NULL;
    int bad = ov_tensor_create(F32, shape, input) != OK;
    ov_shape_free(&shape);
    float *data = NULL;
    if (bad || ov_tensor_data(*input, (void **)&data) != OK) return NULL;
    for (int64_t i = 0; i < (int64_t)side * side; i++) data[i] = (float)(i % 997) / 997.0f; /* values do not change the time */
    return ov_infer_request_set_input_tensor_by_index(request, 0, *input) == OK ? request : NULL;
}

static int latency(es_segmenter *seg, const char *bundle, const int16_t *hu, int rows, int cols, int runs,
                   const char *file, int side, const char *threads) {
    uint8_t *labels = malloc((size_t)rows * cols);
    double *e2e = malloc(sizeof(double) * runs), *model = malloc(sizeof(double) * runs);
    es_error err;
    ov_core_t *core = NULL;
    ov_compiled_model_t *compiled = NULL;
    ov_tensor_t *input = NULL;
    ov_infer_request_t *request = runs > 0 && side > 0 ? model_alone(bundle, file, side, threads, &core, &compiled, &input) : NULL;
    if (!labels || !e2e || !model || !request) return die("latency", "RUNS and MODEL_SIDE must be positive, MODEL_FILE loadable");
    for (int i = 0; i < 3; i++)
        if (es_segment_slice(seg, hu, ES_INT16, rows, cols, cols, labels, &err) || ov_infer_request_infer(request))
            return die("warm-up", err.message);
    /* The two alternate which goes first, so that neither always runs in the caches and the
     * thread wake-ups the other one leaves behind. */
    for (int i = 0; i < runs; i++) {
        double t0 = now_ms();
        if (i % 2) ov_infer_request_infer(request);
        else es_segment_slice(seg, hu, ES_INT16, rows, cols, cols, labels, &err);
        double t1 = now_ms();
        if (i % 2) es_segment_slice(seg, hu, ES_INT16, rows, cols, cols, labels, &err);
        else ov_infer_request_infer(request);
        double t2 = now_ms();
        e2e[i] = i % 2 ? t2 - t1 : t1 - t0;
        model[i] = i % 2 ? t1 - t0 : t2 - t1;
    }
    printf("e2e_ms %.4f\nmodel_ms %.4f\n", median(e2e, runs), median(model, runs));
    ov_infer_request_free(request);
    ov_tensor_free(input);
    ov_compiled_model_free(compiled);
    ov_core_free(core);
    free(labels);
    free(e2e);
    free(model);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 9 && argc != 11) return die("usage", "see the comment at the top of bench_capi.c");
    const char *threads = argv[argc - 1];
    int rows = atoi(argv[5]), cols = atoi(argv[6]);
    if (rows < 2 || cols < 2) return die("sizes", "ROWS and COLS must be >= 2");
    int16_t *hu = malloc((size_t)rows * cols * sizeof *hu);
    FILE *fh = fopen(argv[4], "rb");
    if (!hu || !fh || fread(hu, sizeof *hu, (size_t)rows * cols, fh) != (size_t)rows * cols) return die("input", argv[4]);
    fclose(fh);
    es_error err;
    int cold = strcmp(argv[1], "cold") == 0;
    const char *cache = cold && strcmp(argv[7], "-") != 0 ? argv[7] : NULL;
    es_segmenter *seg = cold ? es_open_cached(argv[2], argv[3], atoi(threads), cache, &err)
                             : es_open(argv[2], argv[3], atoi(threads), &err);
    if (!seg) return die("open", err.message);
    int rc = 0;
    if (cold) {
        uint8_t *labels = malloc((size_t)rows * cols);
        rc = !labels || es_segment_slice(seg, hu, ES_INT16, rows, cols, cols, labels, &err) ? die("segment", err.message) : 0;
        printf("vmhwm_kb %ld\n", peak_rss_kb());
        free(labels);
    } else {
        rc = argc == 11 ? latency(seg, argv[2], hu, rows, cols, atoi(argv[7]), argv[8], atoi(argv[9]), threads)
                        : die("usage", "latency takes MODEL_FILE MODEL_SIDE");
    }
    es_close(seg);
    free(hu);
    return rc;
}
