"""The worked example of docs/runtime.md#adding-a-backend, as written: its runner file, put in a
folder the runners package searches (as a file in edgeseg/runtime/runners/ is), is picked up by
--backend, auto's probe and its cache key, the export gate, inspect, bench, version and the
provenance of an output, with no other edit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BUNDLE_CALIBRATION

pytest.importorskip("onnx.reference")
DOCS = Path(__file__).resolve().parents[2] / "docs"
# The runners package's folders are where the registry looks; the test adds the example's folder
# to them rather than write into the source tree.
RUN = ("import sys\n"
       "import edgeseg.runtime.runners as runners\n"
       "runners.__path__.append(sys.argv.pop(1))\n"
       "from edgeseg.cli.main import cli\n"
       "cli(prog_name='edgeseg')\n")


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    section = (DOCS / "runtime.md").read_text().split("## Adding a backend\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    folder = tmp_path_factory.mktemp("runners")
    (folder / "onnx_reference.py").write_text(block)
    return folder


def edgeseg(plugins: Path, tmp_path: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGESEG_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-c", RUN, str(plugins), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)


def test_predict_names_it_auto_measures_it_and_its_precisions_bound_it(plugins, bundle_dir, trained_checkpoint,
                                                                       tmp_path, assert_one_line_error):
    from edgeseg.data.phantom import synth_phantom

    np.save(tmp_path / "ct.npy", synth_phantom("case_000", 3, shape=(4, 64, 64)).hu)
    named = edgeseg(plugins, tmp_path, "predict", bundle_dir, "ct.npy", "--out", "ref.npy", "--backend", "onnx-reference")
    assert named.returncode == 0, named.stderr
    assert "backend onnx-reference:fp32" in named.stdout
    other = edgeseg(plugins, tmp_path, "predict", bundle_dir, "ct.npy", "--out", "ort.npy", "--backend", "onnxruntime:fp32")
    assert other.returncode == 0, other.stderr
    # another engine's labels for the same graph
    np.testing.assert_array_equal(np.load(tmp_path / "ref.npy"), np.load(tmp_path / "ort.npy"))

    int8 = edgeseg(plugins, tmp_path, "predict", bundle_dir, "ct.npy", "--out", "x.npy", "--backend", "onnx-reference:int8")
    assert_one_line_error(int8, "backend 'onnx-reference' runs fp32 artifacts, not 'int8'")

    # The bundle was exported before the backend existed: the gate never ran it, so auto does not
    # measure it until edgeseg gate has scored it.
    auto = edgeseg(plugins, tmp_path, "predict", bundle_dir, "ct.npy", "--out", "auto.npy", "--backend", "auto")
    assert auto.returncode == 0, auto.stderr
    assert ("backend auto skips onnx-reference:fp32: not scored by the export gate: onnx-reference was not installed "
            "where the bundle was exported") in auto.stderr
    [probe] = [line for line in auto.stderr.splitlines() if "probe at batch 1" in line]
    assert "onnx-reference" not in probe
    bundle = shutil.copytree(bundle_dir, tmp_path / "bundle")
    gated = edgeseg(plugins, tmp_path, "gate", bundle, "--checkpoint", trained_checkpoint, "--quiet")
    assert gated.returncode == 0, gated.stderr
    assert "model.onnx on onnx-reference: passed: auto may pick it" in gated.stdout
    auto = edgeseg(plugins, tmp_path, "predict", bundle, "ct.npy", "--out", "auto.npy", "--backend", "auto")
    assert auto.returncode == 0, auto.stderr
    [probe] = [line for line in auto.stderr.splitlines() if "probe at batch 1" in line]
    assert "onnx-reference:fp32 " in probe and "onnx-reference:int8" not in probe
    from importlib import metadata

    keys = json.loads((tmp_path / "cache" / "backend-probe.json").read_text())
    assert len(keys) == 2  # the gate's verdict made a new manifest: auto measured again
    assert all(f"onnx={metadata.version('onnx')}" in key for key in keys)  # an upgrade of its library does too


def test_the_gate_scores_it_and_inspect_reads_its_rows(plugins, trained_checkpoint, tmp_path):
    done = edgeseg(plugins, tmp_path, "export", trained_checkpoint, "--out", "bundle", "--formats", "onnx", "--int8",
                   "--calib", BUNDLE_CALIBRATION, "--verify-slices", "8", "--max-batch", "2",
                   "--max-dice-drop-int8", "0.05", "--quiet")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert all("onnx-reference" not in a.get("excluded", {}) for a in manifest["artifacts"])
    shown = edgeseg(plugins, tmp_path, "inspect", "bundle", "--json", "inspect.json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads((tmp_path / "inspect.json").read_text())
    rows = {(r["file"], r["runner"]) for r in record["parity"]["report"]["results"] if "runner" in r}
    assert ("model.onnx", "onnx-reference") in rows and ("model.int8.onnx", "onnx-reference") not in rows
    assert ("model.int8.onnx", "onnxruntime") in rows
    assert record["passed"]


def test_bench_and_version_report_it(plugins, bundle_dir, tmp_path):
    from importlib import metadata

    done = edgeseg(plugins, tmp_path, "bench", bundle_dir, "--backend", "onnx-reference", "--size", "64", "--batch", "1",
                   "--runs", "1", "--warmup", "0", "--no-cold-start", "--json", "bench.json", "--quiet")
    assert done.returncode == 0, done.stderr
    [record] = json.loads((tmp_path / "bench.json").read_text())
    assert record["chosen"] == "onnx-reference:fp32" and record["device"] == "cpu"
    assert record["versions"]["onnx"] == metadata.version("onnx")
    version = edgeseg(plugins, tmp_path, "version", "--json")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["libraries"]["onnx"] == metadata.version("onnx")
