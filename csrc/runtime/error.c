/* Status reporting of libedgeseg: codes, one-line messages, version. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "es_runtime.h"

#ifndef EDGESEG_VERSION
#error "build with -DEDGESEG_VERSION=\"x.y.z\" (the Makefile reads it from pyproject.toml)"
#endif

int es_fail(es_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list args;
        va_start(args, fmt);
        err->code = code;
        vsnprintf(err->message, sizeof err->message, fmt, args);
        va_end(args);
        /* one line, whatever a manifest string or a library message brought in */
        for (char *c = err->message; *c; c++)
            if ((unsigned char)*c < 0x20) *c = ' ';
    }
    return code;
}

int es_succeed(es_error *err) {
    if (err) {
        err->code = ES_OK;
        err->message[0] = '\0';
    }
    return ES_OK;
}

const char *es_version(void) { return EDGESEG_VERSION; }

const char *es_code_message(int code) {
    switch (code) {
    case ES_EBUNDLE: return "bundle missing, invalid or tampered";
    case ES_EBACKEND: return "OpenVINO could not load or run the model";
    case ES_EDATA: return "input is not CT HU this bundle can segment";
    default: return es_status_message(code);
    }
}

void es_one_line(const char *detail, char *line, size_t size) {
    size_t used = 0;
    line[0] = '\0';
    for (const char *at = detail; *at && used + 1 < size;) {
        size_t len = strcspn(at, "\n");
        while (len && (at[len - 1] == '\r' || at[len - 1] == ' ')) len--;
        while (len && *at == ' ') at++, len--;
        int location = len > 15 && strncmp(at, "Exception from ", 15) == 0 && at[len - 1] == ':';
        if (len && !location) {
            int wrote = snprintf(line + used, size - used, "%s%.*s", used ? " " : "", (int)len, at);
            used = wrote < 0 ? size : used + (size_t)wrote;
        }
        at += strcspn(at, "\n");
        if (*at) at++;
    }
    if (used >= size && size > 4) strcpy(line + size - 4, "...");
}
