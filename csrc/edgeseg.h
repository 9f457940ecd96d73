/* libedgeseg: run an edgeseg bundle from C (C99 ABI).
 *
 * A bundle is the folder `edgeseg export` writes: manifest.json plus model artifacts. es_open
 * reads and checks the manifest (schema, PreprocessSpec, labels, tensors), verifies the size and
 * sha256 of the ONNX artifact it loads and compiles it with OpenVINO for the CPU. The segment
 * calls then do exactly what the Python runtime does (edgeseg.runtime.Segmenter): refuse input
 * the model could silently get wrong, window + resize + normalise per the spec, run the model,
 * bring the logits back to the input size and apply the bundle's post-processing. The masks are
 * the Python runtime's, voxel for voxel, for the same artifact.
 *
 * Errors: every call that can fail returns an es_code (ES_OK = 0) and, when `err` is not NULL,
 * fills it with the code and one line naming the problem. libedgeseg never aborts or prints (a
 * warning about input it still segments comes through es_set_warning_callback and
 * es_last_warnings, below); OpenVINO, in the same process, may print to stderr when its ONNX
 * frontend refuses the artifact (it tries its other frontends), and an AddressSanitizer build dies
 * in es_open unless dlopen drops RTLD_DEEPBIND (TBB loads libtbbbind with it): docs/c-api.md has
 * both and the workaround.
 *
 * Threads: an es_segmenter may be shared by threads; its segment calls take turns (one input
 * buffer and one OpenVINO infer request per segmenter). Open one segmenter per thread to run
 * in parallel. es_close must not race with other calls on the same segmenter.
 */
#ifndef EDGESEG_H
#define EDGESEG_H

#include <stddef.h>
#include <stdint.h>

#include "edgeseg_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define ES_API
#else
#define ES_API __attribute__((visibility("default")))
#endif

/* The version of libedgeseg and of the whole edgeseg package: these three lines are its one
 * source (setup.py gives it to the Python package, csrc/sdk/Makefile to the SONAME, the library's
 * file name and the pkg-config and CMake files), and es_version() returns ES_VERSION_STRING. A
 * program may compare the ES_VERSION_* it was compiled with against es_version() at run time.
 * ES_VERSION_MAJOR is the SONAME's number (libedgeseg.so.0); docs/c-api.md, "Versions". */
#define ES_VERSION_MAJOR 0
#define ES_VERSION_MINOR 1
#define ES_VERSION_PATCH 0
#define ES_VERSION_STR_(x) #x
#define ES_VERSION_STR(x) ES_VERSION_STR_(x)
#define ES_VERSION_STRING \
    ES_VERSION_STR(ES_VERSION_MAJOR) "." ES_VERSION_STR(ES_VERSION_MINOR) "." ES_VERSION_STR(ES_VERSION_PATCH)

/* Status codes: the kernels' es_status (ES_OK, ES_EINVAL, ES_ENOMEM, ES_ENONFINITE) plus these. */
typedef enum {
    ES_EBUNDLE = 16,  /* bundle missing, unreadable, invalid, from a newer schema or tampered */
    ES_EBACKEND = 17, /* OpenVINO could not load or run the model */
    ES_EDATA = 18     /* the slices are not CT HU this bundle can segment (size, values) */
} es_code;

#define ES_MESSAGE_SIZE 512

typedef struct {
    int code;                      /* ES_OK or an error code */
    char message[ES_MESSAGE_SIZE]; /* one line of UTF-8, NUL-terminated; "" on success; a longer one
                                      * loses its middle to " ... " (a long path), never its end */
} es_error;

/* Largest slice side (rows or cols) accepted, the PreprocessSpec's limit; the Python runtime's
 * edgeseg.runtime.input_checks.MAX_SIDE. */
#define ES_MAX_SIDE 8192
/* Smallest slice side: a resize needs at least two samples per axis. */
#define ES_MIN_SIDE 2

typedef struct es_segmenter es_segmenter;

/* Open `bundle_dir` and compile its ONNX artifact of `precision` ("int8", "fp32", "fp16"; NULL
 * or "auto": the first of int8, fp32, fp16 the bundle has and the Python runtime's auto would run
 * on OpenVINO here: none the export gate excluded for openvino or, where the manifest lists the
 * runners the gate scored, did not score on openvino, and no INT8 graph of the tensorrt scheme on
 * an x86 CPU without VNNI; see docs/c-api.md) for OpenVINO's CPU plugin with
 * `threads` inference threads (0: OpenVINO's default; at most 1024). Compiled models are cached (OpenVINO's
 * CACHE_DIR) in $EDGESEG_CACHE_DIR/openvino/SHA16-KEY12 (default ~/.cache/edgeseg/...; see
 * docs/c-api.md): the artifact's sha256 and path and the OpenVINO version and settings name
 * the entry, which the Python runtime shares. An entry is used only when its files match their recorded
 * sha256; a damaged or stale one is deleted and rebuilt. Returns NULL on error. */
