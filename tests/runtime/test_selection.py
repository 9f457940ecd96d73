"""Backend selection reads the runners' own description and the export gate's exclusions;
an artifact format no runner loads is a one-line error; a Segmenter needs no bundle folder."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.data.phantom import synth_phantom
from edgeseg.errors import BundleError
from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeRunner
from edgeseg.runtime.runners import runner_class
from edgeseg.runtime.selection import candidates


def _exclude(bundle, file: str, runner: str, why: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["file"] == file:
            entry.setdefault("excluded", {})[runner] = why
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_auto_never_picks_a_runner_the_gate_failed(bundle_copy, monkeypatch, caplog):
    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "0")
    first, second, *_ = candidates(read_manifest(bundle_copy), gated_only=True)
    with Segmenter.load(bundle_copy) as seg:
        assert seg.backend == first.label  # first in the runners' preference order
    _exclude(bundle_copy, first.entry.file, first.runner, "dice drop 0.0062 > 0.005")
    labels = [c.label for c in candidates(read_manifest(bundle_copy), gated_only=True)]
    assert first.label not in labels and labels[0] == second.label
    with Segmenter.load(bundle_copy) as seg:
        assert seg.backend == second.label
    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "1")
    with Segmenter.load(bundle_copy) as seg:  # the probe does not measure it either
        assert seg.backend != first.label
    with caplog.at_level(logging.WARNING, logger="edgeseg"), Segmenter.load(bundle_copy, backend=first.label) as seg:
        assert seg.backend == first.label  # asked for by name: loaded, with a warning
    assert f"failed the export gate on {first.entry.file} (dice drop 0.0062 > 0.005)" in caplog.text


def test_auto_with_every_runner_skipped_names_each_reason(bundle_copy, monkeypatch):
    from edgeseg.errors import BackendError

    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "0")
    everything = candidates(read_manifest(bundle_copy))
    assert len(everything) >= 2
    for c in everything:
        _exclude(bundle_copy, c.entry.file, c.runner, f"refused {c.label}")
    with pytest.raises(BackendError) as caught:
        Segmenter.load(bundle_copy)
    message = str(caught.value)
    assert message.startswith("auto may run none of this bundle's artifacts here")
    for c in everything:
        assert f"{c.label}: refused {c.label}" in message
    with Segmenter.load(bundle_copy, backend=everything[0].label) as seg:  # by name it still loads
        assert seg.backend == everything[0].label


def test_inspect_shows_why_auto_skips_a_runner(bundle_copy):
    from edgeseg.cli.inspect import describe_bundle

    _exclude(bundle_copy, "model.onnx", "openvino", "3 mask pixels differ from FP32")
    row = next(line for line in describe_bundle(str(bundle_copy))[0].splitlines() if line.startswith("onnx-fp32"))
    assert "openvino (3 mask pixels differ from FP32)" in row


def test_inspect_titles_the_skips_column_for_every_reason_it_lists(bundle_copy):
    """The column holds gate exclusions, TorchScript (run only when named) and this machine's CPU;
    a title saying 'failed the gate' would tell a reader that the TorchScript artifact failed it."""
    from edgeseg.cli.inspect import describe_bundle

    lines = describe_bundle(str(bundle_copy))[0].splitlines()
    header = next(line for line in lines if line.startswith("artifact") and "hash check" in line)
    torchscript = next(line for line in lines if line.startswith("torchscript-fp32") and "model.ts" in line)
    assert header.rstrip().endswith("auto skips") and "gate" not in header
    assert "torchscript (a TorchScript program" in torchscript


@pytest.mark.parametrize("command", ["inspect", "predict"])
def test_a_format_no_runner_loads_is_one_line(bundle_copy, tmp_path, command, assert_one_line_error):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0]["format"] = "openvino"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no backend loads format 'openvino'"):
        read_manifest(bundle_copy)
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    args = [str(bundle_copy)] + (["in.npy", "--out", "out.npy", "--quiet"] if command == "predict" else [])
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", command, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert_one_line_error(done, "no backend loads format 'openvino' (known formats: onnx, tensorrt, torchscript)")


def test_a_segmenter_from_spec_labels_and_runner_equals_the_loaded_one(bundle_dir):
    manifest = read_manifest(bundle_dir)
    entry = manifest.artifact("onnx", "fp32")
    runner = OnnxRuntimeRunner(bundle_dir / entry.file, entry, manifest.inputs[0], manifest.outputs[0], 4)
    volume = synth_phantom("case_003", 5, shape=(6, 80, 72))
    with Segmenter(manifest.spec, manifest.labels, runner, manifest.postprocess) as bare, \
            Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as loaded:
        assert bare.bundle is None and bare.max_batch == 4
        np.testing.assert_array_equal(bare.predict_volume(volume), loaded.predict_volume(volume))
        assert (bare.predict_volume(volume) == 1).any()


def _set_int8_scheme(bundle, scheme: str | None) -> None:
    """Rewrite the INT8 artifact's recorded scheme; None: a bundle from before the schemes."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["precision"] == "int8":
            entry["extra"].pop("int8_scheme", None)
            if scheme is not None:
                entry["extra"]["int8_scheme"] = scheme
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _fake_cpu(monkeypatch, machine: str, flags: set[str] | None) -> None:
    from edgeseg.runtime import selection

    monkeypatch.setattr(selection.platform, "machine", lambda: machine)
    monkeypatch.setattr(selection, "cpu_flags", lambda: None if flags is None else frozenset(flags))


