/* Private to libedgeseg: the parsed bundle and the helpers the runtime files share. */
#ifndef ES_RUNTIME_H
#define ES_RUNTIME_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "edgeseg.h"

#define ES_MANIFEST_SCHEMA 1
#define ES_SPEC_SCHEMA 1
#define ES_MAX_CLASSES 256
#define ES_MAX_BATCH_CALL 8 /* Segmenter.predict_volume's DEFAULT_BATCH */
#define ES_MAX_THREADS 1024 /* runners/base.py MAX_THREADS: more is a typing error, not a machine */
#define ES_MAX_BATCH (1 << 20) /* the largest max_batch a manifest may hold (manifest.py MAX_BATCH) */

/* What the runtime needs from manifest.json, checked as edgeseg.runtime.manifest checks it. */
typedef struct {
    double window_low, window_high, mean, std;
    int rows, cols;          /* spec size: the model's input */
    int area;                /* interpolation "area" (else bilinear) */
    int pad;                 /* fit "pad" (else "stretch", also when the spec has no fit) */
    int resize_input;        /* 0: slices must already be rows x cols */
    int resize_labels;       /* postprocess.resize == "labels" (else "logits") */
    int max_batch;
    int fixed_batch;         /* the input's batch size where the manifest fixes it (else 0: -1, dynamic) */
    int num_classes;         /* max label + 1 */
    int regions;             /* model.regions is set: the outputs are region scores (mirror.c) */
    char **labels;           /* num_classes names, "" where unnamed */
    char *spec_json;         /* the spec object, compact */
    char artifact_file[256]; /* the chosen ONNX artifact */
    char artifact_key[32];   /* "onnx-int8" */
    char sha256[65];
    long long artifact_bytes;
    /* provenance (provenance.c): the manifest's own sha256 and the fields the record names */
    char manifest_sha256[65];
    char *architecture, *created, *edgeseg_version, *checkpoint_sha256; /* NULL where absent or empty */
    char backend_version[128];                                          /* OpenVINO's build number */
    /* postprocess.classes (es_parse_postprocess): per class, per slice and over a volume */
    unsigned char slice_keep[ES_MAX_CLASSES], volume_keep[ES_MAX_CLASSES];
    long long min_pixels[ES_MAX_CLASSES];
    double min_ml[ES_MAX_CLASSES];
    int removed_to[ES_MAX_CLASSES]; /* the class a filter's removed pixels take (0: background) */
    int has_fov;                    /* training_fov recorded (training_fov.c) */
    double fov_low, fov_high;       /* its fov_mm: the training cases' field of view, longer side, mm */
} es_bundle;

struct cJSON;

/* Read manifest "postprocess" (either layout) into the bundle's per-class options. */
int es_parse_postprocess(const struct cJSON *post, es_bundle *b, const char *dir, es_error *err);
/* model.regions: null, or one non-empty list of classes 1..N-1 per foreground class (sets b->regions) */
int es_parse_regions(const struct cJSON *model, es_bundle *b, const char *dir, es_error *err);
/* training_fov: absent or null, or the record edgeseg/data/field_of_view.py reads (sets has_fov) */
int es_parse_training_fov(const struct cJSON *root, es_bundle *b, const char *dir, es_error *err);

/* component_rules.c: the parsed options as the kernels' component rules. */

/* A component filter's size for the kernels: ceil(x - 1e-9) pixels or voxels; a size beyond
 * int64 (+inf included) is ES_FILTER_SIZE_ABOVE_ALL, more than any slice or volume holds, so the
 * filter removes every component as it says (never an undefined or wrapped conversion). */
#define ES_FILTER_SIZE_ABOVE_ALL INT64_MAX
int64_t es_filter_size(double x);

/* The voxel volume in mL of `spacing` (z, y, x mm); 0 when a size is not finite and > 0 or the
 * volume is not a positive, finite, normal number (then es_bad_spacing says so). */
double es_voxel_ml(const double spacing[3]);
int es_bad_spacing(const double spacing[3], es_error *err);

/* The per-slice rules at an output of rows x cols (min_pixels scaled from the model's size);
 * *any is 1 when some class filters. */
void es_slice_rules(const es_bundle *b, int rows, int cols, es_component_rule *rules, int *any);

/* The volume rules with `spacing` (z, y, x mm; NULL: unknown, an error where a class needs it). */
int es_volume_rules(const es_bundle *b, const double *spacing, es_component_rule *rules, int *any, es_error *err);

/* manifest_text.c: BUNDLE/manifest.json's text (malloc'd), or NULL with `err` set where it is not
 * a regular file of at most 64 MiB, holds a NUL byte or is not strict UTF-8. */
char *es_manifest_text(const char *path, const char *dir, es_error *err);

/* Where the JSON text `json` (which cJSON parsed) has what Python's reader refuses or a C string
 * cannot carry: a raw control character in a string, a \u0000 escape, a number beyond JSON's
 * grammar (01, 1.), a control character between tokens that is not JSON whitespace; its offset,
 * *kind being which, or -1. */
enum { ES_FLAW_CONTROL = 1, ES_FLAW_NUL, ES_FLAW_NUMBER, ES_FLAW_SPACE };
long es_manifest_text_flaw(const char *json, int *kind);

/* Set on a cJSON number whose JSON text has a fraction or an exponent (8.0, 8e0): Python's json
 * reads it as a float, so where the manifest takes an integer both runtimes refuse it. A bit above
 * cJSON's own type flags, which its type tests mask away. */
#define ES_JSON_FRACTION (1 << 12)

