# cython: language_level=3
"""Private Cython wrapper of csrc/; validated callers live in edgeseg.kernels.

Every function takes typed memoryviews, releases the GIL around the C call and returns the C
status code; the Python layer turns a non-zero status into an exception.
"""

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t


cdef extern from "edgeseg_kernels.h":
    ctypedef enum es_dtype:
        ES_UINT8
        ES_INT16
        ES_UINT16
        ES_FLOAT32
        ES_FLOAT16

    ctypedef enum es_interp:
        ES_BILINEAR
        ES_AREA

    ctypedef enum es_resize_mode:
        ES_RESIZE_LOGITS
        ES_RESIZE_LABELS

    ctypedef enum es_fit:
        ES_FIT_STRETCH
        ES_FIT_PAD

    ctypedef struct es_slices:
        const void *data
        es_dtype dtype
        Py_ssize_t count, rows, cols
        Py_ssize_t stride_slice, stride_row, stride_col

    ctypedef struct es_preprocess_spec:
        double window_low, window_high
        double scale, offset
        Py_ssize_t out_rows, out_cols
        es_interp interp
        es_dtype out_dtype

    int es_preprocess_fit(const es_slices *src, const es_preprocess_spec *spec, es_fit fit,
                          void *dst, int num_threads) noexcept nogil
    int es_postprocess_fit(const void *logits, es_dtype dtype, Py_ssize_t count,
                           Py_ssize_t classes, Py_ssize_t rows, Py_ssize_t cols, uint8_t *labels,
                           Py_ssize_t out_rows, Py_ssize_t out_cols, es_resize_mode mode,
                           es_fit fit, int keep_largest, int num_threads) noexcept nogil
    int es_resize_labels(const uint8_t *src, Py_ssize_t count, Py_ssize_t rows, Py_ssize_t cols,
                         uint8_t *dst, Py_ssize_t out_rows, Py_ssize_t out_cols,
                         int num_threads) noexcept nogil
    int es_largest_component(uint8_t *labels, Py_ssize_t count, Py_ssize_t rows,
                             Py_ssize_t cols, int num_classes, int num_threads) noexcept nogil
    ctypedef struct es_component_rule:
        int keep_largest
        int64_t min_size
        int removed_to

    int es_filter_components(uint8_t *labels, Py_ssize_t count, Py_ssize_t rows, Py_ssize_t cols,
                             int num_classes, const es_component_rule *rules,
                             int num_threads) noexcept nogil
    int es_filter_components_3d(uint8_t *labels, Py_ssize_t depth, Py_ssize_t rows,
                                Py_ssize_t cols, int num_classes, const es_component_rule *rules,
                                int num_threads) noexcept nogil
    int es_default_threads() noexcept nogil
    int es_has_openmp() noexcept nogil
    int es_openmp_version() noexcept nogil
    const char *es_build_compiler() noexcept nogil
    const char *es_build_simd() noexcept nogil
    const char *es_status_message(int status) noexcept nogil


ctypedef fused pixel_t:
    uint8_t
    int16_t
    uint16_t
    float

ctypedef fused logit_t:
    float
    uint16_t  # float16 bits


def default_threads():
    return es_default_threads()


def has_openmp():
    return bool(es_has_openmp())


def build_info():
    return {"compiler": es_build_compiler().decode(), "openmp": int(es_openmp_version()),
            "simd": es_build_simd().decode()}


def status_message(int status):
    return es_status_message(status).decode()


