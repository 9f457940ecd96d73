// libedgeseg for C++17: RAII over the C API in edgeseg.h, errors as edgeseg::Error.
//
//   edgeseg::Segmenter seg("bundle", "int8");
//   std::vector<uint8_t> mask = seg.segment_slice(pixels.data(), rows, cols);
//
// Header-only; link against libedgeseg. A Segmenter is movable, not copyable; its segment calls
// may come from several threads (they take turns, see edgeseg.h). Warnings (input it segments but
// the caller should know of, see es_warning_code): seg.on_warning(handler) or seg.last_warnings().
#ifndef EDGESEG_HPP
#define EDGESEG_HPP

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <new>
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

// A warning of a segment call (es_warning): an es_warning_code and its one-line text.
struct Warning {
    int code;
    std::string message;
};

using WarningHandler = std::function<void(const Warning &)>;

namespace detail {
inline void check(int rc, const es_error &err) {
    if (rc != ES_OK) throw Error(rc, err.message[0] ? err.message : es_code_message(rc));
}

// A thread's part in the warning handlers: what a handler threw, held while the C library unwinds
// its own frames (an exception must not cross them) until the wrapper segment call that gave the
// warning rethrows it; how deep in handlers the thread runs; and the handlers that on_warning
// replaced from inside a handler, destroyed once the thread runs no handler (the one replaced may
// be the one running).
struct thread_state {
    std::exception_ptr pending;
    int handlers = 0;   // handler calls running on this thread, one inside another
    int call_depth = -1; // `handlers` where the innermost wrapper segment call began; -1: none
    std::vector<std::unique_ptr<WarningHandler>> retired;
};

inline thread_state &state() {
    thread_local thread_state here;
    return here;
}

// Held by each wrapper segment call: the handlers of its own warnings throw into it alone. What an
// enclosing call (on this thread) holds is set aside on entry and given back on exit.
class call_scope {
  public:
    call_scope() : saved_(std::exchange(state().pending, nullptr)), depth_(std::exchange(state().call_depth, state().handlers)) {}
    ~call_scope() {
        state().pending = saved_;
        state().call_depth = depth_;
    }
    call_scope(const call_scope &) = delete;
    call_scope &operator=(const call_scope &) = delete;

  private:
    std::exception_ptr saved_;
    int depth_;
};

// The C callback of every handler. A warning of a wrapper segment call: the first exception its
// handlers throw is held for that call and later warnings of the call skip the handler. A warning
// of a C call made on get() directly (no wrapper call to rethrow it): what the handler throws is
// dropped, and the next warning still reaches it.
inline void call_handler(void *user, int code, const char *message) noexcept {
    thread_state &here = state();
    const bool owned = here.call_depth == here.handlers;
    if (owned && here.pending) return; // one exception per call: the first
    here.handlers++;
    try {
        (*static_cast<WarningHandler *>(user))(Warning{code, message});
    } catch (...) {
        if (owned) here.pending = std::current_exception();
    }
    if (--here.handlers == 0) here.retired.clear();
}

// check() of a segment call, after rethrowing what a warning handler threw during it.
inline void check_segment(int rc, const es_error &err) {
    if (std::exception_ptr thrown = std::exchange(state().pending, nullptr)) std::rethrow_exception(thrown);
    check(rc, err);
}

// A string for the C API, refused where a NUL inside would silently cut it ("bundle\0x" would
// open "bundle"), as Python refuses such a path or mode.
inline const char *c_string(const std::string &text, const char *what) {
    if (text.find('\0') != std::string::npos) throw Error(ES_EINVAL, std::string(what) + " holds a NUL character");
    return text.c_str();
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
        seg_ = es_open(detail::c_string(bundle_dir, "bundle_dir"), detail::c_string(precision, "precision"), threads, &err);
        if (!seg_) detail::check(err.code ? err.code : ES_EBUNDLE, err);
    }
    // As above with an explicit compiled-model cache folder ("" for none), see es_open_cached.
    Segmenter(const std::string &bundle_dir, const std::string &precision, int threads, const std::string &cache_dir) {
        es_error err{};
        seg_ = es_open_cached(detail::c_string(bundle_dir, "bundle_dir"), detail::c_string(precision, "precision"), threads,
                              detail::c_string(cache_dir, "cache_dir"), &err);
        if (!seg_) detail::check(err.code ? err.code : ES_EBUNDLE, err);
    }
    ~Segmenter() { es_close(seg_); }
    Segmenter(const Segmenter &) = delete;
    Segmenter &operator=(const Segmenter &) = delete;
    Segmenter(Segmenter &&other) noexcept
        : seg_(std::exchange(other.seg_, nullptr)), handler_(std::move(other.handler_)) {}
    Segmenter &operator=(Segmenter &&other) noexcept {
        if (this != &other) {
            es_close(seg_);
            seg_ = std::exchange(other.seg_, nullptr);
            handler_ = std::move(other.handler_); // the C callback holds its address, which moves with it
        }
        return *this;
    }

