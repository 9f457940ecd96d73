"""Writes that the OS refuses or a signal cuts short, through the real command: one line, the
path that could not be written (never a temporary's), nothing left behind (no temporary, no
staging folder, no empty folder made for the output), and the earlier output whole.

The disk is full for real: the command runs under RLIMIT_FSIZE with SIGXFSZ ignored, so a write
past the limit fails with EFBIG as it fails with ENOSPC on a full disk.
"""

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interrupting import assert_whole_set, interrupted_between_renames, snapshot, stopped_once

PHANTOM = "phantom:cases=2,size=64,slices=8"


def edgeseg_limited(limit: int, *args, env=None):
    """Run edgeseg with files limited to ``limit`` bytes."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, preexec_fn=limit_files)


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny bundle (one epoch, ONNX FP32 only): these tests need a bundle to write from, not
    a good one."""
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    root = tmp_path_factory.mktemp("tiny")
    train(TrainConfig(data=PHANTOM, out=str(root / "run"), size=64, base=4, depth=2, epochs=1, batch_size=8,
                      amp="off"), progress=False)
    export_bundle(root / "run" / "best.pt", root / "bundle", ExportSettings(formats=("onnx",), verify_slices=8),
                  progress=False, echo=lambda text: None)
    return root / "bundle"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> list[Path]:
    from edgeseg.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    # of two sizes: label maps that differ, whatever a one-epoch model finds in them
    for slices in (8, 6):
        write_phantom_dataset(root / str(slices), cases=1, seed=0, shape=(slices, 64, 64))
    return [next((root / str(slices) / "imagesTr").glob("*.nii.gz")) for slices in (8, 6)]


@pytest.fixture(scope="module")
def volume(volumes) -> Path:
    return volumes[0]


@pytest.mark.parametrize("command", ["predict", "inspect", "synth"])
def test_a_failed_write_leaves_no_folder_it_made_for_its_output(command, bundle, volume, tmp_path,
                                                                 assert_one_line_error):
    """`--out new/sub/out.npy` makes new/ and new/sub/ for the file; a write the disk refuses
    removes them again, as it removes its temporary, so a failed command leaves nothing."""
    out = tmp_path / "new" / "sub" / {"predict": "out.npy", "inspect": "bundle.json", "synth": "data"}[command]
    args = {"predict": ("predict", bundle, volume, "--out", out, "--backend", "onnxruntime", "--quiet"),
            "inspect": ("inspect", bundle, "--json", out),
            "synth": ("data", "synth", "--out", out, "--cases", 1, "--size", 64, "--slices", 4, "--quiet")}[command]
    assert_one_line_error(edgeseg_limited(0, *args), f"File too large: {out}")
    assert os.listdir(tmp_path) == []


def test_quiet_predict_on_a_full_disk_is_the_error_line_alone(bundle, volume, tmp_path, assert_one_line_error):
    """--quiet promises no log lines: the backend probe's warning that its cache could not be
    written came first, through Python's last-resort handler."""
    out, cache = tmp_path / "out.npy", tmp_path / "cache"
    proc = edgeseg_limited(0, "predict", bundle, volume, "--out", out, "--backend", "auto", "--quiet",
                           env={"EDGESEG_CACHE_DIR": str(cache)})
    assert_one_line_error(proc, f"File too large: {out}")
    assert not out.exists() and not (cache / "backend-probe.json").exists()


def test_a_dicom_write_on_a_full_disk_is_the_os_error_not_pydicom_traceback(tmp_path, assert_one_line_error):
    """pydicom raises the failed write again with its own traceback in the message; the line is
    what the OS said, as for any other file."""
    out = tmp_path / "series"
    # the header fits, the 8 KiB of pixels (64 x 64 x 2 bytes) do not
    proc = edgeseg_limited(5000, "data", "synth", "--out", out, "--cases", 1, "--size", 64, "--slices", 2,
                           "--format", "dicom", "--quiet")
    assert_one_line_error(proc, f"edgeseg: error: File too large: {out}")
    assert "With tag" not in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("limit, named", [(0, ": {repo}"), (5000, " -> {repo}/edgeseg/1/bundle/model.onnx")],
                         ids=["at-once", "copying-the-model"])
def test_triton_into_a_repository_on_a_full_disk_names_it_and_leaves_it_as_it_was(limit, named, bundle, tmp_path,
                                                                                  assert_one_line_error):
    """Writing into an existing repository (--force) stages the models beside it; on a full disk
    the error names the file in the repository (not in the staging folder, which is gone), no
    staging folder stays beside it, and the repository keeps its models."""
    repo = tmp_path / "repo"
    args = ("triton", bundle, repo, "--kind", "KIND_CPU", "--force")
    assert edgeseg_limited(10**9, *args).returncode == 0
    before = tree(repo)
    proc = edgeseg_limited(limit, *args)
    assert_one_line_error(proc, "File too large")
    assert proc.stderr.endswith(named.format(repo=repo) + "\n")
    assert os.listdir(tmp_path) == ["repo"] and tree(repo) == before