def _int8_labels(bundle) -> set[str]:
    """The INT8 CPU runners auto may pick (the VNNI question is the CPU's; a GPU runner is not asked it)."""
    return {c.label for c in candidates(read_manifest(bundle), gated_only=True)
            if c.entry.precision == "int8" and runner_class(c.runner).device_kind == "cpu"}


@pytest.mark.parametrize("scheme", [None, "tensorrt"])
def test_auto_skips_a_signed_int8_graph_on_an_x86_cpu_without_vnni(bundle_copy, monkeypatch, caplog, scheme):
    from edgeseg.cli.inspect import describe_bundle

    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "0")
    assert "onnxruntime:int8" in _int8_labels(bundle_copy)  # the test bundle: cpu scheme
    _set_int8_scheme(bundle_copy, scheme)
    _fake_cpu(monkeypatch, "x86_64", {"sse2", "avx2", "fma"})
    assert _int8_labels(bundle_copy) == set()
    with Segmenter.load(bundle_copy) as seg:
        assert not seg.backend.endswith(":int8")
    with caplog.at_level(logging.WARNING, logger="edgeseg"), Segmenter.load(bundle_copy, backend="onnxruntime:int8") as seg:
        assert seg.backend == "onnxruntime:int8"  # asked for by name: loaded, with the reason
    assert "saturate u8 x s8 sums on this CPU (no VNNI); re-export with --int8-scheme cpu" in caplog.text
    row = next(line for line in describe_bundle(str(bundle_copy))[0].splitlines() if line.startswith("onnx-int8"))
    # inspect names the graph's scheme; a graph from before the schemes has the tensorrt one
    graph = f"of the {scheme} scheme" if scheme else "of the tensorrt scheme (exported before schemes were recorded)"
    assert f"onnxruntime (on this machine: INT8 graph {graph}: its signed activations saturate" in row
    for machine, flags in [("x86_64", {"avx2", "avx512_vnni"}), ("x86_64", {"avx2", "avx_vnni"}),
                           ("aarch64", {"asimd"}), ("x86_64", None)]:  # VNNI, ARM, or flags unknown: no risk
        _fake_cpu(monkeypatch, machine, flags)
        assert "onnxruntime:int8" in _int8_labels(bundle_copy), (machine, flags)


def test_a_cpu_scheme_graph_runs_everywhere(bundle_copy, monkeypatch):
    _set_int8_scheme(bundle_copy, "cpu")
    _fake_cpu(monkeypatch, "x86_64", {"sse2", "avx2"})
    assert {"onnxruntime:int8"} <= _int8_labels(bundle_copy)


def test_cpu_flags_are_read_from_proc_cpuinfo():
    import platform
    from pathlib import Path

    from edgeseg.runtime.machine import cpu_flags

    if not Path("/proc/cpuinfo").is_file() or platform.machine() != "x86_64":
        pytest.skip("needs Linux /proc/cpuinfo on x86_64")
    assert {"sse2", "sse4_2"} <= cpu_flags()  # in every x86-64 CPU that runs these wheels


def _record_probes(start: int) -> None:
    from edgeseg.runtime.probe_cache import write_cache

    for k in range(start, start + 25):
        write_cache(f"bundle-{k}", {"choice": "onnxruntime:fp32", "p50_ms": {"onnxruntime:fp32": float(k)}})


def test_processes_probing_at_once_keep_each_others_cache_entries(tmp_path, monkeypatch):
    """Sweep points and parallel test workers probe other bundles at the same time: each probe
    is added to the cache, not written over the others' by a copy read before them."""
    import multiprocessing

    from edgeseg.runtime.probe_cache import cache_path

    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_record_probes, args=(start,)) for start in range(0, 100, 25)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    cache = json.loads(cache_path().read_text())
    assert sorted(cache) == sorted(f"bundle-{k}" for k in range(100))
    assert all(cache[f"bundle-{k}"]["p50_ms"]["onnxruntime:fp32"] == k for k in range(100))