def preprocess(const pixel_t[:, :, :] src, out, double low, double high, double scale,
               double offset, bint area, bint pad, int num_threads):
    """src (N, H, W) any strides -> out (N, 1, h, w) C-contiguous float32 or uint16 (float16);
    ``pad`` keeps the aspect ratio (fit=pad) instead of stretching."""
    cdef es_slices s
    cdef es_preprocess_spec spec
    cdef float[:, :, :, ::1] out32
    cdef uint16_t[:, :, :, ::1] out16
    cdef void *dst
    cdef int rc
    cdef es_fit fit = ES_FIT_PAD if pad else ES_FIT_STRETCH
    if pixel_t is uint8_t:
        s.dtype = ES_UINT8
    elif pixel_t is int16_t:
        s.dtype = ES_INT16
    elif pixel_t is uint16_t:
        s.dtype = ES_UINT16
    else:
        s.dtype = ES_FLOAT32
    s.data = &src[0, 0, 0]
    s.count, s.rows, s.cols = src.shape[0], src.shape[1], src.shape[2]
    s.stride_slice = src.strides[0] // <Py_ssize_t>sizeof(pixel_t)
    s.stride_row = src.strides[1] // <Py_ssize_t>sizeof(pixel_t)
    s.stride_col = src.strides[2] // <Py_ssize_t>sizeof(pixel_t)
    if out.dtype.itemsize == 2:
        out16 = out
        dst = &out16[0, 0, 0, 0]
        spec.out_dtype = ES_FLOAT16
        spec.out_rows, spec.out_cols = out16.shape[2], out16.shape[3]
    else:
        out32 = out
        dst = &out32[0, 0, 0, 0]
        spec.out_dtype = ES_FLOAT32
        spec.out_rows, spec.out_cols = out32.shape[2], out32.shape[3]
    spec.window_low, spec.window_high = low, high
    spec.scale, spec.offset = scale, offset
    spec.interp = ES_AREA if area else ES_BILINEAR
    with nogil:
        rc = es_preprocess_fit(&s, &spec, fit, dst, num_threads)
    return rc


def postprocess(const logit_t[:, :, :, ::1] logits, uint8_t[:, :, ::1] labels, bint resize_labels,
                bint keep_largest, bint pad, int num_threads):
    """(N, C, h, w) float32 or float16-bits logits -> (N, H, W) uint8 labels; ``pad`` takes the
    fit=pad box of an (H, W) slice out of the logits first."""
    cdef es_dtype dtype = ES_FLOAT32 if logit_t is float else ES_FLOAT16
    cdef es_fit fit = ES_FIT_PAD if pad else ES_FIT_STRETCH
    cdef es_resize_mode mode = ES_RESIZE_LABELS if resize_labels else ES_RESIZE_LOGITS
    cdef int rc
    with nogil:
        rc = es_postprocess_fit(&logits[0, 0, 0, 0], dtype, logits.shape[0], logits.shape[1],
                                logits.shape[2], logits.shape[3], &labels[0, 0, 0],
                                labels.shape[1], labels.shape[2], mode, fit, keep_largest,
                                num_threads)
    return rc


def resize_labels(const uint8_t[:, :, ::1] src, uint8_t[:, :, ::1] dst, int num_threads):
    """Nearest resize of (N, h, w) labels into (N, H, W)."""
    cdef int rc
    with nogil:
        rc = es_resize_labels(&src[0, 0, 0], src.shape[0], src.shape[1], src.shape[2],
                              &dst[0, 0, 0], dst.shape[1], dst.shape[2], num_threads)
    return rc


def largest_component(uint8_t[:, :, ::1] labels, int num_classes, int num_threads):
    """In place: keep each class's largest 8-connected component per slice."""
    cdef int rc
    with nogil:
        rc = es_largest_component(&labels[0, 0, 0], labels.shape[0], labels.shape[1],
                                  labels.shape[2], num_classes, num_threads)
    return rc


def filter_components(uint8_t[:, :, ::1] labels, const uint8_t[::1] keep_largest,
                      const int64_t[::1] min_size, const uint8_t[::1] removed_to, bint volume, int num_threads):
    """In place: class c keeps its largest component if keep_largest[c], and components of at
    least min_size[c] pixels; removed pixels take removed_to[c]; per slice (8-connected), or
    over the volume (6-connected)."""
    cdef es_component_rule rules[256]
    cdef int num_classes = keep_largest.shape[0]
    cdef int c, rc
    for c in range(num_classes):
        rules[c].keep_largest = keep_largest[c]
        rules[c].min_size = min_size[c]
        rules[c].removed_to = removed_to[c]
    with nogil:
        if volume:
            rc = es_filter_components_3d(&labels[0, 0, 0], labels.shape[0], labels.shape[1],
                                         labels.shape[2], num_classes, rules, num_threads)
        else:
            rc = es_filter_components(&labels[0, 0, 0], labels.shape[0], labels.shape[1],
                                      labels.shape[2], num_classes, rules, num_threads)
    return rc