ES_API es_segmenter *es_open(const char *bundle_dir, const char *precision, int threads, es_error *err);

/* es_open with an explicit compiled-model cache folder (entries go to CACHE_DIR/SHA16-KEY12);
 * NULL or "" compiles without a cache. */
ES_API es_segmenter *es_open_cached(const char *bundle_dir, const char *precision, int threads,
                                    const char *cache_dir, es_error *err);

/* Segment one (rows, cols) slice of HU of `dtype` (ES_INT16, ES_UINT16, ES_UINT8 or
 * ES_FLOAT32); consecutive rows are `row_stride` elements apart (>= cols). Writes rows * cols
 * class numbers to `labels` (contiguous). */
ES_API int es_segment_slice(es_segmenter *seg, const void *hu, es_dtype dtype, int rows, int cols,
                            ptrdiff_t row_stride, uint8_t *labels, es_error *err);

/* Segment `slices` slices as es_segment_slice does; slice z starts `slice_stride` elements
 * after slice z-1 (>= rows * row_stride). Slices go to the model in batches of the bundle's
 * max_batch, at most 8, as in Segmenter.predict_volume (a model whose input fixes its batch at N
 * gets N slices per call, zero slices after a shorter batch). `labels` receives (slices, rows, cols),
 * after the bundle's per-slice and 3-D component filters. */
ES_API int es_segment_volume(es_segmenter *seg, const void *hu, es_dtype dtype, int slices, int rows,
                             int cols, ptrdiff_t row_stride, ptrdiff_t slice_stride, uint8_t *labels,
                             es_error *err);

/* es_segment_volume with the voxel size, spacing[0..2] = (z, y, x) in mm: needed where the
 * bundle removes 3-D components under a volume in mL (es_segment_volume then fails naming this
 * function). The 3-D filters (per class, 6-connected) run over the whole result. */
ES_API int es_segment_volume_spaced(es_segmenter *seg, const void *hu, es_dtype dtype, int slices, int rows,
                                    int cols, ptrdiff_t row_stride, ptrdiff_t slice_stride,
                                    const double spacing[3], uint8_t *labels, es_error *err);

/* Test-time mirroring of the segment calls, as the Python runtime's Segmenter(tta=...): "none"
 * (the default, one network pass), "flip" (also the left-right mirror: 2 passes) or "mirror"
 * (left-right, up-down and both: 4 passes); the class probabilities (softmax) of the passes,
 * mirrored back, are averaged and their log post-processed as logits. ES_EINVAL for another
 * mode; the segmenter keeps its mode then. */
ES_API int es_set_tta(es_segmenter *seg, const char *mode, es_error *err);

/* Class names indexed by class number (a class the manifest leaves unnamed is ""); `count`
 * receives the number of classes. Owned by the segmenter. */
ES_API const char *const *es_labels(const es_segmenter *seg, int *count);

/* The bundle's PreprocessSpec as compact JSON. Owned by the segmenter. */
ES_API const char *es_spec_json(const es_segmenter *seg);

/* "onnx-int8" etc.: the artifact that was loaded. Owned by the segmenter. */
ES_API const char *es_artifact(const es_segmenter *seg);

/* Which model and software segment, to record with the results (docs/provenance.md): the value
 * of `key` in the provenance record that edgeseg's Python runtime writes into its outputs, equal to
 * that record for the same bundle and artifact run on OpenVINO. Keys (ES_PROVENANCE_VERSION 1):
 * "software" ("edgeseg"), "software_version" (es_version()), "architecture" (the manifest's model
 * name), "manifest_sha256" (sha256 of manifest.json as es_open read it: the bundle's identity; it
 * lists every artifact's sha256), "bundle_created", "bundle_edgeseg_version", "checkpoint_sha256",
 * "artifact" (the file loaded), "artifact_sha256" (checked against that file by es_open),
 * "backend" ("openvino"), "precision" ("int8", "fp32", "fp16"), "device" ("cpu"),
 * "backend_version" (OpenVINO's build number) and "tta" (es_set_tta's mode; not to be read while
 * another thread calls es_set_tta). NULL where the record holds no such key (the bundle leaves the
 * value empty, or a later version added the key), and for a NULL segmenter or key. Owned by the
 * segmenter. A later ES_PROVENANCE_VERSION adds keys; it never changes what a key means. */