def test_auto_never_runs_a_torchscript_program_and_by_name_it_runs(bundle_copy, tmp_path, monkeypatch):
    """A bundle from elsewhere whose model.ts writes a file when it runs (the manifest's sha256
    rewritten to match: whoever writes a bundle writes its manifest). auto's probe loaded and ran
    every candidate, TorchScript included, so `predict BUNDLE` ran the program; now only a
    --backend naming torchscript does."""
    import hashlib

    import torch

    from edgeseg.cli.inspect import describe_bundle

    marker = tmp_path / "written-by-the-bundle"
    inner = torch.jit.load(str(bundle_copy / "model.ts"))

    class Hostile(torch.nn.Module):
        def __init__(self, inner, path: str):
            super().__init__()
            self.inner, self.path = inner, path

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            written = torch.from_file(self.path, True, 4, dtype=torch.uint8)  # shared: creates the file
            written.fill_(1)
            return self.inner(x) + written.sum().float() * 0

    torch.jit.save(torch.jit.script(Hostile(inner, str(marker))), str(bundle_copy / "model.ts"))
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    data = (bundle_copy / "model.ts").read_bytes()
    for entry in manifest["artifacts"]:
        if entry["file"] == "model.ts":
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))

    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "1")  # the probe runs each candidate it times
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    hu = synth_phantom("case_000", 0, shape=(2, 64, 64)).hu
    with Segmenter.load(bundle_copy) as seg:
        seg.predict_volume(hu)
        assert seg.runner.name != "torchscript"
    assert not marker.exists()
    assert "torchscript" not in {c.runner for c in candidates(read_manifest(bundle_copy), gated_only=True)}
    row = next(line for line in describe_bundle(str(bundle_copy))[0].splitlines() if line.startswith("torchscript"))
    assert "torchscript (a TorchScript program can run any torch operation, files included; it runs only when " \
           "named (--backend torchscript))" in row
    with Segmenter.load(bundle_copy, backend="torchscript") as seg:  # named, it runs: the user chose it
        seg.predict_volume(hu)
    assert marker.exists()


def test_threads_loading_one_bundle_at_once_share_one_probe(bundle_dir, tmp_path, monkeypatch):
    """Each thread timing the backends while the others load them could choose another backend;
    the first probes, the others wait and take its choice from the cache."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from edgeseg.runtime import selection

    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    real_probe, probes, start = selection.probe, [], threading.Barrier(4)

    def slow_probe(*args, **kwargs):  # the real probe, held open so that the loads overlap
        probes.append(threading.get_ident())
        time.sleep(0.5)
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(selection, "probe", slow_probe)

    def load(_):
        start.wait(30)
        with Segmenter.load(bundle_dir, backend="auto", threads=1) as seg:
            return seg.backend

    with ThreadPoolExecutor(4) as pool:
        chosen = list(pool.map(load, range(4)))
    assert len(probes) == 1, probes
    assert len(set(chosen)) == 1, chosen


def test_candidates_come_in_the_runners_preference_order(bundle_dir, monkeypatch):
    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "0")
    found = candidates(read_manifest(bundle_dir), installed_only=False)
    # A precision a runner gives no rank comes after every ranked one.
    ranks = [runner_class(c.runner).preference.get(c.entry.precision, float("inf")) for c in found]
    assert len(set(ranks)) > 1 and ranks == sorted(ranks)
    allowed = candidates(read_manifest(bundle_dir), gated_only=True)
    best = min(allowed, key=lambda c: runner_class(c.runner).preference.get(c.entry.precision, float("inf")))
    with Segmenter.load(bundle_dir) as seg:  # no probe: the most preferred runner auto may pick
        assert seg.backend == best.label


def test_the_probe_keeps_the_runner_with_the_lowest_median_latency(bundle_dir, monkeypatch):
    """Each runner's calls take scripted times on a clock of their own: one is fast but for one
    slow outlier, the other always middling. The median picks the first; the mean or the worst
    call would pick the second, and keeping the slowest would too."""
    import types

    from edgeseg.runtime import selection

    manifest = read_manifest(bundle_dir)
    fast, steady = candidates(manifest, gated_only=True)[:2]
    calls = {fast.label: [9.0] * selection.PROBE_WARMUP + [1.0, 1.0, 1.0, 1.0, 50.0],
             steady.label: [9.0] * selection.PROBE_WARMUP + [5.0] * 5}
    assert selection.PROBE_RUNS == 5
    clock = [0.0]
    honest = selection.instantiate

    def timed(bundle, manifest, candidate, threads):
        runner = honest(bundle, manifest, candidate, threads)
        real, durations = runner.infer, iter(calls[candidate.label])

        def infer(batch):
            clock[0] += next(durations) / 1e3
            return real(batch)

        runner.infer = infer
        return runner

    monkeypatch.setattr(selection, "instantiate", timed)
    monkeypatch.setattr(selection, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    timings, best, runner = selection.probe(bundle_dir, manifest, [steady, fast], threads=1)
    try:
        assert timings == {steady.label: pytest.approx(5.0), fast.label: pytest.approx(1.0)}
        assert best == fast
    finally:
        runner.close()


def test_a_cached_choice_auto_may_no_longer_pick_is_probed_again(bundle_copy, tmp_path, monkeypatch):
    """A probe cache written before a rule that now skips its choice (an edgeseg without the VNNI
    check, here a signed INT8 graph on an x86 CPU without VNNI) must not bring that choice back."""
    from edgeseg.runtime.probe_cache import probe_key, write_cache

    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    _set_int8_scheme(bundle_copy, "tensorrt")
    _fake_cpu(monkeypatch, "x86_64", {"sse2", "avx2", "fma"})
    write_cache(probe_key(bundle_copy, 0), {"choice": "onnxruntime:int8", "p50_ms": {}, "measured": "2024-01-01T00:00:00Z"})
    with Segmenter.load(bundle_copy) as seg:
        assert not seg.backend.endswith(":int8")