/* Mark every number of `root` (parsed from `json`, which es_manifest_text_flaw found no flaw in)
 * whose text is not an integer with ES_JSON_FRACTION; 0, or -1 where the text and tree disagree. */
int es_json_mark_fractions(struct cJSON *root, const char *json);

/* A JSON integer (not 8.0, not true) of magnitude at most 1e15, where a double is exact. */
int es_json_is_integer(const struct cJSON *item);

/* cJSON_ParseWithOpts(text, end, 1) and cJSON_PrintUnformatted with "." decimals whatever the
 * application's LC_NUMERIC (json_keys.c). */
struct cJSON *es_json_parse(const char *text, const char **end);
char *es_json_print(const struct cJSON *item);

/* auto_skips.c: why "auto" must not run the (checked) artifact entry `a` on OpenVINO's CPU plugin
 * here, written to `why` of `n` bytes: 1, or 0 where it may run it. `record`: es_parity_record's,
 * read where `a` has no "scored" (NULL: none counts). */
int es_auto_skips(const struct cJSON *a, const struct cJSON *record, char *why, size_t n);

/* parity_record.c: DIR/parity.json parsed, where some entry of the (checked) `artifacts` has no
 * "scored" and its rows are this bundle's report (edgeseg/runtime/parity_record.py's rules); NULL
 * otherwise. The caller cJSON_Deletes it. */
struct cJSON *es_parity_record(const char *dir, const struct cJSON *artifacts);
/* 1 where the rows of `record` name `runner` for the artifact entry `a`. */
int es_parity_scored(const struct cJSON *record, const struct cJSON *a, const char *runner);

/* json_keys.c: remove every key of an object in `node` (recursively) that the same object
 * repeats later, keeping the last, as Python's json does. ES_OK or ES_ENOMEM. */
int es_json_keep_last_keys(struct cJSON *node);
/* json_keys.c: the string at `key` of the object `obj`, or NULL where it is absent or no string. */
const char *es_json_string_at(const struct cJSON *obj, const char *key);

/* Read BUNDLE/manifest.json, check it and choose the ONNX artifact of `precision` (NULL/"auto":
 * int8, fp32, fp16 in that order). ES_OK or an error in `err`. */
int es_bundle_read(const char *dir, const char *precision, es_bundle *bundle, es_error *err);

/* bundle_paths.c: ES_EBUNDLE where DIR/NAME exists and resolves outside DIR (a link elsewhere);
 * ES_OK for a file inside and for a missing one, which the caller names. */
int es_inside_bundle(const char *dir, const char *name, es_error *err);

/* Check the chosen artifact's size and sha256 against the manifest. */
int es_bundle_verify(const char *dir, const es_bundle *bundle, es_error *err);

void es_bundle_free(es_bundle *bundle);

/* provenance.c: fill the bundle's provenance fields from the parsed manifest `root` and its text
 * (for the sha256); ES_OK, or ES_ENOMEM / ES_EBUNDLE in `err`. */
int es_bundle_provenance(const struct cJSON *root, const char *text, es_bundle *bundle, const char *dir, es_error *err);
void es_bundle_provenance_free(es_bundle *bundle);
/* The value of provenance `key` (es_provenance) for `bundle` run with `mirrors` network passes
 * (1: tta none, 2: flip, 4: mirror). */
const char *es_bundle_provenance_value(const es_bundle *bundle, const char *key, int mirrors);

/* onnx_form.c. Where the file `fh` of `size` bytes stops being an ONNX ModelProto in protobuf's
 * wire form (top-level fields of ModelProto's numbers and wire types up to its end, ir_version
 * and graph among them), or -1 where it is one. OpenVINO tries its other frontends on a file its
 * ONNX frontend refuses, and some of them print to stderr: such a file is refused before. */
long es_onnx_form_flaw(FILE *fh, long long size);

/* A tensor that keeps its bytes in another file: its name and the file it names ('?' where it
 * names none), each quoted as Python's repr quotes the first 80 characters of a string. */
#define ES_QUOTED_SIZE (80 * 6 + 8)
typedef struct {
    char name[ES_QUOTED_SIZE], location[ES_QUOTED_SIZE];
} es_external_tensor;

/* edgeseg.runtime.onnx_form.external_tensor over the file `fh` of `size` bytes: 1 where a tensor
 * (initializers, Constant attributes, sparse tensors, subgraphs and functions included) keeps its
 * bytes in another file, *found the first such in the file's order; 0 where none does; -1 where
 * the protobuf breaks before (Python's ValueError), *flaw at which byte; nesting deeper than
 * protobuf's limit of 100 breaks it. Reads stay inside the file and each message's length. */
int es_onnx_external(FILE *fh, long long size, es_external_tensor *found, long long *flaw);

/* Hex sha256 of the rest of `fh` into hex[65] (OpenSSL's libcrypto); 0 on success. */
int es_sha256_file(FILE *fh, char hex[65]);

/* A library's multi-line message as one line in line[size]: its lines joined by spaces, without
 * OpenVINO's "Exception from FILE:LINE:" location lines (the cause comes after them). */
void es_one_line(const char *detail, char *line, size_t size);

/* vsnprintf / snprintf in the "C" locale's numbers ("2.88", whatever the application's
 * LC_NUMERIC), as Python formats them; every message of the library goes through these. */
int es_vformat(char *buf, size_t size, const char *fmt, va_list args);
int es_format(char *buf, size_t size, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Fill `err` (if not NULL) with `code` and a printf-formatted message (es_vformat); returns `code`. */
int es_fail(es_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Mark `err` (if not NULL) as success; returns ES_OK. */
int es_succeed(es_error *err);

#endif
