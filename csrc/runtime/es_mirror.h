/* Private to libedgeseg: the arithmetic of test-time mirroring (es_set_tta), the float32 steps
 * of edgeseg/runtime/tta.py's mirrored_logits. A pass is 0..3: bit 0 mirrors the columns, bit 1
 * the rows, the order of that module's passes ((), (3,), (2,), (2, 3)). */
#ifndef ES_MIRROR_H
#define ES_MIRROR_H

#include <stddef.h>
#include <stdint.h>

/* dst = src, each of the `n` (rows, cols) planes mirrored as `pass` says. */
void es_mirror_planes(float *dst, const float *src, int64_t n, int64_t rows, int64_t cols, int pass);

/* Softmax over the `k` classes of (n, k, h, w) `logits` of a pass (with `regions`, a region model's
 * scores: the sigmoid of each region's logit, into classes 1..k-1), mirrored back as `pass` says,
 * stored into `sum` (pass 0) or added to it (later passes), in pass order. */
void es_mirror_accumulate(float *sum, const float *logits, int64_t n, int64_t k, int64_t h, int64_t w, int pass,
                          int regions);

/* sum[j] = log(max(sum[j] / passes, FLT_MIN)) for the (n, k, h, w) values: log-probabilities the
 * post-processing takes as logits. A NaN (from NaN or infinite logits) stays NaN, as numpy's
 * maximum keeps it, so the post-processing refuses the batch in both runtimes. With `regions`,
 * each region's mean sigmoid m becomes log m - log(1 - m) and the scores head is applied
 * (edgeseg/runtime/tta.py's region_scores). */
void es_mirror_finish(float *sum, int64_t n, int64_t k, int64_t h, int64_t w, int passes, int regions);

#endif
