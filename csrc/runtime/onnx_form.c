/* An ONNX file read as the protobuf it is, from the open file, as edgeseg/runtime/onnx_form.py
 * reads it: the top-level form of a ModelProto, and the first tensor whose bytes lie in another
 * file. OpenVINO reads such a file when it loads the graph, and the manifest's sha256 covers the
 * .onnx file only. Every read is bounded by the message it belongs to and by the file's size,
 * and the walk by protobuf's nesting limit: a hostile file is refused, never read past. */
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include "es_runtime.h"

/* protobuf's default recursion limit, which the parsers in OpenVINO and ONNX Runtime keep: a
 * message nested deeper (groups count) is refused by them, so the walk refuses it too. */
#define MAX_NESTING 100
#define MAX_FIELD ((1ULL << 29) - 1) /* protobuf's largest field number */
#define NAME_CHARS 80                /* onnx_form.py quotes 80 characters of a name */

typedef struct {
    FILE *fh;
    long long pos; /* where fh stands */
} source;

typedef struct {
    unsigned long long number, value; /* value: a varint's, or a length-delimited field's length */
    int wire, huge;                   /* huge: a varint beyond 64 bits (Python's ints hold it) */
    long long at, start, end;         /* the field's first byte; a length-delimited value's range */
} field;

static int move_to(source *s, long long pos) {
    if (pos == s->pos) return 1;
    if (fseeko(s->fh, (off_t)pos, SEEK_SET) != 0) return 0;
    s->pos = pos;
    return 1;
}

/* At most ten bytes (as onnx_form.varint), none at or past `end`. */
static int varint(source *s, long long end, unsigned long long *value, int *huge) {
    *value = 0;
    *huge = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
        int c = s->pos < end ? fgetc(s->fh) : EOF;
        if (c == EOF) return 0;
        s->pos++;
        if (shift == 63 && (c & 0x7E)) *huge = 1;
        *value |= (unsigned long long)(c & (shift == 63 ? 0x01 : 0x7F)) << shift;
        if (!(c & 0x80)) return 1;
    }
    return 0;
}

/* One field (or a group's start or end tag) at s->pos inside a message ending at `end`; the
 * source stands after it. 0 where the form breaks there, as onnx_form._field raises. */
static int next_tag(source *s, long long end, field *f) {
    unsigned long long key;
    f->at = f->start = f->end = s->pos;
    f->value = 0;
    if (!varint(s, end, &key, &f->huge) || f->huge) return 0;
    f->number = key >> 3;
    f->wire = (int)(key & 7);
    if (f->number < 1 || f->number > MAX_FIELD) return 0;
    unsigned long long width = 0;
    if (f->wire == 0) return varint(s, end, &f->value, &f->huge);
    if (f->wire == 1 || f->wire == 5) width = f->wire == 1 ? 8 : 4;
    else if (f->wire == 2 && !varint(s, end, &width, &f->huge)) return 0;
    else if (f->wire == 3 || f->wire == 4) return 1;
    else if (f->wire != 2) return 0;
    if (f->huge || width > (unsigned long long)(end - s->pos)) return 0;
    f->value = width;
    f->start = s->pos;
    f->end = s->pos + (long long)width;
    return move_to(s, f->end);
}

/* The next field of a message (onnx_form.fields); a group is skipped whole and comes back as a
 * field of wire type 3, which no caller reads. `room`: the levels of nesting left for groups. */
static int next_field(source *s, long long end, int room, field *f) {
    if (!next_tag(s, end, f) || f->wire == 4) return 0; /* 4: the end of a group none opened */
    unsigned long long opened[MAX_NESTING];
    int open = 0;
    if (f->wire == 3) {
        if (room < 1) return 0;
        opened[open++] = f->number;
    }
    while (open > 0) {
        field inner;
        if (!next_tag(s, end, &inner)) return 0;
        if (inner.wire == 3) {
            if (open >= room || open >= MAX_NESTING) return 0;
            opened[open++] = inner.number;
        } else if (inner.wire == 4 && inner.number != opened[--open]) {
            return 0;
        }
    }
    return 1;
}

