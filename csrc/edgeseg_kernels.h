/* edgeseg C kernels: pre- and post-processing of CT slices. C99, no Python API. */
#ifndef EDGESEG_KERNELS_H
#define EDGESEG_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = a * clamp(in[i], low, high) + b for n float32 values. */
void es_window_scale_f32(const float *in, float *out, size_t n, float low, float high, float a,
                         float b);

#ifdef __cplusplus
}
#endif

#endif
