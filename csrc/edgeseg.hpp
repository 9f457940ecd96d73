// libedgeseg for C++17: RAII over the C API in edgeseg.h, errors as edgeseg::Error.
//
//   edgeseg::Segmenter seg("bundle", "int8");
//   std::vector<uint8_t> mask = seg.segment_slice(pixels.data(), rows, cols);
//
// Header-only; link against libedgeseg. A Segmenter is movable, not copyable; its segment calls
// may come from several threads (they take turns, see edgeseg.h).
#ifndef EDGESEG_HPP
#define EDGESEG_HPP

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "edgeseg.h"

namespace edgeseg {

// An es_error as an exception: code() is the es_code / es_status, what() the one-line message.
class Error : public std::runtime_error {
  public:
    Error(int code, const std::string &message) : std::runtime_error(message), code_(code) {}
    int code() const noexcept { return code_; }

  private:
    int code_;
};

namespace detail {
inline void check(int rc, const es_error &err) {
    if (rc != ES_OK) throw Error(rc, err.message[0] ? err.message : es_code_message(rc));
}

template <typename T> struct dtype_of;
template <> struct dtype_of<uint8_t> { static constexpr es_dtype value = ES_UINT8; };
template <> struct dtype_of<int16_t> { static constexpr es_dtype value = ES_INT16; };
template <> struct dtype_of<uint16_t> { static constexpr es_dtype value = ES_UINT16; };
template <> struct dtype_of<float> { static constexpr es_dtype value = ES_FLOAT32; };
} // namespace detail

class Segmenter {
  public:
    // Open `bundle_dir` (see es_open); `precision` "int8", "fp32", "fp16" or "auto".
    explicit Segmenter(const std::string &bundle_dir, const std::string &precision = "auto", int threads = 0) {
        es_error err{};
        seg_ = es_open(bundle_dir.c_str(), precision.c_str(), threads, &err);
        if (!seg_) detail::check(err.code ? err.code : ES_EBUNDLE, err);
    }
    // As above with an explicit compiled-model cache folder ("" for none), see es_open_cached.
    Segmenter(const std::string &bundle_dir, const std::string &precision, int threads, const std::string &cache_dir) {
        es_error err{};
        seg_ = es_open_cached(bundle_dir.c_str(), precision.c_str(), threads, cache_dir.c_str(), &err);
        if (!seg_) detail::check(err.code ? err.code : ES_EBUNDLE, err);
    }
    ~Segmenter() { es_close(seg_); }
    Segmenter(const Segmenter &) = delete;
    Segmenter &operator=(const Segmenter &) = delete;
    Segmenter(Segmenter &&other) noexcept : seg_(std::exchange(other.seg_, nullptr)) {}
    Segmenter &operator=(Segmenter &&other) noexcept {
        if (this != &other) {
            es_close(seg_);
            seg_ = std::exchange(other.seg_, nullptr);
        }
        return *this;
    }

    // One (rows, cols) slice, rows `row_stride` elements apart (0: contiguous) -> rows*cols labels.
    template <typename T>
    std::vector<uint8_t> segment_slice(const T *hu, int rows, int cols, std::ptrdiff_t row_stride = 0) const {
        std::vector<uint8_t> labels(checked_count(1, rows, cols));
        es_error err{};
        detail::check(es_segment_slice(seg_, hu, detail::dtype_of<T>::value, rows, cols, row_stride ? row_stride : cols,
                                       labels.data(), &err),
                      err);
        return labels;
    }

    // `slices` contiguous (rows, cols) slices -> slices*rows*cols labels.
    template <typename T> std::vector<uint8_t> segment_volume(const T *hu, int slices, int rows, int cols) const {
        std::vector<uint8_t> labels(checked_count(slices, rows, cols));
        es_error err{};
        detail::check(es_segment_volume(seg_, hu, detail::dtype_of<T>::value, slices, rows, cols, cols,
                                        static_cast<std::ptrdiff_t>(rows) * cols, labels.data(), &err),
                      err);
        return labels;
    }

    // segment_volume with the voxel size (z, y, x) in mm, for bundles that remove 3-D components
    // under a volume in mL.
    template <typename T>
    std::vector<uint8_t> segment_volume(const T *hu, int slices, int rows, int cols, const double (&spacing)[3]) const {
        std::vector<uint8_t> labels(checked_count(slices, rows, cols));
        es_error err{};
        detail::check(es_segment_volume_spaced(seg_, hu, detail::dtype_of<T>::value, slices, rows, cols, cols,
                                               static_cast<std::ptrdiff_t>(rows) * cols, spacing, labels.data(),
                                               &err),
                      err);
        return labels;
    }

    // Test-time mirroring of the segment calls: "none", "flip" or "mirror" (es_set_tta).
    void set_tta(const std::string &mode) {
        es_error err{};
        detail::check(es_set_tta(seg_, mode.c_str(), &err), err);
    }

    // Class names by class number.
    std::vector<std::string> labels() const {
        int count = 0;
        const char *const *names = es_labels(seg_, &count);
        return std::vector<std::string>(names, names + count);
    }

    std::string spec_json() const { return text(es_spec_json(seg_)); }
    std::string artifact() const { return text(es_artifact(seg_)); }
    es_segmenter *get() const noexcept { return seg_; }

  private:
    static std::string text(const char *s) { return s ? s : ""; }

    // The label buffer's size, refused before allocating when the C API would refuse the call.
    static std::size_t checked_count(int slices, int rows, int cols) {
        if (slices < 1 || rows < 1 || cols < 1)
            throw Error(ES_EINVAL, "sizes must be positive, got " + std::to_string(slices) + " slice(s) of " +
                                       std::to_string(rows) + " x " + std::to_string(cols));
        if (rows > ES_MAX_SIDE || cols > ES_MAX_SIDE)
            throw Error(ES_EDATA, "slices of " + std::to_string(rows) + " x " + std::to_string(cols) +
                                      " are larger than the limit of " + std::to_string(ES_MAX_SIDE) + " (ES_MAX_SIDE)");
        return static_cast<std::size_t>(slices) * static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
    }

    es_segmenter *seg_ = nullptr;
};

inline std::string version() { return es_version(); }

} // namespace edgeseg

#endif
