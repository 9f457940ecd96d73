/* Private to libedgeseg: the warnings of a segment call, and a segmenter's channel for them
 * (es_set_warning_callback, es_last_warnings in edgeseg.h). */
#ifndef ES_WARNINGS_H
#define ES_WARNINGS_H

#include <pthread.h>

#include "es_runtime.h"

/* The warnings one segment call gives, in the order found; at most ES_MAX_WARNINGS. */
typedef struct {
    int count;
    es_warning items[ES_MAX_WARNINGS];
} es_warning_list;

/* Add warning `code` with the one line `message` (cut as es_fail cuts it) to `list`; a list that
 * is full keeps its first ES_MAX_WARNINGS. */
void es_warn(es_warning_list *list, int code, const char *message);

/* A segmenter's channel: the warnings of the call that finished last under `lock` (held for a
 * copy only), the callback under `calling`, a recursive mutex held while the callback runs, so
 * that es_set_warning_callback returns once no call of the callback it replaced is running, and
 * a callback may still call into the segmenter on its own thread. */
typedef struct {
    pthread_mutex_t lock;
    es_warning_list last;
    pthread_mutex_t calling;
    es_warning_fn fn;
    void *user;
} es_warning_channel;

int es_channel_init(es_warning_channel *channel); /* 0, or -1 where no mutex could be made */
void es_channel_destroy(es_warning_channel *channel);
void es_channel_set(es_warning_channel *channel, es_warning_fn fn, void *user);
/* Keep `list` as the last call's warnings, then give each to the callback there is, on this thread. */
void es_channel_deliver(es_warning_channel *channel, const es_warning_list *list);
/* Copy up to `capacity` of the last call's warnings to `out`; returns how many that call gave. */
int es_channel_copy(es_warning_channel *channel, es_warning *out, int capacity);

#endif
