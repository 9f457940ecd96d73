"""The C++ wrapper (edgeseg.hpp) fails as the C API does: every failure is an ``edgeseg::Error``
whose code and message are the C call's for the same problem, checked before the wrapper
allocates the label buffer, and never another exception type (``std::bad_alloc``). Its warnings
(``on_warning``, ``last_warnings``) carry the C API's, and so the Python runtime's, text."""

from __future__ import annotations

import os
import subprocess

import pytest

ES_OK, ES_EINVAL, ES_ENOMEM, ES_EDATA = 0, 1, 2, 18

SOURCE = r"""
#include <climits>
#include <cstring>
#include <iostream>
#include <string>
#include <edgeseg.hpp>

// ROWS x COLS as tests/capi/capi_checks.c uses them, so the messages compare.
static const int ROWS = 96, COLS = 80;
static int16_t hu[2 * ROWS * COLS];

static void run(edgeseg::Segmenter &seg, const std::string &which, const char *bundle) {
    const double spacing[3] = {1.0, 1.0, 1.0};
    if (which == "zero-slices") seg.segment_volume(hu, 0, ROWS, COLS);
    else if (which == "zero-rows") seg.segment_slice(hu, 0, COLS);
    else if (which == "one-row") seg.segment_slice(hu, 1, COLS);
    else if (which == "too-large") seg.segment_slice(hu, ES_MAX_SIDE + 1, COLS);
    // labels of 2^57 bytes: beyond any address space, so the allocation itself fails
    else if (which == "impossible-volume") seg.segment_volume(hu, INT_MAX, ES_MAX_SIDE, ES_MAX_SIDE);
    else if (which == "impossible-spaced") seg.segment_volume(hu, INT_MAX, ES_MAX_SIDE, ES_MAX_SIDE, spacing);
    else if (which == "nul-in-bundle") edgeseg::Segmenter(std::string(bundle) + std::string("\0x", 2), "fp32");
    else if (which == "nul-in-precision") edgeseg::Segmenter(bundle, std::string("fp32\0junk", 9));
    else if (which == "nul-in-tta") seg.set_tta(std::string("flip\0junk", 9));
    else if (which == "threads-2^30") edgeseg::Segmenter(bundle, "fp32", 1 << 30);
    else throw std::invalid_argument("unknown case " + which);
}

int main(int argc, char **argv) {
    edgeseg::Segmenter seg(argv[1], "int8");
    for (int i = 2; i < argc; i++) {
        try {
            run(seg, argv[i], argv[1]);
            std::cout << 0 << "\t\tnone\n";
        } catch (const edgeseg::Error &e) {
            std::cout << e.code() << "\t" << e.what() << "\tedgeseg::Error\n";
        } catch (const std::exception &e) {
            std::cout << -1 << "\t" << e.what() << "\tother\n";
        }
    }
    return 0;
}
"""

# wrapper case -> the capi_checks case making the same C call (None: the wrapper's own problem)
CASES = {
    "zero-slices": "zero-slices",
    "zero-rows": "zero-rows",
    "one-row": "one-row",
    "too-large": "too-large",
    "impossible-volume": None,
    "impossible-spaced": None,
    "nul-in-bundle": None,
    "nul-in-precision": None,
    "nul-in-tta": None,
    "threads-2^30": None,
}


