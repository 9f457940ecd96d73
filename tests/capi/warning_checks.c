/* Drives libedgeseg's warning channel for tests/capi/test_warnings.py (and its sanitizer run).
 * Prints one tab-separated record a line; exit 0 whenever the library returned, so a crash or a
 * sanitizer report is the only way to a non-zero exit.
 *
 *   warning_checks calls Z Y X BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw
 *       setlocale(LC_ALL, "") once its arguments are read, es_set_warning_callback, then es_segment_volume_spaced of raw int16 at spacing (Z, Y, X)
 *       mm twice (labels of the first to OUT.raw), es_segment_slice of its first slice, the
 *       callback removed, a spaced call, one refused for a NULL spacing, a spaced call again and
 *       one refused for zero slices. Per call: "call<TAB>RC<TAB>COUNT", one
 *       "callback<TAB>CODE<TAB>SEEN<TAB>MESSAGE" per callback (SEEN: es_last_warnings inside it)
 *       and one "last<TAB>CODE<TAB>MESSAGE" per es_last_warnings entry after it; then
 *       "null<TAB>SET-RC<TAB>LAST" for a NULL segmenter.
 *   warning_checks threads N CALLS Z Y X BUNDLE ROWS COLS IN.raw
 *       N threads share one segmenter, each making CALLS spaced calls of one slice: the
 *       odd-numbered ones at (Z, Y, X), the even ones at a spacing inside the training FOV
 *       (Y = X = 192 mm / COLS). Prints "thread<TAB>I<TAB>CALLBACKS<TAB>FAILED": the callbacks each
 *       thread saw on itself and its calls that failed.
 *   warning_checks swap N CALLS Z Y X BUNDLE ROWS COLS IN.raw
 *       N threads each make CALLS spaced calls of one slice, the odd-numbered at (Z, Y, X), the
 *       even inside the training FOV (as in "threads"), while the main thread
 *       replaces the callback's `user` with a fresh one and frees the old as soon as
 *       es_set_warning_callback returns. Prints "swap<TAB>HEARD<TAB>STALE<TAB>FAILED": the
 *       callbacks over all `user`s, those inside which es_last_warnings did not give one
 *       field-of-view warning, and the calls that failed.
 */
#include "capi_driver.h" /* first: the sanitizer builds' dlopen shim, read_raw */
#include <locale.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <edgeseg.h>

/* The callback of the "calls" case: its record, and what es_last_warnings says inside it. */
static void print_warning(void *user, int code, const char *message) {
    printf("callback\t%d\t%d\t%s\n", code, es_last_warnings((es_segmenter *)user, NULL, 0), message);
}

static void report_call(es_segmenter *seg, int rc) {
    es_warning found[ES_MAX_WARNINGS];
    int count = es_last_warnings(seg, found, ES_MAX_WARNINGS);
    printf("call\t%d\t%d\n", rc, count);
    for (int i = 0; i < count && i < ES_MAX_WARNINGS; i++) printf("last\t%d\t%s\n", found[i].code, found[i].message);
}

static int calls_case(char **argv) {
    const double spacing[3] = {strtod(argv[2], NULL), strtod(argv[3], NULL), strtod(argv[4], NULL)};
    int slices = atoi(argv[7]), rows = atoi(argv[8]), cols = atoi(argv[9]);
    setlocale(LC_ALL, ""); /* as an application may: the environment's LC_NUMERIC from here on */
    size_t plane = (size_t)rows * cols, count = (size_t)slices * plane;
    int16_t *hu = read_raw(argv[10], count);
    uint8_t *labels = malloc(count), *scratch = malloc(count);
    es_error err = {0, ""};
    if (!hu || !labels || !scratch) return 65;
    es_segmenter *seg = es_open(argv[5], argv[6], 0, &err);
    if (!seg) {
        printf("open\t%d\t%s\n", err.code, err.message);
        return 0;
    }
    printf("before\t%d\n", es_last_warnings(seg, NULL, 0));
    int rc = es_set_warning_callback(seg, print_warning, seg, &err);
    printf("set\t%d\n", rc);
    rc = es_segment_volume_spaced(seg, hu, ES_INT16, slices, rows, cols, cols, (ptrdiff_t)plane, spacing, labels, &err);
    report_call(seg, rc);
    FILE *out = rc == ES_OK ? fopen(argv[11], "wb") : NULL;
    if (out) {
        fwrite(labels, 1, count, out);
        fclose(out);
    }
    rc = es_segment_volume_spaced(seg, hu, ES_INT16, slices, rows, cols, cols, (ptrdiff_t)plane, spacing, scratch, &err);
    report_call(seg, rc);
    rc = es_segment_slice(seg, hu, ES_INT16, rows, cols, cols, scratch, &err);
    report_call(seg, rc);
    es_set_warning_callback(seg, NULL, NULL, &err);
    for (int refusal = 0; refusal < 2; refusal++) { /* a warned call, then a refused one: no warnings left */
        rc = es_segment_volume_spaced(seg, hu, ES_INT16, slices, rows, cols, cols, (ptrdiff_t)plane, spacing, scratch, &err);
        report_call(seg, rc);
        rc = refusal ? es_segment_volume(seg, hu, ES_INT16, 0, rows, cols, cols, (ptrdiff_t)plane, scratch, &err)
                     : es_segment_volume_spaced(seg, hu, ES_INT16, slices, rows, cols, cols, (ptrdiff_t)plane, NULL,
                                                scratch, &err);
        report_call(seg, rc);
    }
    es_close(seg);
    printf("null\t%d\t%d\n", es_set_warning_callback(NULL, print_warning, NULL, &err), es_last_warnings(NULL, NULL, 0));
    free(hu);
    free(labels);
    free(scratch);
    return 0;
}

