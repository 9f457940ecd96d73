/* Test-time mirroring's arithmetic; see es_mirror.h. */
#include <float.h>
#include <math.h>

#include "es_mirror.h"
#include "es_runtime.h"

/* Offset of element (plane, y, x) of planes of h x w, read at the mirror `pass` says. */
static size_t at(int pass, int64_t plane, int64_t h, int64_t w, int64_t y, int64_t x) {
    if (pass & 2) y = h - 1 - y;
    if (pass & 1) x = w - 1 - x;
    return (size_t)(plane * h * w + y * w + x);
}

void es_mirror_planes(float *dst, const float *src, int64_t n, int64_t rows, int64_t cols, int pass) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t y = 0; y < rows; y++)
            for (int64_t x = 0; x < cols; x++) dst[(i * rows + y) * cols + x] = src[at(pass, i, rows, cols, y, x)];
}

/* A region model's class scores at one pixel (planes hw apart) as its region sigmoids, into p[1..k-1]:
 * r_c = s_c - max(0, s_1, ..., s_{c-1}) (edgeseg/models/regions.py). */
static void region_sigmoids(float *p, const float *l, size_t hw, int64_t k) {
    float top = 0.0f;
    for (int64_t c = 1; c < k; c++) {
        float s = l[c * hw];
        p[c] = 1.0f / (1.0f + expf(-(s - top)));
        top = s > top ? s : top;
    }
}

void es_mirror_accumulate(float *sum, const float *logits, int64_t n, int64_t k, int64_t h, int64_t w, int pass,
                          int regions) {
    size_t hw = (size_t)(h * w);
    float e[ES_MAX_CLASSES];
    for (int64_t i = 0; i < n; i++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++) {
                /* class 0 of this pass's logits at the mirror of (y, x), i.e. at the slice's (y, x) */
                const float *l = logits + at(pass, i * k, h, w, y, x);
                float *s = sum + (size_t)(i * k) * hw + (size_t)(y * w + x);
                if (regions) { /* channel 0 holds nothing: the scores are rebuilt from the others */
                    region_sigmoids(e, l, hw, k);
                    for (int64_t c = 1; c < k; c++) s[c * hw] = pass ? s[c * hw] + e[c] : e[c];
                    continue;
                }
                float top = l[0], total = 0.0f;
                for (int64_t c = 1; c < k; c++) top = l[c * hw] > top ? l[c * hw] : top;
                for (int64_t c = 0; c < k; c++) {
                    e[c] = expf(l[c * hw] - top);
                    total = c ? total + e[c] : e[c];
                }
                for (int64_t c = 0; c < k; c++) s[c * hw] = pass ? s[c * hw] + e[c] / total : e[c] / total;
            }
}

void es_mirror_finish(float *sum, int64_t n, int64_t k, int64_t h, int64_t w, int passes, int regions) {
    size_t hw = (size_t)(h * w), count = (size_t)(n * k) * hw;
    if (!regions) {
        for (size_t j = 0; j < count; j++) {
            float m = sum[j] / (float)passes;
            sum[j] = isnan(m) ? m : logf(m > FLT_MIN ? m : FLT_MIN); /* NaN stays NaN: post-processing refuses it */
        }
        return;
    }
    for (size_t j = 0; j < count; j += (size_t)k * hw)
        for (size_t x = 0; x < hw; x++) {
            float *s = sum + j + x, top = 0.0f;
            s[0] = 0.0f;
            for (int64_t c = 1; c < k; c++) { /* the mean sigmoid's logit, then the scores head */
                float m = s[c * hw] / (float)passes, q = 1.0f - m;
                float r = logf(m > FLT_MIN ? m : FLT_MIN) - logf(q > FLT_MIN ? q : FLT_MIN);
                s[c * hw] = isnan(m) ? m : r + top;
                top = s[c * hw] > top ? s[c * hw] : top;
            }
        }
}
