/* The warning channel of a segmenter: what a segment call still segments but its caller should
 * know, where the Python runtime logs a warning with the same text. libedgeseg prints nothing, so
 * a warning reaches the application through its callback and es_last_warnings alone. */
#include <string.h>

#include "es_warnings.h"

void es_warn(es_warning_list *list, int code, const char *message) {
    if (list->count >= ES_MAX_WARNINGS) return;
    es_error line;
    es_fail(&line, code, "%s", message); /* the length limit and one-line rule of es_error */
    es_warning *w = &list->items[list->count++];
    w->code = code;
    memcpy(w->message, line.message, sizeof w->message);
}

int es_channel_init(es_warning_channel *channel) {
    memset(channel, 0, sizeof *channel);
    pthread_mutexattr_t recursive;
    if (pthread_mutexattr_init(&recursive) != 0) return -1;
    int ok = pthread_mutexattr_settype(&recursive, PTHREAD_MUTEX_RECURSIVE) == 0 &&
             pthread_mutex_init(&channel->calling, &recursive) == 0;
    pthread_mutexattr_destroy(&recursive);
    if (ok && pthread_mutex_init(&channel->lock, NULL) == 0) return 0;
    if (ok) pthread_mutex_destroy(&channel->calling);
    return -1;
}

void es_channel_destroy(es_warning_channel *channel) {
    pthread_mutex_destroy(&channel->lock);
    pthread_mutex_destroy(&channel->calling);
}

void es_channel_set(es_warning_channel *channel, es_warning_fn fn, void *user) {
    pthread_mutex_lock(&channel->calling); /* waits for a callback running on another thread */
    channel->fn = fn;
    channel->user = user;
    pthread_mutex_unlock(&channel->calling);
}

void es_channel_deliver(es_warning_channel *channel, const es_warning_list *list) {
    /* `calling` first, so that no other thread's call replaces this list while the callback runs:
     * es_last_warnings inside it gives this call's list (unless the callback segments again). */
    pthread_mutex_lock(&channel->calling);
    pthread_mutex_lock(&channel->lock);
    channel->last.count = list->count;
    memcpy(channel->last.items, list->items, (size_t)list->count * sizeof list->items[0]);
    pthread_mutex_unlock(&channel->lock);
    /* `lock` is free: the callback may call es_last_warnings, or segment again on this thread */
    for (int i = 0; channel->fn && i < list->count; i++)
        channel->fn(channel->user, list->items[i].code, list->items[i].message);
    pthread_mutex_unlock(&channel->calling);
}

int es_channel_copy(es_warning_channel *channel, es_warning *out, int capacity) {
    pthread_mutex_lock(&channel->lock);
    int count = channel->last.count;
    int copied = out && capacity > 0 ? (capacity < count ? capacity : count) : 0;
    if (copied) memcpy(out, channel->last.items, (size_t)copied * sizeof channel->last.items[0]);
    pthread_mutex_unlock(&channel->lock);
    return count;
}
