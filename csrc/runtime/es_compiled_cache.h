/* Private to libedgeseg: compiled-model cache entries shared with the Python runtime
 * (edgeseg/runtime/compiled_cache.py has the layout). */
#ifndef ES_COMPILED_CACHE_H
#define ES_COMPILED_CACHE_H

#include "es_runtime.h"

#define ES_CACHE_PATH 4096

typedef struct {
    char final[ES_CACHE_PATH];   /* ROOT/SHA16-KEY12; "" without a cache */
    char partial[ES_CACHE_PATH]; /* the private folder being built; "" unless building */
    int hit;                     /* final holds a verified entry */
} es_cache_entry;

/* The entry of `sha256` (the artifact's) and `engine_key` under `root` (NULL or "": no cache):
 * a verified entry is a hit; a stale or damaged one is deleted and a private folder made to
 * build a new one in (none when `root` cannot be written). */
void es_cache_prepare(const char *root, const char *sha256, const char *engine_key, es_cache_entry *e);

/* The folder to hand the engine as its cache: the entry on a hit, else the private folder, else NULL. */
const char *es_cache_folder(const es_cache_entry *e);

/* Record the private folder's files and rename it into place (it is removed if that fails). */
void es_cache_publish(es_cache_entry *e);

/* Remove the private folder (the engine failed to build into it). */
void es_cache_abandon(es_cache_entry *e);

/* Move the entry aside and delete it (a hit the engine refused). */
void es_cache_discard(es_cache_entry *e);

#endif