/* The "threads" case: each thread counts the callbacks it sees in its own slot (pthread key). */
static pthread_key_t seen_key;

static void count_warning(void *user, int code, const char *message) {
    (void)user;
    int *seen = pthread_getspecific(seen_key);
    if (seen && code == ES_WARN_FIELD_OF_VIEW && strstr(message, "field of view")) (*seen)++;
}

typedef struct {
    es_segmenter *seg;
    const int16_t *hu;
    int rows, cols, calls;
    double spacing[3];
    int seen, failed;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    uint8_t *labels = malloc((size_t)w->rows * w->cols);
    pthread_setspecific(seen_key, &w->seen);
    for (int i = 0; i < w->calls; i++) {
        es_error err;
        w->failed += !labels || es_segment_volume_spaced(w->seg, w->hu, ES_INT16, 1, w->rows, w->cols, w->cols,
                                                         (ptrdiff_t)w->rows * w->cols, w->spacing, labels, &err) != ES_OK;
    }
    free(labels);
    return NULL;
}

/* What the "threads" and "swap" cases share: a segmenter, one slice, N workers and their threads. */
typedef struct {
    es_segmenter *seg;
    int16_t *hu;
    int n;
    worker workers[16];
    pthread_t ids[16];
} shared;

/* Open the segmenter and read the slice of argv (see the top); 0, or -1 (reported) where either fails. */
static int open_shared(char **argv, shared *s) {
    int rows = atoi(argv[8]), cols = atoi(argv[9]);
    s->n = atoi(argv[2]);
    s->hu = s->n >= 1 && s->n <= 16 ? read_raw(argv[10], (size_t)rows * cols) : NULL;
    es_error err = {0, ""};
    s->seg = s->hu ? es_open(argv[7], "fp32", 0, &err) : NULL;
    if (s->seg) return 0;
    printf("open\t%d\t%s\n", err.code, err.message);
    free(s->hu);
    return -1;
}

/* Start the workers on `run`: the odd-numbered at (Z, Y, X), the even inside the training FOV. */
static void start_workers(char **argv, shared *s, void *(*run)(void *)) {
    int rows = atoi(argv[8]), cols = atoi(argv[9]);
    pthread_key_create(&seen_key, NULL);
    for (int i = 0; i < s->n; i++) {
        double inside = 192.0 / cols, y = i % 2 ? strtod(argv[5], NULL) : inside, x = i % 2 ? strtod(argv[6], NULL) : inside;
        s->workers[i] = (worker){s->seg, s->hu, rows, cols, atoi(argv[3]), {strtod(argv[4], NULL), y, x}, 0, 0};
        pthread_create(&s->ids[i], NULL, run, &s->workers[i]);
    }
}

static void close_shared(shared *s) {
    for (int i = 0; i < s->n; i++) pthread_join(s->ids[i], NULL);
    es_close(s->seg);
    pthread_key_delete(seen_key);
    free(s->hu);
}

static int threads_case(char **argv) {
    shared s;
    es_error err;
    if (open_shared(argv, &s)) return 0;
    es_set_warning_callback(s.seg, count_warning, NULL, &err);
    start_workers(argv, &s, work);
    close_shared(&s); /* joins the workers */
    for (int i = 0; i < s.n; i++) printf("thread\t%d\t%d\t%d\n", i, s.workers[i].seen, s.workers[i].failed);
    return 0;
}

/* The "swap" case: a `user` lives from its es_set_warning_callback until the next one returns. */
typedef struct {
    es_segmenter *seg;
    int heard, stale;
} listener;

static void listen_warning(void *user, int code, const char *message) {
    listener *l = user; /* callbacks take turns: plain counters suffice */
    es_warning found[ES_MAX_WARNINGS];
    int count = es_last_warnings(l->seg, found, ES_MAX_WARNINGS);
    l->heard++;
    l->stale += count != 1 || found[0].code != code || strcmp(found[0].message, message) != 0;
}

static int finished;

static void *work_then_finish(void *arg) {
    work(arg);
    __atomic_add_fetch(&finished, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static int swap_case(char **argv) {
    shared s;
    es_error err;
    if (open_shared(argv, &s)) return 0;
    listener *now = calloc(1, sizeof *now);
    if (!now) return 65;
    now->seg = s.seg;
    es_set_warning_callback(s.seg, listen_warning, now, &err);
    start_workers(argv, &s, work_then_finish);
    int heard = 0, stale = 0, failed = 0;
    while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < s.n) {
        listener *next = calloc(1, sizeof *next), *old = now;
        if (!next) break;
        next->seg = s.seg;
        es_set_warning_callback(s.seg, listen_warning, next, &err);
        heard += old->heard, stale += old->stale;
        free(old); /* no callback runs with it any more */
        now = next;
        sched_yield();
    }
    close_shared(&s); /* joins the workers */
    for (int i = 0; i < s.n; i++) failed += s.workers[i].failed;
    heard += now->heard, stale += now->stale;
    free(now);
    printf("swap\t%d\t%d\t%d\n", heard, stale, failed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 12 && !strcmp(argv[1], "calls")) return calls_case(argv);
    if (argc == 11 && !strcmp(argv[1], "threads")) return threads_case(argv);
    if (argc == 11 && !strcmp(argv[1], "swap")) return swap_case(argv);
    fprintf(stderr, "usage: see the comment at the top of warning_checks.c\n");
    return 64;
}
