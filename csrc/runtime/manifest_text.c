/* manifest.json's bytes: read with a size limit, then refused where Python's reader
 * (edgeseg/runtime/manifest.py read_manifest) refuses them before or while parsing JSON, and
 * where a C string would silently cut a manifest string short. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cJSON.h"
#include "es_runtime.h"

#define MANIFEST_MAX_BYTES (64L << 20) /* a manifest is a few kB; refuse to slurp anything huge */

/* Offset of the first byte of `text` that is not strict UTF-8 (what Python's decoder refuses:
 * stray continuation bytes, overlong forms, surrogates, beyond U+10FFFF), or -1. */
static long invalid_utf8_at(const unsigned char *text, size_t size) {
    for (size_t i = 0; i < size;) {
        const unsigned char c = text[i];
        size_t n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 4;
        if (n == 4 || c == 0xC0 || c == 0xC1 || c > 0xF4 || i + n >= size) return (long)i;
        /* the second byte's range excludes overlong forms, surrogates and code points > U+10FFFF */
        const unsigned char low = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        const unsigned char high = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        for (size_t k = 1; k <= n; k++)
            if (text[i + k] < (k == 1 ? low : 0x80) || text[i + k] > (k == 1 ? high : 0xBF)) return (long)i;
        i += n + 1;
    }
    return -1;
}

char *es_manifest_text(const char *path, const char *dir, es_error *err) {
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) { /* fopen of a FIFO would wait for a writer forever */
        es_fail(err, ES_EBUNDLE, "%s: not a regular file of at most %ld bytes", path, MANIFEST_MAX_BYTES);
        return NULL;
    }
    FILE *fh = fopen(path, "rb");
    if (!fh) {
        es_fail(err, ES_EBUNDLE, "bundle %s has no readable manifest.json (%s)", dir, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    long size = -1, bad = -1;
    if (fseek(fh, 0, SEEK_END) == 0) size = ftell(fh);
    if (size < 0 || size > MANIFEST_MAX_BYTES || fseek(fh, 0, SEEK_SET) != 0) {
        es_fail(err, ES_EBUNDLE, "%s: not a regular file of at most %ld bytes", path, MANIFEST_MAX_BYTES);
    } else if (!(text = malloc((size_t)size + 1))) {
        es_fail(err, ES_ENOMEM, "%s: no memory for %ld bytes", path, size);
    } else if (fread(text, 1, (size_t)size, fh) != (size_t)size) {
        es_fail(err, ES_EBUNDLE, "%s: read failed", path);
    } else if (memchr(text, '\0', (size_t)size)) { /* cJSON would stop there and read the rest as absent */
        es_fail(err, ES_EBUNDLE, "%s: not readable JSON (a NUL byte at byte %ld)", path,
                (long)((char *)memchr(text, '\0', (size_t)size) - text));
    } else if ((bad = invalid_utf8_at((const unsigned char *)text, (size_t)size)) >= 0) {
        es_fail(err, ES_EBUNDLE, "%s: not readable JSON (not UTF-8 at byte %ld)", path, bad);
    } else {
        text[size] = '\0';
        fclose(fh);
        return text;
    }
    free(text);
    fclose(fh);
    return NULL;
}

/* Length of the JSON number at `at` by the grammar -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?,
 * or 0 where cJSON's laxer reading (01, 1., -.5, 1e) goes beyond it. */
static size_t json_number_length(const char *at) {
    const char *p = at + (*at == '-');
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (*p >= '0' && *p <= '9') p++;
    else return 0;
    if (*p == '.') {
        if (!(*++p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p == 'e' || *p == 'E') {
        p += p[1] == '+' || p[1] == '-';
        if (!(*++p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9') p++;
    }
    return strchr("0123456789+-.eE", *p) && *p ? 0 : (size_t)(p - at);
}

long es_manifest_text_flaw(const char *json, int *kind) {
    int in_string = 0;
    for (const char *at = json; *at; at++) {
        *kind = in_string && (unsigned char)*at < 0x20 ? ES_FLAW_CONTROL
                : in_string && at[0] == '\\' && at[1] == 'u' && strncmp(at + 2, "0000", 4) == 0 ? ES_FLAW_NUL
                : !in_string && (*at == '-' || (*at >= '0' && *at <= '9')) && !json_number_length(at) ? ES_FLAW_NUMBER
                /* cJSON skips every byte up to 0x20 between tokens; JSON (and Python) only these four */
                : !in_string && (unsigned char)*at < 0x20 && !strchr("\t\n\r", *at) ? ES_FLAW_SPACE
                : 0;
        if (*kind) return (long)(at - json);
        if (*at == '"') {
            in_string = !in_string;
        } else if (in_string && *at == '\\') {
            at += at[1] != '\0'; /* the escaped character: \" does not end the string, \\ is one backslash */
        } else if (!in_string && (*at == '-' || (*at >= '0' && *at <= '9'))) {
            at += json_number_length(at) - 1;
        }
    }
    return -1;
}

/* The next number of the JSON text at *cursor (outside strings, as the flaw scan reads it): its
 * start, *cursor moved past it; NULL where none is left. */
static const char *next_number(const char **cursor) {
    int in_string = 0;
    for (const char *at = *cursor; *at; at++) {
        if (*at == '"') {
            in_string = !in_string;
        } else if (in_string && *at == '\\') {
            at += at[1] != '\0';
        } else if (!in_string && (*at == '-' || (*at >= '0' && *at <= '9'))) {
            size_t len = json_number_length(at);
            *cursor = at + (len ? len : 1);
            return at;
        }
    }
    return NULL;
}

/* cJSON keeps a number's value, not its text; the numbers of the tree, depth first, are those of
 * the text in order (before duplicate keys are dropped). */
static int mark_fractions(cJSON *node, const char **cursor) {
    for (; node; node = node->next) {
        if (cJSON_IsNumber(node)) {
            const char *at = next_number(cursor);
            if (!at) return -1;
            if (strcspn(at, ".eE") < (size_t)(*cursor - at)) node->type |= ES_JSON_FRACTION;
        }
        if (node->child && mark_fractions(node->child, cursor)) return -1;
    }
    return 0;
}

int es_json_mark_fractions(cJSON *root, const char *json) {
    const char *cursor = json;
    return mark_fractions(root, &cursor) || next_number(&cursor) ? -1 : 0;
}

int es_json_is_integer(const cJSON *item) {
    return cJSON_IsNumber(item) && !(item->type & ES_JSON_FRACTION) && fabs(item->valuedouble) <= 1e15;
}
