/* Status reporting of libedgeseg: codes, one-line messages, version. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* newlocale, uselocale */
#endif
#include <locale.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_c_numbers.h"
#include "es_runtime.h"

/* Bytes of a too-long message kept before the " ... " (the rest of the room goes to its end). */
#define ES_MESSAGE_HEAD 96

/* Where a cut at `at` may go without splitting a UTF-8 sequence: back over continuation bytes. */
static size_t char_start(const char *text, size_t at) {
    while (at > 0 && ((unsigned char)text[at] & 0xC0) == 0x80) at--;
    return at;
}

/* Head and tail of `full` (length `len`, over the message size) joined by " ... ": a long path
 * (a bundle folder, its manifest) sits at the start or middle of most messages, the problem's
 * words at their end, so a cut in the middle keeps what went wrong. */
static void shorten_into(char *message, size_t size, const char *full, size_t len) {
    static const char gap[] = " ... ";
    size_t head = char_start(full, ES_MESSAGE_HEAD < size / 2 ? ES_MESSAGE_HEAD : size / 4);
    size_t tail_room = size - 1 - head - (sizeof gap - 1);
    size_t tail = len - tail_room;
    while (tail < len && ((unsigned char)full[tail] & 0xC0) == 0x80) tail++;
    memcpy(message, full, head);
    memcpy(message + head, gap, sizeof gap - 1);
    memcpy(message + head + sizeof gap - 1, full + tail, len - tail + 1);
}

/* The "C" locale's numbers for every message and every JSON text: an application that called
 * setlocale(LC_ALL, "") under a comma-decimal LC_NUMERIC would otherwise read "2,88 mm" where
 * Python writes "2.88 mm", and cJSON's strtod would stop at the "." of a manifest's "0.5".
 * Made once, never freed (a locale_t is shared by every thread that uses it). */
static locale_t c_numbers;
static pthread_once_t c_numbers_once = PTHREAD_ONCE_INIT;

static void make_c_numbers(void) { c_numbers = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

locale_t es_c_numbers_use(void) {
    pthread_once(&c_numbers_once, make_c_numbers);
    return c_numbers ? uselocale(c_numbers) : (locale_t)0; /* without one: the thread's own */
}

void es_c_numbers_restore(locale_t before) {
    if (before) uselocale(before);
}

int es_vformat(char *buf, size_t size, const char *fmt, va_list args) {
    locale_t before = es_c_numbers_use();
    int len = vsnprintf(buf, size, fmt, args);
    es_c_numbers_restore(before);
    return len;
}

int es_format(char *buf, size_t size, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    int len = es_vformat(buf, size, fmt, args);
    va_end(args);
    return len;
}

int es_fail(es_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list args, again;
        va_start(args, fmt);
        va_copy(again, args);
        err->code = code;
        int len = es_vformat(err->message, sizeof err->message, fmt, args);
        char *full = len >= (int)sizeof err->message ? malloc((size_t)len + 1) : NULL;
        if (full && es_vformat(full, (size_t)len + 1, fmt, again) == len)
            shorten_into(err->message, sizeof err->message, full, (size_t)len);
        free(full); /* without memory for it, the message stays cut at its end */
        va_end(again);
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

const char *es_version(void) { return ES_VERSION_STRING; }

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
