"""README.md's quick start, run as written.

The two code blocks of the README's "Quick start" section are the source of truth: every line is
an `edgeseg ...` or `curl ...` command (or a comment), and this test runs each one unchanged in a
temporary folder, so the relative `runs/quick/...` paths land under tmp_path. The only
substitution is the port: `edgeseg serve` is started for real on 127.0.0.1 on a free port instead
of 8000, and the curl lines are pointed at it. The README's settings are already small (a 6-case
phantom at 64², a 29k-parameter U-Net, 15 epochs, three backends timed 5 times), so nothing else is shrunk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.ports import reserved_port

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
README_PORT = "8000"
OUTPUT_OPTIONS = ("--out", "--json", "--png", "--overlay")


def quick_start_blocks(text: str) -> list[list[list[str]]]:
    """The commands of each code block in the README's Quick start section, as argument lists."""
    match = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", match.group(1), re.S | re.M)
    assert len(blocks) == 2, f"the quick start should hold two code blocks (commands, then requests), found {len(blocks)}"
    parsed = []
    for block in blocks:
        commands = [shlex.split(line, comments=True) for line in block.splitlines()]
        parsed.append([argv for argv in commands if argv])
    return parsed


def option(argv: list[str], name: str) -> str | None:
    """The value following ``name`` in ``argv``, or None."""
    return argv[argv.index(name) + 1] if name in argv else None


def with_port(argv: list[str], port: int) -> list[str]:
    """``argv`` with the README's port 8000 replaced by ``port`` (in --port and in URLs)."""
    return [str(port) if arg == README_PORT else arg.replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}")
            for arg in argv]


def test_readme_commands_are_all_run():
    """Every line of the quick start is a command this test knows how to run and check."""
    commands, requests = quick_start_blocks(README.read_text())
    assert all(argv[0] == "edgeseg" for argv in commands), [argv for argv in commands if argv[0] != "edgeseg"]
    assert commands[-1][:2] == ["edgeseg", "serve"] and option(commands[-1], "--port") == README_PORT
    assert requests and all(argv[0] == "curl" for argv in requests)
    assert all(f"127.0.0.1:{README_PORT}/" in " ".join(argv) for argv in requests)


