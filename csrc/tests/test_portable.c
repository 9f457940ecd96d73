/* The helpers that have a hand-written x86 path and a portable one (es_max_abs: SSE2 or plain;
 * es_skip_equal: eight bytes at a time with __builtin_ctzll or byte by byte after the first
 * difference) against brute force. The normal build runs the x86 paths, `make portable`
 * (-DES_NO_SIMD -funsigned-char) and `make aarch64` the portable ones: both must give the same
 * answers, bit for bit. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "es_postprocess.h"
#include "oracle.h"

/* ES_NO_SIMD must switch every x86-only path off, whatever the compiler targets. */
#if defined(ES_NO_SIMD) && (ES_SSE2 || !defined(ES_NO_MULTIVERSION))
#error "ES_NO_SIMD left an SSE2 or AVX2 path on"
#endif

static float brute_max_abs(const float *x, ptrdiff_t n) {
    float m = 0.0f;
    for (ptrdiff_t i = 0; i < n; ++i) {
        const float a = x[i] < 0.0f ? -x[i] : x[i];
        if (a > m) m = a;
    }
    return m;
}

/* Every length around the 16-float blocks, the largest value in each lane and in the tail,
 * negative, signed zeros, subnormals, FLT_MAX and infinity. */
static void test_max_abs(void) {
    enum { N = 70 };
    float x[N + 1];
    const float special[] = {-0.0f, 1e-45f, -1e-40f, -3.5f, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY};
    unsigned st = 11u;
    for (ptrdiff_t n = 0; n <= N; ++n)
        for (ptrdiff_t at = 0; at <= n; ++at)
            for (int s = 0; s < (int)(sizeof special / sizeof *special); ++s) {
                for (ptrdiff_t i = 0; i <= n; ++i) x[i] = ((float)(test_rand(&st) % 2001) - 1000.0f) / 512.0f;
                if (at < n) x[at] = special[s];
                /* x[n], one past the end, is larger than everything: it must not be read */
                x[n] = 1e30f;
                const float got = es_max_abs(x + 0, n), want = brute_max_abs(x, n);
                CHECK(memcmp(&got, &want, sizeof got) == 0, "n=%td, %g at %td: %g, brute force %g", n,
                      (double)special[s], at, (double)got, (double)want);
            }
}

static ptrdiff_t brute_skip(const uint8_t *row, ptrdiff_t x, ptrdiff_t cols, uint8_t v) {
    while (x < cols && row[x] == v) ++x;
    return x;
}

/* Runs of every byte value (those >= 0x80 included: negative where char is signed) ending at
 * every offset of an 8-byte word, from every start. */
static void test_skip_equal(void) {
    enum { COLS = 37 };
    uint8_t row[COLS];
    const int values[] = {0, 1, 0x7f, 0x80, 0xfe, 0xff};
    for (int i = 0; i < (int)(sizeof values / sizeof *values); ++i) {
        const uint8_t v = (uint8_t)values[i];
        for (ptrdiff_t end = 0; end <= COLS; ++end) {
            for (ptrdiff_t x = 0; x < COLS; ++x) row[x] = x < end ? v : (uint8_t)(v ^ (1u << (x % 8)));
            for (ptrdiff_t from = 0; from <= COLS; ++from) {
                const ptrdiff_t got = es_skip_equal(row, from, COLS, v), want = brute_skip(row, from, COLS, v);
                CHECK(got == want, "byte 0x%02x, run to %td, from %td: %td, brute force %td", v, end, from,
                      got, want);
            }
        }
    }
}

/* es_build_simd() says which paths this build compiled, judged from the compiler's own macros. */
static void test_build_simd(void) {
    const char *simd = es_build_simd();
#if defined(ES_NO_SIMD) || !defined(__x86_64__)
    CHECK(strcmp(simd, "portable") == 0, "a portable build reports \"%s\"", simd);
#elif defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && !defined(ES_NO_MULTIVERSION)
    CHECK(strcmp(simd, "sse2+avx2") == 0, "an x86-64 build with AVX2 clones reports \"%s\"", simd);
#else
    CHECK(strcmp(simd, "sse2") == 0, "an x86-64 build without AVX2 clones reports \"%s\"", simd);
#endif
}

void test_portable_all(void) {
    test_max_abs();
    test_skip_equal();
    test_build_simd();
}

const char *test_build_variant(void) {
    if (ES_SSE2) return CHAR_MIN < 0 ? "SSE2, signed char" : "SSE2, unsigned char";
    return CHAR_MIN < 0 ? "portable (no SSE2), signed char" : "portable (no SSE2), unsigned char";
}
