/* The runners the parity gate ran, for a manifest that does not list them (no "scored"):
 * parity.json's rows, read by the rules of edgeseg/runtime/parity_record.py. The report counts
 * only where it is this bundle's: strict JSON inside the bundle folder, every row naming an
 * artifact by file and sha256, a row's runner absent, null or a non-empty string, a row that did
 * not pass naming a runner the manifest excludes, and a row for every artifact without "scored".
 * Anything else vouches for nothing, and the manifest's own rule holds. */
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "es_runtime.h"

/* The artifact entry of `artifacts` whose file is `file`, or NULL. */
static const cJSON *artifact_named(const cJSON *artifacts, const char *file) {
    for (const cJSON *a = artifacts->child; a; a = a->next) {
        const char *name = es_json_string_at(a, "file");
        if (name && strcmp(name, file) == 0) return a;
    }
    return NULL;
}

/* 1 where some row of `rows` is for the file `file` and, with `runner`, names that runner. */
static int has_row(const cJSON *rows, const char *file, const char *runner) {
    for (const cJSON *row = rows->child; row; row = row->next) {
        const char *named = es_json_string_at(row, "runner");
        if (strcmp(es_json_string_at(row, "file"), file) == 0 && (!runner || (named && strcmp(named, runner) == 0))) return 1;
    }
    return 0;
}

/* 1 where `rows` are this bundle's report on `artifacts` (the checks above). */
static int rows_match(const cJSON *rows, const cJSON *artifacts) {
    if (!cJSON_IsArray(rows)) return 0;
    for (const cJSON *row = rows->child; row; row = row->next) {
        const char *file = cJSON_IsObject(row) ? es_json_string_at(row, "file") : NULL, *sha = file ? es_json_string_at(row, "sha256") : NULL;
        const cJSON *a = file ? artifact_named(artifacts, file) : NULL;
        if (!a || !sha || strcmp(sha, es_json_string_at(a, "sha256")) != 0) return 0;
        const cJSON *runner = cJSON_GetObjectItemCaseSensitive(row, "runner");
        if (!runner || cJSON_IsNull(runner)) continue;
        if (!cJSON_IsString(runner) || !*runner->valuestring) return 0;
        const cJSON *excluded = cJSON_GetObjectItemCaseSensitive(a, "excluded");
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "passed")) &&
            !(cJSON_IsObject(excluded) && cJSON_GetObjectItemCaseSensitive(excluded, runner->valuestring)))
            return 0;
    }
    for (const cJSON *a = artifacts->child; a; a = a->next)
        if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(a, "scored")) && !has_row(rows, es_json_string_at(a, "file"), NULL))
            return 0;
    return 1;
}

cJSON *es_parity_record(const char *dir, const cJSON *artifacts) {
    int unlisted = 0;
    for (const cJSON *a = artifacts->child; a; a = a->next) unlisted |= !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(a, "scored"));
    es_error scratch; /* why it does not count is no error of the bundle */
    size_t n = strlen(dir) + sizeof "/parity.json";
    char *path = unlisted ? malloc(n) : NULL;
    if (!path || es_inside_bundle(dir, "parity.json", &scratch) != ES_OK) {
        free(path);
        return NULL;
    }
    snprintf(path, n, "%s/parity.json", dir);
    char *text = es_manifest_text(path, dir, &scratch); /* a regular file of at most 64 MiB, strict UTF-8 */
    cJSON *root = text ? es_json_parse(text, NULL) : NULL;
    int flaw = 0;
    if (root && (!cJSON_IsObject(root) || es_manifest_text_flaw(text, &flaw) >= 0 || es_json_keep_last_keys(root) ||
                 !rows_match(cJSON_GetObjectItemCaseSensitive(root, "results"), artifacts))) {
        cJSON_Delete(root);
        root = NULL;
    }
    free(text);
    free(path);
    return root;
}

int es_parity_scored(const cJSON *record, const cJSON *a, const char *runner) {
    return has_row(cJSON_GetObjectItemCaseSensitive(record, "results"), es_json_string_at(a, "file"), runner);
}
