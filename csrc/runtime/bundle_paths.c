/* A bundle holds its own files: manifest.json or the artifact as a link that resolves outside the
 * bundle folder is refused before it is read, whatever its sha256, with the message of
 * edgeseg/runtime/bundle_files.py check_inside_bundle (a deployed bundle is moved as one folder;
 * a file elsewhere is loaded from wherever the link points on each machine). */
/* realpath: XSI, which _POSIX_C_SOURCE alone does not declare in every libc */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_runtime.h"

int es_inside_bundle(const char *dir, const char *name, es_error *err) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    if (!path) return es_fail(err, ES_ENOMEM, "no memory for a path");
    snprintf(path, n, "%s/%s", dir, name);
    char *root = realpath(dir, NULL);
    char *target = realpath(path, NULL);
    int rc = ES_OK;
    if (root && target) { /* a missing file passes: the caller's own check names it as missing */
        size_t len = strcmp(root, "/") == 0 ? 0 : strlen(root); /* "/" already ends in a separator */
        if (strncmp(target, root, len) != 0 || target[len] != '/')
            rc = es_fail(err, ES_EBUNDLE, "bundle %s: %s resolves to %s, outside the bundle folder (a bundle holds its "
                         "own files, not links to others)", dir, name, target);
    }
    free(target);
    free(root);
    free(path);
    return rc;
}
