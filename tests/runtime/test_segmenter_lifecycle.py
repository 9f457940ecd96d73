"""Closing a Segmenter or a Runner: later calls get one clear BackendError, and a close from
another thread waits for the call in progress instead of releasing the engine under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from edgeseg.data.phantom import synth_phantom
from edgeseg.errors import BackendError
from edgeseg.kernels import preprocess
from edgeseg.runtime import Segmenter
from edgeseg.runtime.runners import runner_class

BACKENDS = ["onnxruntime:fp32", "openvino:int8", "torchscript:fp32"]


def _load(bundle_dir, backend: str, threads: int = 0) -> Segmenter:
    cls = runner_class(backend.partition(":")[0])
    if not cls.available():
        pytest.skip(f"{cls.name} is not installed")
    return Segmenter.load(bundle_dir, backend=backend, threads=threads)


def _preprocess_threads() -> int:
    return sum(t.name.startswith("edgeseg-preprocess") for t in threading.enumerate())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_closed_segmenter_refuses_every_call_with_one_error(bundle_dir, backend):
    volume = synth_phantom("case_001", 1, shape=(4, 70, 60)).hu
    seg = _load(bundle_dir, backend, threads=1)
    seg.predict_volume(volume)
    seg.close()
    seg.close()  # a second close is harmless
    workers = _preprocess_threads()
    with pytest.raises(BackendError, match="is closed; load the bundle again"):
        seg.predict(volume[0])
    with pytest.raises(BackendError, match="is closed; load the bundle again"):
        seg.predict_volume(volume)
    with pytest.raises(BackendError, match="is closed; load the bundle again"):
        seg.infer(preprocess(volume, seg.spec))
    assert _preprocess_threads() == workers  # no worker thread started for a closed segmenter


@pytest.mark.parametrize("overlap", [True, False], ids=["worker-overlap", "inline"])
def test_close_from_another_thread_waits_for_the_volume_in_progress(bundle_dir, overlap):
    volume = synth_phantom("case_002", 2, shape=(120, 64, 64)).hu
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as reference:
        expected = reference.predict_volume(volume, batch_size=2)
    seg = Segmenter.load(bundle_dir, backend="onnxruntime:fp32", threads=1)
    seg.overlap = overlap
    started = threading.Event()
    infer = seg.runner.infer

    def observed(batch):
        started.set()
        return infer(batch)

    seg.runner.infer = observed  # only watches for the first batch; the real runner runs it
    result: dict[str, object] = {}

    def segment() -> None:
        try:
            result["labels"] = seg.predict_volume(volume, batch_size=2)
        except Exception as exc:  # noqa: BLE001 - the test reports what the volume got
            result["error"] = exc

    worker = threading.Thread(target=segment)
    worker.start()
    assert started.wait(60)
    seg.close()  # 59 batches are still to come
    worker.join(60)
    assert "error" not in result, f"the volume in progress failed: {result.get('error')!r}"
    np.testing.assert_array_equal(result["labels"], expected)
    with pytest.raises(BackendError, match="is closed"):
        seg.predict(volume[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_close_waits_for_an_inference_in_progress(bundle_dir, backend):
    seg = _load(bundle_dir, backend)
    runner = seg.runner
    batch = preprocess(synth_phantom("case_003", 3, shape=(2, 64, 64)).hu, seg.spec)
    expected = runner.infer(batch)
    started, go = threading.Event(), threading.Event()
    run = runner._infer

    def held(b):
        started.set()
        go.wait(30)
        return run(b)

    runner._infer = held  # holds the engine call open until the test lets it go
    got: dict[str, object] = {}

    def infer() -> None:
        try:
            got["logits"] = runner.infer(batch)
        except Exception as exc:  # noqa: BLE001
            got["error"] = exc

    caller = threading.Thread(target=infer)
    caller.start()
    assert started.wait(30)
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join(0.5)
    still_waiting = closer.is_alive()
    go.set()
    caller.join(30)
    closer.join(30)
    assert still_waiting, "close returned while an inference was running on the engine it released"
    assert "error" not in got, f"the inference in progress failed: {got.get('error')!r}"
    np.testing.assert_array_equal(got["logits"], expected)
    with pytest.raises(BackendError, match="is closed"):
        runner.infer(batch)



LOAD_CYCLES = """
import json, os, sys, threading
import numpy as np
from edgeseg.runtime import Segmenter

def state():
    return {"threads": sorted(t.name for t in threading.enumerate()), "fds": len(os.listdir("/proc/self/fd"))}

volume = np.full((5, 80, 70), -1000, np.int16)
volume[:, 20:50, 20:40] = 60
def cycle(overlap):
    with Segmenter.load(sys.argv[1], backend=sys.argv[2], threads=1) as seg:
        seg.overlap = overlap  # with and without the pre-processing thread
        seg.predict_volume(volume)
        seg.predict(volume[0])

before = state()
cycle(False)  # the engine's library opens what it keeps for the process (ONNX Runtime: 3 files)
warm = state()
for n in range(12):
    cycle(n % 2 == 0)
print(json.dumps([before, warm, state()]))
"""


@pytest.mark.parametrize("backend", ["onnxruntime:fp32", "openvino:int8"])
def test_loading_and_closing_again_and_again_leaves_no_thread_or_file_behind(bundle_dir, backend, tmp_path):
    if not runner_class(backend.partition(":")[0]).available():
        pytest.skip(f"{backend} is not installed")
    script = tmp_path / "cycles.py"
    script.write_text(LOAD_CYCLES)
    # a process of its own: a thread another test started (a tqdm bar's monitor) would hide a new one
    proc = subprocess.run([sys.executable, str(script), str(bundle_dir), backend], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "EDGESEG_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    before, warm, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert after["threads"] == before["threads"], "a thread outlived its segmenter"
    assert after["fds"] == warm["fds"], "files stayed open after close"
