/* Private helpers shared by the kernel files; not installed, not part of the API. */
#ifndef ES_INTERNAL_H
#define ES_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "edgeseg_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ES_NO_SIMD: the portable code only, as a CPU without SSE2 or AVX2 (aarch64, ...) runs it: no
 * SSE2 intrinsics (ES_SSE2 is 0), no AVX2 clones (it implies ES_NO_MULTIVERSION) and no
 * __builtin_ctzll in es_skip_equal. The compiler may still auto-vectorise the plain loops.
 * `make -C csrc/tests portable` (part of `make test-c`) builds the C test so on x86-64. */
#if defined(ES_NO_SIMD) && !defined(ES_NO_MULTIVERSION)
#define ES_NO_MULTIVERSION
#endif
#if defined(__SSE2__) && !defined(ES_NO_SIMD)
#define ES_SSE2 1
#else
#define ES_SSE2 0
#endif

/* ES_WIDE: a hot loop is compiled twice, for AVX2 and for the baseline, and the CPU picks at
 * load time (GCC function multi-versioning), so a portable build still runs 8 floats at once. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(ES_NO_MULTIVERSION)
#define ES_WIDE __attribute__((target_clones("avx2", "default")))
#define ES_AVX2_CLONES 1
#else
#define ES_WIDE
#define ES_AVX2_CLONES 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ES_RESTRICT __restrict__
#define ES_INLINE static inline __attribute__((always_inline))
#else
#define ES_RESTRICT
#define ES_INLINE static inline
#endif

#define ES_UP_MAX 8 /* the largest integer up-scaling factor with a fast path (64 -> 512) */

/* Resampling weights of one axis, n_in -> n_out: output j reads source samples
 * first[j] .. first[j] + taps - 1 with weights w[j * taps + t] (zero-padded, so every output has
 * the same tap count and the inner loops have a fixed trip count). */
typedef struct {
    ptrdiff_t n_in, n_out;
    int taps;
    int stride; /* s > 0 when first[j] == first[0] + s * j for every j (integer down-scaling) */
    int up2;    /* 1 when n_out == 2 * n_in and first[j] == (j - 1) / 2 inside (2x up-scaling) */
    /* upf = F in 3..ES_UP_MAX when n_out == F * n_in, first[j] == (j - F / 2) / F for the outputs
     * j in [F / 2, F / 2 + F * (n_in - 1)) and their weights repeat with period F bit for bit:
     * integer up-scaling, whose weights are then up_w0[k], up_w1[k] for j = F / 2 + F * i + k */
    int upf;
    float up_w0[ES_UP_MAX], up_w1[ES_UP_MAX];
    int32_t *first;
    float *wf;  /* float weights, for the fast paths */
    double *wd; /* the same weights in double, for the exact (oracle-order) paths */
} es_axis;

int es_axis_init(es_axis *ax, ptrdiff_t n_in, ptrdiff_t n_out, es_interp interp);
void es_axis_free(es_axis *ax);

/* One row of ax->n_in floats -> ax->n_out floats (float taps; double sums for wide areas). */
void es_resize_row(const es_axis *ax, const float *ES_RESTRICT in, float *ES_RESTRICT out);

/* Component filter of one (rows, cols) slice, classes 1..num_classes-1 following rules[c];
 * `work` holds 4 * rows * cols + 256 int32. */
void es_lcc_slice(uint8_t *labels, ptrdiff_t rows, ptrdiff_t cols, int num_classes,
                  const es_component_rule *rules, int32_t *work);

/* First index >= x in row[..cols) whose byte is not v, eight bytes at a time where possible:
 * background and organ interiors are long runs, and this loop is most of a component pass. */
