/* The loaded artifact is the file that was exported: size and sha256 against the manifest, and
 * the form of an ONNX model before OpenVINO sees it. SHA-256 comes from OpenSSL's libcrypto (EVP
 * interface). */
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
    long flaw = 0;
    int rc = ES_OK;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
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
    } else if (fseeko(fh, 0, SEEK_SET) != 0 || (flaw = es_onnx_form_flaw(fh, (long long)st.st_size)) >= 0) {
        /* ES_EBACKEND, as the Python runtime's runners refuse it (BackendError) */
        rc = es_fail(err, ES_EBACKEND, "openvino could not load %s: not an ONNX model (its protobuf ModelProto form "
                     "breaks at byte %ld)", b->artifact_file, flaw);
    }
    if (fh) fclose(fh);
    free(path);
    return rc;
}

static int read_varint(FILE *fh, unsigned long long *value) {
    *value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        int c = fgetc(fh);
        if (c == EOF) return 0;
        *value |= (unsigned long long)(c & 0x7F) << shift;
        if (!(c & 0x80)) return 1;
    }
    return 0;
}

long es_onnx_form_flaw(FILE *fh, long long size) {
    /* ModelProto's fields (onnx.proto) as 1 + wire type: ir_version and model_version varints (0),
     * the strings, graph, opset_import, metadata_props, training_info, functions and
     * configuration length-delimited (2); 0: not a field of today's onnx.proto. A field it does
     * not name (a later onnx's) is skipped as protobuf skips unknown fields, by its wire type:
     * varint, 64-bit, length-delimited or 32-bit (groups and wire types 6 and 7 are no form). */
    static const unsigned char wire[27] = {0, 1, 3, 3, 3, 1, 3, 3, 3, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 3, 3};
    int ir_version = 0, graph = 0;
    for (long long at = 0; at < size; at = (long long)ftello(fh)) {
        unsigned long long tag, value = 0;
        if (!read_varint(fh, &tag) || (tag >> 3) == 0) return (long)at;
        unsigned long long field = tag >> 3, type = tag & 7;
        int known = field < sizeof wire && wire[field] != 0;
        if (known ? wire[field] != type + 1 : !(type == 0 || type == 1 || type == 2 || type == 5)) return (long)at;
        if (type == 0 || type == 2) {
            if (!read_varint(fh, &value)) return (long)at;
        } else {
            value = type == 1 ? 8 : 4;  /* fixed64 / fixed32: skipped as a length */
        }
        if (type != 0 && (value > (unsigned long long)(size - ftello(fh)) || fseeko(fh, (off_t)value, SEEK_CUR) != 0))
            return (long)at;
        ir_version |= field == 1;
        graph |= field == 7;
    }
    return ir_version && graph ? -1 : (long)size;
}
