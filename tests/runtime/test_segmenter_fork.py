"""A Segmenter in a process forked after it was loaded (multiprocessing's default start method on
Linux): every call is one BackendError saying to load the bundle there, never a hang, and
dropping the inherited segmenter in the child neither hangs nor harms the parent's."""

from __future__ import annotations

import gc
import multiprocessing
import threading

import numpy as np
import pytest

from edgeseg.data.phantom import synth_phantom
from edgeseg.errors import BackendError
from edgeseg.runtime import Segmenter
from edgeseg.runtime.runners import runner_class

# A child that hangs is killed after this long: far beyond the second a call takes here.
CHILD_SECONDS = 120


def _load(bundle_dir, backend: str, threads: int) -> Segmenter:
    if not runner_class(backend.partition(":")[0]).available():
        pytest.skip(f"{backend} is not installed")
    return Segmenter.load(bundle_dir, backend=backend, threads=threads)


def _in_forked_child(held: dict, volume: np.ndarray) -> dict:
    """Run the inherited segmenter's calls in a forked child; what each raised, or 'hung'."""
    ctx = multiprocessing.get_context("fork")
    answers = ctx.Queue()

    def child() -> None:
        got = {}
        seg = held.pop("seg")
        for name, call in [("predict", lambda: seg.predict(volume[0])),
                           ("predict_volume", lambda: seg.predict_volume(volume)),
                           ("infer", lambda: seg.infer(np.zeros((1, 1, *seg.spec.size), np.float32)))]:
            try:
                call()
                got[name] = "ran"
            except BackendError as exc:
                got[name] = str(exc)
        seg.close()
        del seg, call
        gc.collect()  # freeing the parent's engine here would wait for threads fork did not copy
        got["dropped"] = True
        answers.put(got)

    process = ctx.Process(target=child)
    process.start()
    process.join(CHILD_SECONDS)
    if process.is_alive():
        process.kill()
        process.join()
        return {"hung": True}
    return answers.get(timeout=30) if process.exitcode == 0 else {"exitcode": process.exitcode}


def _assert_refused_in_child(got: dict) -> None:
    assert "hung" not in got, "a call in the forked child never returned"
    assert got.get("dropped"), got
    for name in ("predict", "predict_volume", "infer"):
        assert "was loaded in process" in got[name] and "load the bundle in this process" in got[name], got


@pytest.mark.parametrize("backend,threads", [("onnxruntime:fp32", 1), ("openvino:int8", 0)])
def test_a_forked_child_is_refused_clearly_and_the_parent_goes_on(bundle_dir, backend, threads):
    volume = synth_phantom("case_004", 4, shape=(6, 70, 60)).hu
    # the dict holds the only reference, so that the child really drops the segmenter
    held = {"seg": _load(bundle_dir, backend, threads)}
    held["seg"].overlap = True  # its pre-processing thread, started by the call below, is not in the child
    expected = held["seg"].predict_volume(volume)
    _assert_refused_in_child(_in_forked_child(held, volume))  # pops the child's copy only
    np.testing.assert_array_equal(held["seg"].predict_volume(volume), expected)
    held["seg"].close()


def test_a_child_forked_during_a_call_in_another_thread_is_refused(bundle_dir):
    volume = synth_phantom("case_005", 5, shape=(4, 64, 64)).hu
    seg = _load(bundle_dir, "onnxruntime:fp32", 0)
    expected = seg.predict_volume(volume)
    started, go = threading.Event(), threading.Event()
    run = seg.runner._infer

    def held_open(batch):
        started.set()
        go.wait(60)
        return run(batch)

    seg.runner._infer = held_open  # the call holds the segmenter's and the runner's locks at the fork
    result = {}
    caller = threading.Thread(target=lambda: result.update(labels=seg.predict_volume(volume)))
    caller.start()
    assert started.wait(60)
    try:
        got = _in_forked_child({"seg": seg}, volume)
    finally:
        go.set()
        caller.join(60)
    _assert_refused_in_child(got)
    np.testing.assert_array_equal(result["labels"], expected)
    seg.close()