@pytest.fixture
def env(tmp_path) -> dict:
    """The test's environment: this checkout first on the path, every cache under tmp_path."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), environ.get("PYTHONPATH")) if p)
    environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    environ["EDGESEG_CACHE_DIR"] = str(tmp_path / "cache" / "edgeseg")
    environ["MPLCONFIGDIR"] = str(tmp_path / "cache" / "matplotlib")
    return environ


def run_edgeseg(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def check_outputs(argv: list[str], proc: subprocess.CompletedProcess, cwd: Path) -> None:
    """What each command of the quick start must have written (beyond a zero exit)."""
    for name in OUTPUT_OPTIONS:
        if option(argv, name):
            assert (cwd / option(argv, name)).exists(), f"{shlex.join(argv)} did not write {option(argv, name)}"
    out = cwd / option(argv, "--out") if option(argv, "--out") else None
    verb = argv[1] if argv[1] != "data" else f"data {argv[2]}"
    if verb == "data synth":
        assert len(list((out / "imagesTr").glob("*.nii.gz"))) == int(option(argv, "--cases"))
        assert len(list((out / "labelsTr").glob("*.nii.gz"))) == int(option(argv, "--cases"))
    elif verb == "train":
        written = ("best.pt", "last.pt", "split.json", "metrics.csv", "metrics.json", "curves.png", "slice-store")
        assert [name for name in written if not (out / name).exists()] == []
    elif verb == "evaluate":
        report = json.loads((out / "eval.json").read_text())
        split = json.loads((cwd / Path(argv[2]).parent / "split.json").read_text())
        assert [case["case_id"] for case in report["cases"]] == split["test"]
        assert all(0 <= case["metrics"]["liver"]["dice"] <= 1 for case in report["cases"])
    elif verb == "export":
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["artifacts"] and all((out / a["file"]).is_file() for a in manifest["artifacts"])
    elif verb == "inspect":
        manifest = json.loads((cwd / argv[2] / "manifest.json").read_text())
        rows = [line for line in proc.stdout.splitlines() if any(f" {a['file']} " in line for a in manifest["artifacts"])]
        assert len(rows) >= len(manifest["artifacts"]) and all(" ok " in row for row in rows[:len(manifest["artifacts"])])
    elif verb == "predict":
        check_prediction(cwd / argv[3], out)
    elif verb == "bench":
        rows = json.loads((cwd / option(argv, "--json")).read_text())
        wanted = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--backend"]
        assert [row["backend"] for row in rows] == wanted and all(row["batches"] for row in rows)


def check_prediction(source: Path, prediction: Path) -> None:
    """The label map lies on the input's grid and finds the phantom's liver (Dice vs its truth)."""
    import nibabel as nib

    image = nib.load(source)
    truth = np.asarray(nib.load(source.parent.parent / "labelsTr" / source.name).dataobj) == 1
    predicted = nib.load(prediction)
    labels = np.asarray(predicted.dataobj)
    assert labels.shape == image.shape and np.allclose(predicted.affine, image.affine)
    assert set(np.unique(labels)) <= {0, 1}
    dice = 2 * np.sum((labels == 1) & truth) / (np.sum(labels == 1) + np.sum(truth))
    assert dice > 0.5, f"predicted liver Dice {dice:.3f} against the phantom's truth"


def http(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(server: subprocess.Popen, base: str, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, f"edgeseg serve exited {server.returncode}:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(OSError):  # not listening yet
            if http(f"{base}/v2/health/ready", timeout=2)[0] == 200:
                return
        time.sleep(0.25)
    raise AssertionError(f"edgeseg serve was not ready within {seconds} s")


def check_v2_inference(base: str, bundle: Path, source: Path) -> None:
    """One KServe v2 inference on a real pre-processed slice, against ONNX Runtime on the FP32 graph."""
    import nibabel as nib
    import onnxruntime as ort

    manifest = json.loads((bundle / "manifest.json").read_text())
    low, high = manifest["spec"]["window"]
    volume = np.asarray(nib.load(source).dataobj, dtype=np.float32)
    assert volume.shape[:2] == tuple(manifest["spec"]["size"]), "the phantom is made at the model's size"
    image = ((np.clip(volume[:, :, volume.shape[2] // 2], low, high) - low) / (high - low))[None, None]
    body = json.dumps({"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32",
                                   "data": image.ravel().tolist()}]}).encode()
    status, payload = http(f"{base}/v2/models/edgeseg/infer", body)
    assert status == 200, payload[:500]
    output = json.loads(payload)["outputs"][0]
    logits = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": image.astype(np.float32)})[0]
    assert logits.shape == expected.shape
    # the server may run the FP16 graph: the gate allows its logits a few 1e-3 off FP32
    np.testing.assert_allclose(logits, expected, atol=0.05)


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)
        raise AssertionError("edgeseg serve did not stop on SIGINT within 20 s")


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path, env):
    """Each quick-start command exits 0 and writes what the README says; the served bundle answers
    the v2 health, metadata and inference endpoints, and /v1/segment equals the local prediction."""
    import nibabel as nib

    commands, requests = quick_start_blocks(README.read_text())
    *batch, serve = commands
    for argv in batch:
        proc = run_edgeseg(argv, tmp_path, env)
        check_outputs(argv, proc, tmp_path)

    port = reserved_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", *with_port(serve, port)[1:]],
                                  cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(server, base, log)
        predict = next(argv for argv in batch if argv[1] == "predict")
        check_v2_inference(base, tmp_path / serve[2], tmp_path / predict[3])
        if shutil.which("curl") is None:
            pytest.fail("curl is not installed: the README's request lines cannot be run as written")
        for argv in requests:
            proc = subprocess.run(with_port(argv, port), cwd=tmp_path, capture_output=True, timeout=60)
            assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}"
            if option(argv, "-o"):
                served = np.asarray(nib.load(tmp_path / option(argv, "-o")).dataobj)
                local = np.asarray(nib.load(tmp_path / option(predict, "--out")).dataobj)
                assert np.array_equal(served, local), f"{np.sum(served != local)} voxels differ from edgeseg predict"
    finally:
        if server.poll() is None:
            stop(server)
    assert server.returncode == 0, log.read_text()[-2000:]
