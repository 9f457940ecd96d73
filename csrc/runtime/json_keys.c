/* Duplicate keys in manifest.json: Python's json keeps the last value of a key that an object
 * repeats, cJSON's lookups find the first. Removing the earlier ones before anything is read makes
 * both runtimes read the same manifest (a hand-edited one that names "window" twice must not
 * give two windows). The parse and print of JSON text go through here too, in the "C" locale's
 * numbers. */
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "es_c_numbers.h"
#include "es_runtime.h"

typedef struct {
    cJSON *item;
    size_t at; /* position among its siblings */
} keyed;

static int by_key_then_position(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    int c = strcmp(x->item->string, y->item->string);
    return c ? c : (x->at > y->at) - (x->at < y->at);
}

/* Sorting, not comparing every pair: an object of a million keys stays quick to check. */
static int drop_earlier_duplicates(cJSON *object) {
    size_t n = 0;
    for (const cJSON *c = object->child; c; c = c->next) n++;
    if (n < 2) return ES_OK;
    keyed *keys = malloc(n * sizeof *keys);
    if (!keys) return ES_ENOMEM;
    size_t i = 0;
    for (cJSON *c = object->child; c; c = c->next, i++) keys[i] = (keyed){c, i};
    qsort(keys, n, sizeof *keys, by_key_then_position);
    for (i = 0; i + 1 < n; i++)
        if (strcmp(keys[i].item->string, keys[i + 1].item->string) == 0)
            cJSON_Delete(cJSON_DetachItemViaPointer(object, keys[i].item));
    free(keys);
    return ES_OK;
}

int es_json_keep_last_keys(cJSON *node) {
    if (cJSON_IsObject(node)) {
        int rc = drop_earlier_duplicates(node);
        if (rc) return rc;
    }
    for (cJSON *c = node ? node->child : NULL; c; c = c->next) {
        int rc = es_json_keep_last_keys(c);
        if (rc) return rc;
    }
    return ES_OK;
}

const char *es_json_string_at(const cJSON *obj, const char *key) {
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

cJSON *es_json_parse(const char *text, const char **end) {
    locale_t before = es_c_numbers_use(); /* cJSON reads numbers with strtod: "0.5" needs a "." locale */
    cJSON *root = cJSON_ParseWithOpts(text, end, 1);
    es_c_numbers_restore(before);
    return root;
}

char *es_json_print(const cJSON *item) {
    locale_t before = es_c_numbers_use(); /* and writes them with sprintf */
    char *text = cJSON_PrintUnformatted(item);
    es_c_numbers_restore(before);
    return text;
}
