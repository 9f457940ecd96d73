#include "edgeseg_kernels.h"

void es_window_scale_f32(const float *in, float *out, size_t n, float low, float high, float a,
                         float b) {
    for (size_t i = 0; i < n; ++i) {
        float v = in[i];
        v = v < low ? low : v;
        v = v > high ? high : v;
        out[i] = a * v + b;
    }
}
