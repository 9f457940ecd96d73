/* Build information and status messages. */
#include "es_internal.h"

int es_default_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int es_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int es_openmp_version(void) {
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

const char *es_build_compiler(void) {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#elif defined(_MSC_VER)
    return "msvc";
#else
    return "unknown";
#endif
}

const char *es_build_simd(void) {
#if ES_SSE2 && ES_AVX2_CLONES
    return "sse2+avx2";
#elif ES_SSE2
    return "sse2";
#elif ES_AVX2_CLONES
    return "avx2";
#else
    return "portable";
#endif
}

const char *es_status_message(int status) {
    switch (status) {
    case ES_OK: return "ok";
    case ES_EINVAL: return "invalid argument";
    case ES_ENOMEM: return "out of memory";
    case ES_ENONFINITE: return "input holds NaN or infinite values";
    }
    return "unknown status";
}

float es_half_to_float(uint16_t h) { return es_h2f(h); }

uint16_t es_float_to_half(float f) { return es_f2h(f); }
