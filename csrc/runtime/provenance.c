/* The provenance record of an open bundle (es_provenance): the values edgeseg's Python runtime
 * writes into its outputs (edgeseg/runtime/provenance.py) for the same bundle and artifact on
 * OpenVINO, so that a C application's results name the same model, byte for byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openvino/c/openvino.h>

#include "cJSON.h"
#include "es_runtime.h"

int es_bundle_provenance(const cJSON *root, const char *text, es_bundle *b, const char *dir, es_error *err) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    /* the bytes read (es_manifest_text refuses a NUL byte, so strlen is the file's size) */
    if (EVP_Digest(text, strlen(text), digest, &len, EVP_sha256(), NULL) != 1 || len != 32)
        return es_fail(err, ES_EBUNDLE, "bundle %s: computing the manifest's sha256 failed", dir);
    for (unsigned int i = 0; i < len; i++) snprintf(b->manifest_sha256 + 2 * i, 3, "%02x", digest[i]);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *source = cJSON_GetObjectItemCaseSensitive(root, "source");
    const struct { const cJSON *obj; const char *key; char **to; } fields[] = {
        {model, "name", &b->architecture}, {root, "created", &b->created},
        {root, "edgeseg_version", &b->edgeseg_version}, {source, "sha256", &b->checkpoint_sha256}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const cJSON *obj = fields[i].obj;
        const cJSON *item = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, fields[i].key) : NULL;
        if (!cJSON_IsString(item) || !*item->valuestring) continue; /* Python leaves an empty value out */
        if (!(*fields[i].to = strdup(item->valuestring)))
            return es_fail(err, ES_ENOMEM, "bundle %s: no memory for the manifest's %s", dir, fields[i].key);
    }
    ov_version_t version = {NULL, NULL};
    if (ov_get_openvino_version(&version) == OK && version.buildNumber) {
        snprintf(b->backend_version, sizeof b->backend_version, "%s", version.buildNumber);
        ov_version_free(&version);
    }
    return ES_OK;
}

void es_bundle_provenance_free(es_bundle *b) {
    free(b->architecture);
    free(b->created);
    free(b->edgeseg_version);
    free(b->checkpoint_sha256);
    b->architecture = b->created = b->edgeseg_version = b->checkpoint_sha256 = NULL;
}

const char *es_bundle_provenance_value(const es_bundle *b, const char *key, int mirrors) {
    if (!b || !key) return NULL;
    const char *tta = mirrors == 4 ? "mirror" : mirrors == 2 ? "flip" : "none";
    const char *precision = strncmp(b->artifact_key, "onnx-", 5) == 0 ? b->artifact_key + 5 : NULL;
    const struct { const char *key, *value; } record[] = {
        {"software", "edgeseg"}, {"software_version", es_version()}, {"architecture", b->architecture},
        {"manifest_sha256", b->manifest_sha256}, {"bundle_created", b->created},
        {"bundle_edgeseg_version", b->edgeseg_version}, {"checkpoint_sha256", b->checkpoint_sha256},
        {"artifact", b->artifact_file}, {"artifact_sha256", b->sha256}, {"backend", "openvino"},
        {"precision", precision}, {"device", "cpu"}, {"backend_version", b->backend_version}, {"tta", tta}};
    for (size_t i = 0; i < sizeof record / sizeof record[0]; i++)
        if (strcmp(key, record[i].key) == 0) return record[i].value && *record[i].value ? record[i].value : NULL;
    return NULL;
}
