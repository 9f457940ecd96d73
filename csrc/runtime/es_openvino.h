/* Private to libedgeseg: the OpenVINO side of a segmenter -- the compiled artifact, its infer
 * request, and one pass of the network over a batch the kernels pre-processed. */
#ifndef ES_OPENVINO_H
#define ES_OPENVINO_H

#include <openvino/c/openvino.h>

#include "es_runtime.h"

typedef struct {
    ov_core_t *core;
    ov_compiled_model_t *compiled;
    ov_infer_request_t *request;
    ov_tensor_t *input_tensor; /* OpenVINO's view of the caller's input for `input_count` slices, set on the request */
    int input_count;
} es_ov_model;

/* Compile DIR/b->artifact_file for OpenVINO's CPU plugin with the Python runner's settings and
 * `threads` (0: OpenVINO's default), through the compiled-model cache in `cache_root` (NULL or
 * "": none), and create its infer request. ES_OK, or ES_EBACKEND / ES_ENOMEM in `err`. */
int es_ov_compile(es_ov_model *m, const es_bundle *b, const char *dir, int threads, const char *cache_root, es_error *err);

/* One network pass over the `n` slices at `input` ((n, 1, rows, cols) float32, which OpenVINO
 * reads in place): `*out` (freed by the caller) holds the (n, classes, h, w) float32 logits at
 * `*logits`, its dims in `dims`; a model whose output is not the bundle's is ES_EBACKEND. */
int es_ov_run(es_ov_model *m, const es_bundle *b, float *input, int n, ov_tensor_t **out, float **logits,
              int64_t dims[4], es_error *err);

/* Release what es_ov_compile made (also a half-made model); the fields are left NULL. */
void es_ov_free(es_ov_model *m);

/* The default compiled-model cache folder: $EDGESEG_CACHE_DIR/openvino, else under
 * $XDG_CACHE_HOME or ~/.cache (edgeseg/openvino); "" where none of them is set. */
void es_ov_default_cache_dir(char *out, size_t size);

#endif
