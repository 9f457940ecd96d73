# cython: language_level=3
"""Private Cython wrapper of csrc/; validated callers live in edgeseg.kernels."""

cdef extern from "edgeseg_kernels.h":
    void es_window_scale_f32(const float *inp, float *out, size_t n, float low, float high,
                             float a, float b) noexcept nogil


def window_scale_f32(const float[::1] inp, float[::1] out, float low, float high, float a, float b):
    with nogil:
        es_window_scale_f32(&inp[0], &out[0], inp.shape[0], low, high, a, b)
