/* What the test drivers (capi_checks.c, warning_checks.c, wrapper_warnings.cpp) share: the dlopen
 * shim of their sanitizer builds and the reading of raw int16 HU. Include it first, before any
 * other header. C99 and C++17. */
#ifndef CAPI_DRIVER_H
#define CAPI_DRIVER_H

#ifdef ES_DLOPEN_SHIM
#ifndef _GNU_SOURCE /* g++ defines it */
#define _GNU_SOURCE /* RTLD_NEXT, RTLD_DEEPBIND */
#endif
#include <dlfcn.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef ES_DLOPEN_SHIM
/* Sanitizer builds only: TBB (inside OpenVINO) dlopens libtbbbind with RTLD_DEEPBIND, which the
 * sanitizer runtime refuses (google/sanitizers issue 611). This definition comes first in symbol
 * lookup, drops that one flag and passes the call on to the sanitizer's own dlopen. */
void *dlopen(const char *file, int flags)
#ifdef __cplusplus
    noexcept /* as <dlfcn.h> declares it there */
#endif
{
    void *(*next)(const char *, int) = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    return next(file, flags & ~RTLD_DEEPBIND);
}
#endif

/* `count` int16 values from the file `path` (malloc'd), or NULL with the reason on stderr. */
static inline int16_t *read_raw(const char *path, size_t count) {
    int16_t *hu = (int16_t *)malloc(count * sizeof *hu);
    FILE *in = fopen(path, "rb");
    int ok = hu && in && fread(hu, sizeof *hu, count, in) == count;
    if (in) fclose(in);
    if (ok) return hu;
    fprintf(stderr, "cannot read %zu int16 values from %s\n", count, path);
    free(hu);
    return NULL;
}

#endif
