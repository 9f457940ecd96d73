// Segment raw int16 HU slices with the C++ wrapper of libedgeseg; same arguments and output
// as examples/c/segment_raw.c:
//
//   segment BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <edgeseg.hpp>

int main(int argc, char **argv) {
    if (argc != 8) {
        std::cerr << "segment: error: usage: segment BUNDLE PRECISION SLICES ROWS COLS IN.raw OUT.raw\n";
        return 2;
    }
    try {
        const int slices = std::stoi(argv[3]), rows = std::stoi(argv[4]), cols = std::stoi(argv[5]);
        if (slices < 1 || rows < 1 || cols < 1 || rows > ES_MAX_SIDE || cols > ES_MAX_SIDE)
            throw std::invalid_argument("SLICES, ROWS and COLS must be positive and ROWS, COLS at most ES_MAX_SIDE");
        std::vector<int16_t> hu(static_cast<size_t>(slices) * rows * cols);
        std::ifstream in(argv[6], std::ios::binary);
        if (!in.read(reinterpret_cast<char *>(hu.data()), static_cast<std::streamsize>(hu.size() * sizeof(int16_t))))
            throw std::runtime_error("IN.raw is missing or smaller than SLICES x ROWS x COLS int16 values");

        edgeseg::Segmenter seg(argv[1], argv[2]);
        std::vector<uint8_t> labels = seg.segment_volume(hu.data(), slices, rows, cols);

        std::ofstream out(argv[7], std::ios::binary);
        out.write(reinterpret_cast<const char *>(labels.data()), static_cast<std::streamsize>(labels.size()));
        if (!out.flush()) throw std::runtime_error("cannot write OUT.raw");
        std::cerr << "segmented " << slices << " slice(s) with " << seg.artifact() << ", classes:";
        for (const std::string &name : seg.labels()) std::cerr << ' ' << name;
        std::cerr << '\n';
    } catch (const std::exception &exc) {
        std::cerr << "segment: error: " << exc.what() << '\n';
        return 2;
    }
    return 0;
}