@pytest.fixture(scope="module")
def wrapper_results(sdk, bundle, build_tools, tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    out = tmp_path_factory.mktemp("cpp")
    (out / "wrapper.cpp").write_text(SOURCE)
    exe = build_tools.compile(sdk, out / "wrapper.cpp", out / "wrapper")
    result = subprocess.run([str(exe), str(bundle), *CASES], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == len(CASES), result.stdout
    return {case: (int(code), message, kind) for case, (code, message, kind) in zip(CASES, rows)}


@pytest.mark.parametrize("case", [c for c, same in CASES.items() if same])
def test_the_wrapper_refuses_sizes_with_the_c_calls_code_and_message(case, wrapper_results, run_checks, bundle):
    code, message, kind = wrapper_results[case]
    c_code, c_message, _ = run_checks("call", bundle, CASES[case])
    assert kind == "edgeseg::Error" and (code, message) == (c_code, c_message)


def test_impossible_sizes_are_an_error_not_bad_alloc(wrapper_results):
    for case in ("impossible-volume", "impossible-spaced"):
        code, message, kind = wrapper_results[case]
        assert (kind, code) == ("edgeseg::Error", ES_ENOMEM), (case, message, kind)
        assert message == "no memory for the labels of 2147483647 slice(s) of 8192 x 8192 (144115188008747008 bytes)"


@pytest.mark.parametrize(("case", "words"), [("nul-in-bundle", "bundle_dir holds a NUL character"),
                                             ("nul-in-precision", "precision holds a NUL character"),
                                             ("nul-in-tta", "mode holds a NUL character")])
def test_a_string_with_a_nul_inside_is_refused_not_cut(case, words, wrapper_results):
    """std::string("bundle\\0x").c_str() is "bundle": the wrapper opened the bundle the caller
    did not name (Python refuses such a path, and a mode "flip\\0junk")."""
    assert wrapper_results[case] == (ES_EINVAL, words, "edgeseg::Error")


def test_threads_beyond_the_python_runtimes_limit_are_refused(wrapper_results, bundle, tmp_path):
    from edgeseg.errors import BackendError
    from edgeseg.runtime import Segmenter

    with pytest.raises(BackendError) as caught:
        Segmenter.load(bundle, backend="openvino:fp32", threads=1 << 30)
    code, message, kind = wrapper_results["threads-2^30"]
    assert (code, kind) == (ES_EINVAL, "edgeseg::Error")
    assert message == str(caught.value) == "threads must be between 0 (the backend's default) and 1024, got 1073741824"


WARNING_SOURCE = r"""
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <vector>
#include <edgeseg.hpp>

// usage: warnings BUNDLE SLICES ROWS COLS HU.raw Z Y X -- one record a line, tab-separated
int main(int argc, char **argv) {
    if (argc != 9) return 64;
    const int slices = std::stoi(argv[2]), rows = std::stoi(argv[3]), cols = std::stoi(argv[4]);
    std::vector<int16_t> hu(static_cast<size_t>(slices) * rows * cols);
    std::ifstream(argv[5], std::ios::binary).read(reinterpret_cast<char *>(hu.data()), hu.size() * sizeof(int16_t));
    const double spacing[3] = {std::stod(argv[6]), std::stod(argv[7]), std::stod(argv[8])};
    std::vector<edgeseg::Warning> heard;
    edgeseg::Segmenter first(argv[1], "fp32");
    first.on_warning([&heard](const edgeseg::Warning &w) { heard.push_back(w); });
    edgeseg::Segmenter seg = std::move(first); // the handler moves with the segmenter
    std::vector<uint8_t> labels = seg.segment_volume(hu.data(), slices, rows, cols, spacing);
    for (const auto &w : heard) std::cout << "heard\t" << w.code << "\t" << w.message << "\n";
    for (const auto &w : seg.last_warnings()) std::cout << "last\t" << w.code << "\t" << w.message << "\n";
    seg.on_warning([](const edgeseg::Warning &) { throw std::runtime_error("the handler's own error"); });
    try {
        seg.segment_volume(hu.data(), slices, rows, cols, spacing);
        std::cout << "thrown\tnothing\n";
    } catch (const std::runtime_error &e) {
        std::cout << "thrown\t" << e.what() << "\n";
    }
    seg.on_warning(nullptr);
    seg.segment_volume(hu.data(), slices, rows, cols, spacing); // no handler: nothing heard, nothing thrown
    std::cout << "after\t" << heard.size() << "\t" << seg.last_warnings().size() << "\n";
    std::ofstream("labels.raw", std::ios::binary).write(reinterpret_cast<const char *>(labels.data()), labels.size());
    return 0;
}
"""


def test_the_wrapper_hears_warnings_and_rethrows_what_its_handler_throws(sdk, bundle, phantom_hu, build_tools, tmp_path,
                                                                        caplog, monkeypatch):
    """Segmenter::on_warning and last_warnings give the Python runtime's text (a volume at 3 x the
    training FOV, as tests/capi/test_warnings.py); a handler that throws makes the segment call
    throw that exception, which never crosses the C library; a moved segmenter keeps its handler."""
    import logging

    import numpy as np

    from edgeseg.runtime import Segmenter

    monkeypatch.delenv("EDGESEG_FOV_CHECK", raising=False)
    spacing = (2.5, 2.88, 2.88)
    with caplog.at_level(logging.WARNING, logger="edgeseg.runtime.segmenter"), \
            Segmenter.load(bundle, backend="openvino:fp32") as seg:
        expected = seg.predict_volume(phantom_hu, spacing=spacing)
    python = [r.getMessage() for r in caplog.records if r.name == "edgeseg.runtime.segmenter"]
    assert len(python) == 1 and "field of view 576 mm" in python[0]
    (tmp_path / "warnings.cpp").write_text(WARNING_SOURCE)
    exe = build_tools.compile(sdk, tmp_path / "warnings.cpp", tmp_path / "warnings")
    phantom_hu.astype("<i2").tofile(tmp_path / "hu.raw")
    result = subprocess.run([str(exe), str(bundle), *map(str, phantom_hu.shape), str(tmp_path / "hu.raw"),
                             *map(repr, spacing)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "EDGESEG_FOV_CHECK"})
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert [line.split("\t") for line in result.stdout.splitlines()] == [
        ["heard", "1", python[0]], ["last", "1", python[0]], ["thrown", "the handler's own error"], ["after", "1", "1"]]
    assert np.array_equal(np.fromfile(tmp_path / "labels.raw", dtype=np.uint8).reshape(phantom_hu.shape), expected)
