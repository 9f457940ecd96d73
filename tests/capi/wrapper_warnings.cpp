// Drives edgeseg.hpp's warning handlers for tests/capi/test_cpp_warnings.py, built with and
// without AddressSanitizer. One tab-separated record a line; exit 0 whenever the cases ran, so a
// crash or a sanitizer report is the only way to a non-zero exit.
//
//   wrapper_warnings CASE BUNDLE ROWS COLS SLICE.raw Z Y X
// CASE: "reenter" (a handler replaces itself with seg.on_warning, then reads its own captures),
// "raw-throw" (a handler throws during a C call made on seg.get(); wrapper calls follow),
// "nested-throw" (a handler's own nested wrapper call throws), "move" (move construction and
// move assignment of a Segmenter whose source is destroyed before the segment call).
#include "capi_driver.h" // first: the sanitizer builds' dlopen shim, read_raw
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <edgeseg.hpp>

namespace {

struct Input {
    const char *bundle;
    int rows, cols;
    std::unique_ptr<int16_t, decltype(&free)> hu{nullptr, &free};
    double spacing[3];
};

std::vector<uint8_t> segment(const edgeseg::Segmenter &seg, const Input &in) {
    return seg.segment_volume(in.hu.get(), 1, in.rows, in.cols, in.spacing);
}

// A handler that replaces itself, then uses what it captured (freed with it on the old wrapper).
void reenter(const Input &in) {
    edgeseg::Segmenter seg(in.bundle, "fp32");
    std::vector<std::string> heard;
    const std::string first(200, 'a'); // on the heap, so a freed capture is a use after free
    seg.on_warning([&seg, &heard, first](const edgeseg::Warning &) {
        seg.on_warning([&heard](const edgeseg::Warning &w) { heard.push_back("second " + std::to_string(w.code)); });
        heard.push_back("first " + std::to_string(first.size()));
    });
    segment(seg, in);
    segment(seg, in);
    for (const std::string &h : heard) std::cout << "heard\t" << h << "\n";
}

// What a handler throws during a raw C call has no wrapper call to come out of: it must not come
// out of the next wrapper call (on this segmenter or another), nor silence the handlers until then.
void raw_throw(const Input &in) {
    edgeseg::Segmenter seg(in.bundle, "fp32");
    seg.on_warning([](const edgeseg::Warning &) { throw std::runtime_error("stale"); });
    std::vector<uint8_t> labels(static_cast<size_t>(in.rows) * in.cols);
    es_error err{};
    int rc = es_segment_volume_spaced(seg.get(), in.hu.get(), ES_INT16, 1, in.rows, in.cols, in.cols,
                                      static_cast<ptrdiff_t>(in.rows) * in.cols, in.spacing, labels.data(), &err);
    std::cout << "raw\t" << rc << "\n";
    int heard = 0;
    seg.on_warning([&heard](const edgeseg::Warning &) { heard++; });
    try {
        segment(seg, in);
        std::cout << "wrapper\tnothing thrown\t" << heard << "\n";
    } catch (const std::exception &e) {
        std::cout << "wrapper\t" << e.what() << "\t" << heard << "\n";
    }
}

// A handler whose nested wrapper call throws (its own handler's exception) and catches it: the
// outer call throws nothing; an outer handler's exception still comes out of the outer call.
void nested_throw(const Input &in) {
    edgeseg::Segmenter seg(in.bundle, "fp32");
    int depth = 0;
    std::string caught;
    seg.on_warning([&](const edgeseg::Warning &) {
        if (depth++ == 0) {
            try {
                segment(seg, in);
            } catch (const std::runtime_error &e) {
                caught = e.what();
            }
            return;
        }
        throw std::runtime_error("inner");
    });
    try {
        segment(seg, in);
        std::cout << "outer\tnothing thrown\t" << caught << "\n";
    } catch (const std::exception &e) {
        std::cout << "outer\t" << e.what() << "\t" << caught << "\n";
    }
    depth = 1; // from now on the handler throws at once
    try {
        segment(seg, in);
        std::cout << "again\tnothing thrown\n";
    } catch (const std::exception &e) {
        std::cout << "again\t" << e.what() << "\n";
    }
}

// The handler lives with the segmenter, not with the object that was moved from.
void move(const Input &in) {
    std::vector<std::string> heard;
    auto listen = [&heard](const std::string &who) {
        return [&heard, who](const edgeseg::Warning &w) { heard.push_back(who + " " + std::to_string(w.code)); };
    };
    std::unique_ptr<edgeseg::Segmenter> kept;
    {
        edgeseg::Segmenter inner(in.bundle, "fp32");
        inner.on_warning(listen("constructed"));
        kept = std::make_unique<edgeseg::Segmenter>(std::move(inner));
    } // `inner`, moved from, is destroyed here
    segment(*kept, in);
    edgeseg::Segmenter target(in.bundle, "fp32");
    target.on_warning(listen("replaced"));
    {
        edgeseg::Segmenter source(in.bundle, "fp32");
        source.on_warning(listen("assigned"));
        target = std::move(source);
    }
    segment(target, in);
    kept.reset();
    segment(target, in);
    for (const std::string &h : heard) std::cout << "heard\t" << h << "\n";
}

} // namespace

int main(int argc, char **argv) {
    if (argc != 9) return 64;
    Input in{argv[2], std::stoi(argv[3]), std::stoi(argv[4]), {read_raw(argv[5], static_cast<size_t>(std::stoi(argv[3])) * std::stoi(argv[4])), &free},
             {std::stod(argv[6]), std::stod(argv[7]), std::stod(argv[8])}};
    if (!in.hu) return 65;
    const std::string which = argv[1];
    if (which == "reenter") reenter(in);
    else if (which == "raw-throw") raw_throw(in);
    else if (which == "nested-throw") nested_throw(in);
    else if (which == "move") move(in);
    else return 64;
    return 0;
}