    // One (rows, cols) slice, rows `row_stride` elements apart (0: contiguous) -> rows*cols labels.
    template <typename T>
    std::vector<uint8_t> segment_slice(const T *hu, int rows, int cols, std::ptrdiff_t row_stride = 0) const {
        std::vector<uint8_t> labels = label_buffer<T>(1, rows, cols, "slice");
        detail::call_scope scope;
        es_error err{};
        detail::check_segment(es_segment_slice(seg_, hu, detail::dtype_of<T>::value, rows, cols, row_stride ? row_stride : cols,
                                       labels.data(), &err),
                      err);
        return labels;
    }

    // `slices` contiguous (rows, cols) slices -> slices*rows*cols labels.
    template <typename T> std::vector<uint8_t> segment_volume(const T *hu, int slices, int rows, int cols) const {
        std::vector<uint8_t> labels = label_buffer<T>(slices, rows, cols, "volume");
        detail::call_scope scope;
        es_error err{};
        detail::check_segment(es_segment_volume(seg_, hu, detail::dtype_of<T>::value, slices, rows, cols, cols,
                                        static_cast<std::ptrdiff_t>(rows) * cols, labels.data(), &err),
                      err);
        return labels;
    }

    // segment_volume with the voxel size (z, y, x) in mm, for bundles that remove 3-D components
    // under a volume in mL.
    template <typename T>
    std::vector<uint8_t> segment_volume(const T *hu, int slices, int rows, int cols, const double (&spacing)[3]) const {
        std::vector<uint8_t> labels = label_buffer<T>(slices, rows, cols, "volume");
        detail::call_scope scope;
        es_error err{};
        detail::check_segment(es_segment_volume_spaced(seg_, hu, detail::dtype_of<T>::value, slices, rows, cols, cols,
                                               static_cast<std::ptrdiff_t>(rows) * cols, spacing, labels.data(),
                                               &err),
                      err);
        return labels;
    }

    // Test-time mirroring of the segment calls: "none", "flip" or "mirror" (es_set_tta).
    void set_tta(const std::string &mode) {
        es_error err{};
        detail::check(es_set_tta(seg_, detail::c_string(mode, "mode"), &err), err);
    }

    // Call `handler` for each warning of later segment calls, on the thread making the call, before
    // it returns (es_set_warning_callback); an empty handler stops them. Once this returns, the
    // handler it replaced runs on no other thread and is destroyed (called from inside a handler,
    // once this thread's handlers have returned). What the handler throws comes out of the wrapper
    // segment call that gave the warning, after that call has written its labels; during a C call
    // made on get() it is dropped. Blocks while a handler runs on another thread: do not call it
    // holding a lock the handler takes.
    void on_warning(WarningHandler handler) {
        std::unique_ptr<WarningHandler> next = handler ? std::make_unique<WarningHandler>(std::move(handler)) : nullptr;
        detail::thread_state &here = detail::state();
        if (here.handlers) here.retired.reserve(here.retired.size() + 1); // no allocation once the C side holds `next`
        es_error err{};
        detail::check(es_set_warning_callback(seg_, next ? detail::call_handler : nullptr, next.get(), &err), err);
        std::unique_ptr<WarningHandler> old = std::exchange(handler_, std::move(next));
        if (old && here.handlers) here.retired.push_back(std::move(old)); // it may be the handler running
    }