#define ES_PROVENANCE_VERSION 1
ES_API const char *es_provenance(const es_segmenter *seg, const char *key);

/* Warnings: what a segment call still segments but the caller should know, where the Python
 * runtime (edgeseg.runtime.Segmenter) logs a warning; each has a code and that warning's text, one
 * line of UTF-8 of at most ES_MESSAGE_SIZE - 1 bytes. libedgeseg prints nothing: a warning reaches
 * the application through the callback and es_last_warnings below, never through es_error, and
 * the call still returns ES_OK. ES_WARNINGS_VERSION 1 has one code; a later version adds codes and
 * never changes what one means (treat an unknown code as a warning all the same). */
#define ES_WARNINGS_VERSION 1
typedef enum {
    /* es_segment_volume_spaced: the volume's field of view (rows x row spacing, the longer side)
     * lies outside the bundle's training_fov by more than a factor 1.25, and EDGESEG_FOV_CHECK is
     * unset or "warn" ("refuse" refuses the call instead, "off" says nothing). */
    ES_WARN_FIELD_OF_VIEW = 1
} es_warning_code;

/* The most warnings one call gives (later ones are dropped). Compiled into applications (as the size
 * of their es_warning arrays), so 8 is fixed for ES_WARNINGS_VERSION 1 and this soname
 * (libedgeseg.so): a later library never gives more. Still loop over min(n, capacity) of what
 * es_last_warnings returns, never over n alone. */
#define ES_MAX_WARNINGS 8

typedef struct {
    int code;                      /* an es_warning_code */
    char message[ES_MESSAGE_SIZE]; /* one line, NUL-terminated, as es_error's */
} es_warning;

/* Called once per warning of a segment call, on the thread that made the call, before the call
 * returns (also when it then fails). It may call any function on the segmenter but es_close (a
 * model run of another thread goes on meanwhile); es_last_warnings inside it gives this call's
 * warnings, unless the callback itself made a segment call since. Other threads' segment calls on
 * the segmenter wait for it at their end, and es_set_warning_callback waits for it, so keep it
 * short. `message` lives until the callback returns: copy what you keep. */
typedef void (*es_warning_fn)(void *user, int code, const char *message);

/* Give the warnings of later segment calls on `seg` to `fn(user, code, message)`; NULL stops them.
 * `user` is passed through untouched (libedgeseg never frees it). May be called while other threads
 * segment: a call in progress gives its warnings to the callback set when it finishes. Returns once
 * no call of the callback it replaces runs on another thread, so the old `user` may be freed then:
 * it blocks while a callback runs on another thread, so do not call it holding a lock that the
 * callback takes (a deadlock). Called from inside the callback, it does not wait for that call.
 * ES_EINVAL for a NULL segmenter. */
ES_API int es_set_warning_callback(es_segmenter *seg, es_warning_fn fn, void *user, es_error *err);

/* The warnings of the segment call on `seg` that finished last (from any thread; a refused call
 * counts too, whatever it was refused for, and gives the warnings found before its refusal, so a
 * refusal after a warned call gives 0): copies up to `capacity` of them to
 * `out` (caller-owned; NULL with 0 asks for the number only) and returns how many that call gave,
 * 0..ES_MAX_WARNINGS; 0 before any call and for a NULL segmenter. Where threads share a segmenter,
 * "the last call" is whichever finished last: use the callback, which runs on the calling thread,
 * to tie warnings to results. Each call gives its warnings again (the Python runtime logs each text
 * once per segmenter), so they can be stored with every result they concern. */
ES_API int es_last_warnings(es_segmenter *seg, es_warning *out, int capacity);

/* Release everything es_open allocated; NULL is accepted. As with free(), the handle is gone
 * afterwards: a second es_close of it, or any other call with it, is undefined (the memory may
 * already belong to a later es_open, so no check inside the library could tell). Set the
 * pointer to NULL after closing it, or let edgeseg::Segmenter (edgeseg.hpp) own it. The label
 * names, spec, artifact and provenance strings above end with it too. */
ES_API void es_close(es_segmenter *seg);

/* The library's version, e.g. "0.1.0": the ES_VERSION_STRING it was built with. */
ES_API const char *es_version(void);

/* A short English description of any code above. */
ES_API const char *es_code_message(int code);

#ifdef __cplusplus
}
#endif

#endif