ES_INLINE ptrdiff_t es_skip_equal(const uint8_t *row, ptrdiff_t x, ptrdiff_t cols, uint8_t v) {
    const uint64_t pattern = 0x0101010101010101ull * v;
    while (x + 8 <= cols) {
        uint64_t word;
        memcpy(&word, row + x, sizeof word);
        word ^= pattern;
        if (word) {
            /* The lowest differing byte comes first in memory on little-endian machines. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__BYTE_ORDER__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && !defined(ES_NO_SIMD)
            return x + (ptrdiff_t)(__builtin_ctzll(word) >> 3);
#else
            break;
#endif
        }
        x += 8;
    }
    while (x < cols && row[x] == v) ++x;
    return x;
}

/* Source index of output j for nearest resize at pixel centres. */
ES_INLINE ptrdiff_t es_nearest_index(ptrdiff_t j, ptrdiff_t n_in, ptrdiff_t n_out) {
    /* Same operations, in the same order, as reference.resize_labels, so the floor agrees. */
    ptrdiff_t i = (ptrdiff_t)((((double)j + 0.5) * (double)n_in) / (double)n_out);
    return i < n_in - 1 ? i : n_in - 1;
}

/* Threads for `items` independent work items, never more than asked or than items. */
ES_INLINE int es_threads_for(int num_threads, ptrdiff_t items) {
    int nt = num_threads > 0 ? num_threads : es_default_threads();
    if ((ptrdiff_t)nt > items) nt = (int)items;
    return nt < 1 ? 1 : nt;
}

/* The one parallel loop of the kernels (bands.c). A job is `count` slices of `rows` output rows;
 * each slice is cut into bands of rows when that keeps every thread busy and each band repays
 * waking a thread, and run(ctx, scratch, band) is called once per band, in parallel with OpenMP
 * (dynamic schedule, one band at a time) and in order without it. Each thread gets its own
 * scratch from thread_init (NULL there means out of memory; thread_init NULL: no scratch). */
typedef struct {
    ptrdiff_t slice;      /* which slice */
    ptrdiff_t index, of;  /* band `index` of the `of` bands of every slice */
    ptrdiff_t y0, y1;     /* its output rows [y0, y1) */
} es_band;

/* Least work (pixels read + written) a band must hold to repay waking a thread: a 512^2 slice
 * takes ~0.1 ms, less than a descheduled thread can cost on a loaded machine. */
#define ES_BAND_WORK ((ptrdiff_t)1 << 20)

typedef struct {
    ptrdiff_t count, rows;
    ptrdiff_t work;       /* pixels read + written per slice */
    ptrdiff_t band_work;  /* least work per band (ES_BAND_WORK); 0 never cuts a slice */
    const void *ctx;      /* the call's plan, shared read-only by every band */
    void *(*thread_init)(const void *ctx);
    void (*thread_free)(void *scratch);
    int (*run)(const void *ctx, void *scratch, const es_band *band); /* ES_OK or a status */
} es_band_job;

/* Runs every band. Returns ES_ENOMEM if a thread's scratch failed, else ES_ENONFINITE or else
 * ES_EINVAL if some band returned it, else ES_OK. */
int es_run_bands(const es_band_job *job, int num_threads);

/* The bands per slice es_run_bands uses for this job on num_threads (exposed for tests). */
ptrdiff_t es_band_count(const es_band_job *job, int num_threads);

ES_INLINE uint32_t es_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

ES_INLINE float es_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* binary16 -> binary32, exact (subnormals, inf and NaN included). */
ES_INLINE float es_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = (uint32_t)(h & 0x7fffu);
    uint32_t bits;
    if (em >= 0x7c00u) { /* inf / NaN */
        bits = 0x7f800000u | ((em & 0x3ffu) << 13);
    } else if (em >= 0x0400u) { /* normal */
        bits = (em << 13) + (112u << 23);
    } else { /* zero / subnormal: value = em * 2^-24, exact in float */
        return es_bits_f32(sign | es_f32_bits((float)em * 5.9604644775390625e-08f));
    }
    return es_bits_f32(sign | bits);
}

/* binary32 -> binary16, round to nearest even, overflow to inf, NaN kept quiet. */
ES_INLINE uint16_t es_f2h(float f) {
    uint32_t u = es_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    uint32_t o;
    if (a >= 0x47800000u) { /* >= 65536 (overflow), inf or NaN */
        o = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (a < 0x38800000u) { /* below 2^-14: subnormal half; adding 0.5 rounds for us */
        o = es_f32_bits(es_bits_f32(a) + 0.5f) - es_f32_bits(0.5f);
    } else {
        uint32_t odd = (a >> 13) & 1u;
        a -= 112u << 23; /* rebias the exponent */
        a += 0xfffu + odd;
        o = a >> 13;
    }
    return (uint16_t)(o | sign);
}

/* Union-find over run or pixel labels (components.c, components3d.c): roots are the smallest
 * label of their set, so components keep scipy.ndimage.label's raster-order numbering. */
static inline int32_t es_find_root(int32_t *parent, int32_t x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]]; /* path halving */
        x = parent[x];
    }
    return x;
}

static inline void es_unite(int32_t *parent, int32_t a, int32_t b) {
    a = es_find_root(parent, a);
    b = es_find_root(parent, b);
    if (a < b)
        parent[b] = a;
    else if (b < a)
        parent[a] = b;
}

#endif