long es_onnx_form_flaw(FILE *fh, long long size) {
    /* ModelProto's fields (onnx.proto) as 1 + wire type: ir_version and model_version varints (0),
     * the strings, graph, opset_import, metadata_props, training_info, functions and
     * configuration length-delimited (2); 0: not a field of today's onnx.proto. A field it does
     * not name (a later onnx's) is skipped as protobuf skips unknown fields, by its wire type:
     * varint, 64-bit, length-delimited, 32-bit or a group (wire types 6 and 7 are no form). */
    static const unsigned char wire[27] = {0, 1, 3, 3, 3, 1, 3, 3, 3, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 3, 3};
    source s = {fh, 0};
    int ir_version = 0, graph = 0;
    if (fseeko(fh, 0, SEEK_SET) != 0) return 0;
    while (s.pos < size) {
        field f;
        if (!next_field(&s, size, MAX_NESTING, &f)) return (long)f.at;
        int known = f.number < sizeof wire && wire[f.number] != 0;
        if (known && wire[f.number] != f.wire + 1) return (long)f.at;
        ir_version |= f.number == 1;
        graph |= f.number == 7;
    }
    return ir_version && graph ? -1 : (long)size;
}

/* The messages through which a TensorProto is reached (onnx_form._MESSAGES). */
enum { NONE, MODEL, TRAINING, FUNCTION, GRAPH, NODE, ATTRIBUTE, SPARSE, TENSOR };

static int inner_kind(int kind, unsigned long long n) {
    switch (kind) {
    case MODEL: return n == 7 ? GRAPH : n == 20 ? TRAINING : n == 25 ? FUNCTION : NONE;
    case TRAINING: return n == 1 || n == 2 ? GRAPH : NONE;
    case FUNCTION: return n == 7 ? NODE : NONE;
    case GRAPH: return n == 1 ? NODE : n == 5 ? TENSOR : n == 15 ? SPARSE : NONE;
    case NODE: return n == 5 ? ATTRIBUTE : NONE;
    case ATTRIBUTE: return n == 5 || n == 10 ? TENSOR : n == 6 || n == 11 ? GRAPH : n == 22 || n == 23 ? SPARSE : NONE;
    case SPARSE: return n == 1 || n == 2 ? TENSOR : NONE;
    default: return NONE;
    }
}

typedef struct {
    source src;
    long long flaw;
    es_external_tensor *found;
} walk;

static int broken(walk *w, long long at) {
    w->flaw = at;
    return -1;
}

/* One UTF-8 character of s[0..n) as Python's decode("utf-8", "replace") takes it: its length,
 * *valid 0 where it is a maximal invalid subpart (one U+FFFD). */
static size_t utf8_char(const unsigned char *s, size_t n, int *valid) {
    unsigned char c = s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    unsigned char low = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, high = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    *valid = len != 0;
    if (len <= 1) return 1;
    for (size_t i = 1; i < len; i++) {
        if (i >= n || s[i] < (i == 1 ? low : 0x80) || s[i] > (i == 1 ? high : 0xBF)) {
            *valid = 0;
            return i;
        }
    }
    return len;
}

/* The first NAME_CHARS characters of bytes [start, end) of the file, quoted as Python's repr
 * quotes a string, on one line. */