def test_predict_on_a_full_disk_keeps_the_earlier_label_map_overlay_and_table_together(bundle, volumes, tmp_path,
                                                                                      assert_one_line_error):
    """The label map used to land before the overlay was written: a disk that filled up on the
    overlay left this case's labels beside the last case's overlay and colour table."""
    outputs = ("--out", tmp_path / "labels.nii.gz", "--overlay", tmp_path / "overlay.png",
               "--label-table", tmp_path / "labels.ctbl")
    first = edgeseg_limited(10**9, "predict", bundle, volumes[0], *outputs, "--backend", "onnxruntime", "--quiet")
    assert first.returncode == 0, first.stderr
    before = tree(tmp_path)
    sizes = {name: (tmp_path / name).stat().st_size for name in before}
    # the label map (gzip) and the table fit, the overlay does not
    limit = max(sizes["labels.nii.gz"], sizes["labels.ctbl"]) + 1024
    assert limit < sizes["overlay.png"]
    proc = edgeseg_limited(limit, "predict", bundle, volumes[1], *outputs, "--backend", "onnxruntime", "--quiet")
    assert_one_line_error(proc, f"File too large: {tmp_path / 'overlay.png'}")
    assert tree(tmp_path) == before


def test_bench_on_a_full_disk_keeps_the_earlier_json_and_plot_together(bundle, tmp_path, assert_one_line_error):
    args = ("bench", bundle, "--backend", "onnxruntime", "--batch", "1", "--size", 64, "--runs", 2, "--warmup", 1,
            "--no-cold-start", "--json", tmp_path / "bench.json", "--png", tmp_path / "bench.png")
    assert edgeseg_limited(10**9, *args).returncode == 0
    before = tree(tmp_path)
    limit = (tmp_path / "bench.json").stat().st_size + 4096  # the JSON fits, the plot does not
    assert limit < (tmp_path / "bench.png").stat().st_size
    proc = edgeseg_limited(limit, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"edgeseg: error: File too large: {tmp_path / 'bench.png'}"
    assert tree(tmp_path) == before


# Sends the signal while the command's modules are imported (numpy is first imported there),
# the moment Ctrl-C lands when pressed right after starting a command.
SIGNAL_ON_IMPORT = """
import os, signal, sys

class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and "edgeseg.cli.main" in sys.modules:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{signal})
        return None

sys.meta_path.insert(0, SignalOnImport())
"""


@pytest.mark.parametrize("signum, status, line", [(signal.SIGINT, 130, "edgeseg: interrupted"),
                                                   (signal.SIGTERM, 143, "edgeseg: stopped (SIGTERM)")])
def test_a_signal_while_the_command_starts_is_one_line(signum, status, line, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SIGNAL_ON_IMPORT.format(signal=signum.name))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]))
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "models"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == status and proc.stderr == line + "\n", proc.stderr


# A Ctrl-C between two of the renames that put a command's outputs in place (tests/interrupting.py):
# the outputs are then the earlier run's or this run's, all of them, with nothing staged left.

@pytest.mark.parametrize("out", ["labels.nii.gz", "pngs"], ids=["nifti", "png-series"])
def test_ctrl_c_between_the_renames_of_predict_leaves_one_whole_set(out, bundle, volumes, tmp_path):
    """--out, --overlay and --label-table land together: a Ctrl-C after the first of them was
    renamed into place used to leave this case's colour table beside the last case's label map
    (and a PNG series folder landed on its own, before the rest)."""
    outputs = [tmp_path / "labels" / out, tmp_path / "overlay.png", tmp_path / "tables" / "labels.ctbl"]
    args = ["--out", outputs[0], "--overlay", outputs[1], "--label-table", outputs[2], "--backend", "onnxruntime",
            "--quiet", *(["--format", "png"] if out == "pngs" else [])]
    first = edgeseg_limited(10**9, "predict", bundle, volumes[0], *args)
    assert first.returncode == 0, first.stderr
    before = snapshot(outputs)
    proc = interrupted_between_renames(outputs, "predict", bundle, volumes[1], *args)
    stopped_once(proc)
    if assert_whole_set(outputs, before):  # the second volume's label map, whole
        if out == "pngs":
            assert len(list(outputs[0].iterdir())) == 6
        else:
            import nibabel

            assert nibabel.load(outputs[0]).shape[2] == 6
    assert {p.relative_to(tmp_path).parts[:2] for p in tmp_path.rglob("*") if p.is_file()} == \
        {p.relative_to(tmp_path).parts for p in outputs}  # nothing staged left beside them


def test_ctrl_c_between_the_renames_of_bench_leaves_one_whole_set(bundle, tmp_path):
    outputs = [tmp_path / "bench.json", tmp_path / "plots" / "bench.png"]
    args = ("bench", bundle, "--backend", "onnxruntime", "--batch", "1", "--size", 64, "--runs", 2, "--warmup", 1,
            "--no-cold-start", "--quiet", "--json", outputs[0], "--png", outputs[1])
    assert edgeseg_limited(10**9, *args).returncode == 0
    before = snapshot(outputs)
    proc = interrupted_between_renames(outputs, *args)
    stopped_once(proc)
    assert_whole_set(outputs, before)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(tmp_path) for p in outputs)


def test_ctrl_c_between_the_renames_of_evaluate_leaves_one_whole_set(bundle, tmp_path):
    """evaluate's files share a folder (atomic_files); SIGTERM was held back while they were
    renamed, Ctrl-C was not."""
    out = tmp_path / "eval"
    args = ("evaluate", bundle.parent / "run" / "best.pt", "--data", PHANTOM, "--split", "all", "--worst", 1,
            "--out", out, "--quiet")
    first = edgeseg_limited(10**9, *args)
    assert first.returncode == 0, first.stderr
    outputs = sorted(out.iterdir())
    assert len(outputs) >= 3, outputs
    before = snapshot(outputs)
    proc = interrupted_between_renames(outputs, *args)
    stopped_once(proc)
    assert_whole_set(outputs, before)
    assert sorted(out.iterdir()) == outputs
