/* The loaded artifact is the file that was exported: size and sha256 against the manifest, every
 * tensor inside it and the form of an ONNX model (onnx_form.c) before OpenVINO sees it. SHA-256
 * comes from OpenSSL's libcrypto (EVP interface). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "es_runtime.h"

#define CHUNK (1 << 20)

int es_sha256_file(FILE *fh, char hex[65]) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    unsigned char *buf = malloc(CHUNK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = buf && ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    size_t got;
    while (ok && (got = fread(buf, 1, CHUNK, fh)) > 0) ok = EVP_DigestUpdate(ctx, buf, got) == 1;
    ok = ok && !ferror(fh) && EVP_DigestFinal_ex(ctx, digest, &len) == 1 && len == 32;
    for (unsigned int i = 0; ok && i < len; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    EVP_MD_CTX_free(ctx);
    free(buf);
    return ok ? 0 : -1;
}

int es_bundle_verify(const char *dir, const es_bundle *b, es_error *err) {
    size_t n = strlen(dir) + strlen(b->artifact_file) + 2;
    char *path = malloc(n);
    if (!path) return es_fail(err, ES_ENOMEM, "no memory for a path");
    snprintf(path, n, "%s/%s", dir, b->artifact_file);
    struct stat st;
    FILE *fh = NULL;
    char hex[65] = {0};
    long long flaw = 0;
    int external = 0;
    es_external_tensor found;
    int rc = ES_OK;
    if ((rc = es_inside_bundle(dir, b->artifact_file, err)) != ES_OK) {
        /* err says which file and where it leads */
    } else if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = es_fail(err, ES_EBUNDLE, "bundle %s: artifact %s (%s) is missing", dir, b->artifact_file, b->artifact_key);
    } else if ((long long)st.st_size != b->artifact_bytes) {
        rc = es_fail(err, ES_EBUNDLE, "bundle %s: %s is %lld bytes, manifest says %lld (tampered or truncated)", dir,
                     b->artifact_file, (long long)st.st_size, b->artifact_bytes);
    } else if (!(fh = fopen(path, "rb"))) {
        rc = es_fail(err, ES_EBUNDLE, "bundle %s: cannot read %s (%s)", dir, b->artifact_file, strerror(errno));
    } else if (es_sha256_file(fh, hex) != 0) {
        rc = es_fail(err, ES_EBUNDLE, "bundle %s: reading %s for its sha256 failed", dir, b->artifact_file);
    } else if (strcmp(hex, b->sha256) != 0) {
        rc = es_fail(err, ES_EBUNDLE, "bundle %s: sha256 of %s is %.12s..., manifest says %.12s... (tampered)", dir,
                     b->artifact_file, hex, b->sha256);
    } else if ((external = es_onnx_external(fh, (long long)st.st_size, &found, &flaw)) > 0) {
        /* as verify_artifacts refuses it (BundleError): before OpenVINO reads that other file */
        rc = es_fail(err, ES_EBUNDLE, "bundle %s: %s keeps tensor %s in another file (%s), which the manifest's sha256 "
                     "does not cover; edgeseg bundles hold every tensor in the graph", dir, b->artifact_file, found.name,
                     found.location);
    } else if (external < 0 || (flaw = es_onnx_form_flaw(fh, (long long)st.st_size)) >= 0) {
        /* ES_EBACKEND, as the Python runtime's runners refuse it (BackendError) */
        rc = es_fail(err, ES_EBACKEND, "openvino could not load %s: not an ONNX model (its protobuf ModelProto form "
                     "breaks at byte %lld)", b->artifact_file, flaw);
    }
    if (fh) fclose(fh);
    free(path);
    return rc;
}