static int quote(walk *w, long long start, long long end, char *out) {
    unsigned char text[NAME_CHARS * 4];
    size_t n = end - start < (long long)sizeof text ? (size_t)(end - start) : sizeof text, used = 0;
    if (!move_to(&w->src, start) || fread(text, 1, n, w->src.fh) != n) return broken(w, start);
    w->src.pos += (long long)n;
    int single = memchr(text, '\'', n) != NULL && memchr(text, '"', n) == NULL;
    char mark = single ? '"' : '\'';
    out[used++] = mark;
    for (size_t at = 0, chars = 0; at < n && chars < NAME_CHARS; chars++) {
        int valid;
        size_t len = utf8_char(text + at, n - at, &valid);
        unsigned c = text[at], next = len > 1 ? text[at + 1] : 0;
        if (!valid) {
            memcpy(out + used, "\xEF\xBF\xBD", 3), used += 3;
        } else if (c == '\\' || c == (unsigned char)mark) {
            out[used++] = '\\', out[used++] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            out[used++] = '\\', out[used++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else if (c < 0x20 || c == 0x7F || (c == 0xC2 && (next < 0xA1 || next == 0xAD))) {
            /* C0, DEL, C1, no-break space and soft hyphen: what Python's repr escapes below U+0100 */
            used += (size_t)sprintf(out + used, "\\x%02x", c == 0xC2 ? next : c);
        } else if (c == 0xE2 && next == 0x80 && (text[at + 2] == 0xA8 || text[at + 2] == 0xA9)) {
            used += (size_t)sprintf(out + used, "\\u%04x", 0x2000u + (text[at + 2] & 0x3Fu)); /* line breaks */
        } else {
            memcpy(out + used, text + at, len), used += len;
        }
        at += len;
    }
    out[used++] = mark;
    out[used] = '\0';
    return 0;
}

/* A TensorProto.external_data entry: where its key is "location", its value becomes *location. */
static int entry(walk *w, long long start, long long end, int depth, long long location[2]) {
    long long key[2] = {-1, -1}, value[2] = {-1, -1};
    field f;
    if (depth > MAX_NESTING) return broken(w, start);
    if (!move_to(&w->src, start)) return broken(w, start);
    while (w->src.pos < end) {
        if (!next_field(&w->src, end, MAX_NESTING - depth, &f)) return broken(w, f.at);
        long long *range = f.wire != 2 ? NULL : f.number == 1 ? key : f.number == 2 ? value : NULL;
        if (range) range[0] = f.start, range[1] = f.end;
    }
    char text[8];
    if (key[0] < 0 || key[1] - key[0] != 8 || value[0] < 0) return 0;
    if (!move_to(&w->src, key[0]) || fread(text, 1, 8, w->src.fh) != 8) return broken(w, key[0]);
    w->src.pos += 8;
    if (memcmp(text, "location", 8) == 0) location[0] = value[0], location[1] = value[1];
    return 0;
}

/* onnx_form._external: 1 where the tensor keeps its bytes in another file (w->found says which). */
static int tensor(walk *w, long long start, long long end, int depth) {
    long long name[2] = {0, 0}, location[2] = {0, 0};
    int external = 0;
    field f;
    if (!move_to(&w->src, start)) return broken(w, start);
    while (w->src.pos < end) {
        if (!next_field(&w->src, end, MAX_NESTING - depth, &f)) return broken(w, f.at);
        if (f.number == 8 && f.wire == 2) {
            name[0] = f.start, name[1] = f.end;
        } else if (f.number == 14 && f.wire == 0 && !f.huge && f.value == 1) { /* DataLocation EXTERNAL */
            external = 1;
        } else if (f.number == 13 && f.wire == 2) {
            external = 1;
            if (entry(w, f.start, f.end, depth + 1, location) < 0 || !move_to(&w->src, f.end)) return -1;
        }
    }
    if (!external) return 0;
    if (quote(w, name[0], name[1], w->found->name) < 0) return -1;
    if (location[1] == location[0]) strcpy(w->found->location, "'?'");
    else if (quote(w, location[0], location[1], w->found->location) < 0) return -1;
    return 1;
}

/* A message of `kind` at nesting `depth`: all its own fields first, then its parts in the file's
 * order, as onnx_form.external_tensor takes them. 1: found, 0: none, -1: the form breaks. */
static int visit(walk *w, int kind, long long start, long long end, int depth) {
    field f;
    if (depth > MAX_NESTING) return broken(w, start);
    if (kind == TENSOR) return tensor(w, start, end, depth);
    for (int pass = 0; pass < 2; pass++) {
        if (!move_to(&w->src, start)) return broken(w, start);
        while (w->src.pos < end) {
            if (!next_field(&w->src, end, MAX_NESTING - depth, &f)) return broken(w, f.at);
            int inner = f.wire == 2 ? inner_kind(kind, f.number) : NONE;
            if (pass == 0 || inner == NONE) continue;
            int found = visit(w, inner, f.start, f.end, depth + 1);
            if (found != 0) return found;
            if (!move_to(&w->src, f.end)) return broken(w, f.end);
        }
    }
    return 0;
}

int es_onnx_external(FILE *fh, long long size, es_external_tensor *found, long long *flaw) {
    walk w = {{fh, -1}, -1, found};
    int rc = visit(&w, MODEL, 0, size, 0);
    *flaw = w.flaw;
    return rc;
}
