/* Test-time mirroring's arithmetic (csrc/runtime/mirror.c) against a double-precision oracle
 * written out here with explicit index flips, and non-finite logits kept non-finite. */
#include <math.h>
#include <stdlib.h>

#include "../runtime/es_mirror.h"
#include "check.h"

enum { N = 2, K = 3, H = 3, W = 4 };

/* Logits of pass p at (i, c, y, x): a position-dependent function, so the mirrors disagree. */
static float logit(int p, int i, int c, int y, int x) {
    return (float)(sin(1.3 * (p + 1) * (c + 1) + 0.7 * y - 0.4 * x + i) * 2.0 + 0.1 * c * x);
}

static void test_planes_are_mirrored(void) {
    float src[N * H * W], dst[N * H * W];
    for (int j = 0; j < N * H * W; j++) src[j] = (float)j;
    for (int pass = 0; pass < 4; pass++) {
        es_mirror_planes(dst, src, N, H, W, pass);
        for (int i = 0; i < N; i++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    int sy = pass >= 2 ? H - 1 - y : y, sx = pass % 2 ? W - 1 - x : x;
                    CHECK(dst[(i * H + y) * W + x] == src[(i * H + sy) * W + sx], "pass %d (%d,%d,%d)", pass, i, y, x);
                }
    }
}

static void test_mean_probabilities_match_the_oracle(void) {
    float logits[N * K * H * W], sum[N * K * H * W];
    double want[N * K * H * W] = {0};
    for (int pass = 0; pass < 4; pass++) {
        for (int i = 0; i < N; i++)
            for (int c = 0; c < K; c++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) logits[((i * K + c) * H + y) * W + x] = logit(pass, i, c, y, x);
        es_mirror_accumulate(sum, logits, N, K, H, W, pass, 0);
        /* The network saw the mirrored slice: its output at (y, x) belongs to the slice's mirror of (y, x). */
        for (int i = 0; i < N; i++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    int sy = pass >= 2 ? H - 1 - y : y, sx = pass % 2 ? W - 1 - x : x;
                    double e[K], total = 0;
                    for (int c = 0; c < K; c++) total += e[c] = exp((double)logit(pass, i, c, sy, sx));
                    for (int c = 0; c < K; c++) want[((i * K + c) * H + y) * W + x] += e[c] / total;
                }
    }
    es_mirror_finish(sum, N, K, H, W, 4, 0);
    for (int j = 0; j < N * K * H * W; j++)
        CHECK(fabs(sum[j] - log(want[j] / 4)) < 1e-5, "element %d: %g against %g", j, sum[j], log(want[j] / 4));
}

static void test_nonfinite_logits_stay_nonfinite(void) {
    float logits[2] = {NAN, 1.0f}, sum[2];
    es_mirror_accumulate(sum, logits, 1, 2, 1, 1, 0, 0);
    es_mirror_finish(sum, 1, 2, 1, 1, 1, 0);
    CHECK(isnan(sum[0]) && isnan(sum[1]), "NaN logit gave %g %g", sum[0], sum[1]);
    float inf[2] = {1.0f, INFINITY};
    es_mirror_accumulate(sum, inf, 1, 2, 1, 1, 0, 0);
    es_mirror_finish(sum, 1, 2, 1, 1, 1, 0);
    CHECK(!isfinite(sum[0]) || !isfinite(sum[1]), "inf logit gave %g %g", sum[0], sum[1]);
}

/* A region model's scores (s_0 = 0, s_c = r_c + max(0, s_1..s_{c-1})): the passes average each
 * region's sigmoid; the result is the scores head applied to the logit of those means. */
static void test_region_scores_average_the_region_sigmoids(void) {
    float logits[N * K * H * W], sum[N * K * H * W];
    double mean[N * K * H * W] = {0};
    for (int pass = 0; pass < 4; pass++) {
        for (int i = 0; i < N; i++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    float top = 0.0f, *s = logits + (i * K * H + y) * W + x;
                    s[0] = 0.0f;
                    for (int c = 1; c < K; c++) {
                        s[c * H * W] = logit(pass, i, c, y, x) + top;
                        top = s[c * H * W] > top ? s[c * H * W] : top;
                    }
                }
        es_mirror_accumulate(sum, logits, N, K, H, W, pass, 1);
        for (int i = 0; i < N; i++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    int sy = pass >= 2 ? H - 1 - y : y, sx = pass % 2 ? W - 1 - x : x;
                    for (int c = 1; c < K; c++)
                        mean[((i * K + c) * H + y) * W + x] += 1.0 / (1.0 + exp(-(double)logit(pass, i, c, sy, sx))) / 4;
                }
    }
    es_mirror_finish(sum, N, K, H, W, 4, 1);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < H * W; j++) {
            double top = 0.0, want;
            CHECK(sum[i * K * H * W + j] == 0.0f, "background score %g", sum[i * K * H * W + j]);
            for (int c = 1; c < K; c++) {
                double m = mean[(i * K + c) * H * W + j];
                want = log(m / (1 - m)) + top;
                CHECK(fabs(sum[(i * K + c) * H * W + j] - want) < 1e-4, "slice %d class %d pixel %d: %g against %g",
                      i, c, j, sum[(i * K + c) * H * W + j], want);
                top = want > top ? want : top;
            }
        }
}

void test_mirror_all(void) {
    test_region_scores_average_the_region_sigmoids();
    test_planes_are_mirrored();
    test_mean_probabilities_match_the_oracle();
    test_nonfinite_logits_stay_nonfinite();
}