    // The warnings of the segment call that finished last on this segmenter, from any thread
    // (es_last_warnings); where threads share it, on_warning ties warnings to their call.
    std::vector<Warning> last_warnings() const {
        es_warning found[ES_MAX_WARNINGS];
        int count = es_last_warnings(seg_, found, ES_MAX_WARNINGS);
        std::vector<Warning> warnings;
        for (int i = 0; i < count && i < ES_MAX_WARNINGS; i++) warnings.push_back(Warning{found[i].code, found[i].message});
        return warnings;
    }

    // Class names by class number.
    std::vector<std::string> labels() const {
        int count = 0;
        const char *const *names = es_labels(seg_, &count);
        return std::vector<std::string>(names, names + count);
    }

    std::string spec_json() const { return text(es_spec_json(seg_)); }
    std::string artifact() const { return text(es_artifact(seg_)); }
    // A value of the provenance record (es_provenance), e.g. "manifest_sha256"; "" where it holds none.
    std::string provenance(const std::string &key) const { return text(es_provenance(seg_, key.c_str())); }
    es_segmenter *get() const noexcept { return seg_; }

  private:
    static std::string text(const char *s) { return s ? s : ""; }

    // The labels of `slices` (rows, cols) slices of T, allocated once the sizes pass the C API's
    // own checks (its messages, `what` being "slice" or "volume"); a size the address space
    // cannot hold, or an allocation that fails, is an Error too, never std::bad_alloc.
    template <typename T>
    static std::vector<uint8_t> label_buffer(int slices, int rows, int cols, const std::string &what) {
        const std::string shape = std::to_string(rows) + " x " + std::to_string(cols);
        if (slices < 1 || rows < 1 || cols < 1)
            throw Error(ES_EINVAL, what + " sizes must be positive, got " + std::to_string(slices) + " slice(s) of " + shape);
        if (rows < ES_MIN_SIDE || cols < ES_MIN_SIDE)
            throw Error(ES_EDATA, what + " of " + shape + " is too small; slices need at least " +
                                      std::to_string(ES_MIN_SIDE) + " rows and columns");
        if (rows > ES_MAX_SIDE || cols > ES_MAX_SIDE)
            throw Error(ES_EDATA, what + " of " + shape + " is larger than the limit of " + std::to_string(ES_MAX_SIDE) +
                                      " rows and columns (ES_MAX_SIDE)");
        const std::ptrdiff_t plane = static_cast<std::ptrdiff_t>(rows) * cols; // at most 2^26
        if (slices > PTRDIFF_MAX / static_cast<std::ptrdiff_t>(sizeof(T)) / plane)
            throw Error(ES_EINVAL, "row_stride " + std::to_string(cols) + " or slice_stride " + std::to_string(plane) +
                                       " is too large to address");
        const std::size_t count = static_cast<std::size_t>(slices) * static_cast<std::size_t>(plane);
        try {
            return std::vector<uint8_t>(count);
        } catch (const std::exception &) { // bad_alloc, or length_error beyond the vector's max_size()
            throw Error(ES_ENOMEM, "no memory for the labels of " + std::to_string(slices) + " slice(s) of " + shape +
                                       " (" + std::to_string(count) + " bytes)");
        }
    }

    es_segmenter *seg_ = nullptr;
    std::unique_ptr<WarningHandler> handler_; // es_set_warning_callback's `user`
};

inline std::string version() { return es_version(); }

} // namespace edgeseg

#endif
