"""What a run records to be redone: its data by content, and each session's command, software and machine."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from edgeseg.data import open_dataset
from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.report.provenance import source_commit
from edgeseg.runtime.machine import machine_signature
from edgeseg.train.loop import train

from .test_training import tiny

EDGESEG = [sys.executable, "-m", "edgeseg"]


def case_hash(volume) -> str:
    """The documented content hash, computed here from the arrays: dtype, shape and little-endian
    C-order bytes of the HU and then the label array, then the spacing as a list of floats."""
    digest = hashlib.sha256()
    for array, dtype in ((volume.hu, "<f4"), (volume.label, "|u1")):
        assert array.dtype.str == dtype
        digest.update(f"{dtype}{list(array.shape)};".encode() + np.ascontiguousarray(array).tobytes())
    digest.update(repr([float(v) for v in volume.spacing]).encode())
    return digest.hexdigest()


def hash_of_cases(hashes: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{c}\t{h}\n" for c, h in sorted(hashes.items())).encode()).hexdigest()


def test_checkpoint_and_metrics_record_the_data_by_content_and_each_session(tmp_path):
    cfg = tiny(tmp_path, epochs=1, threads=1)
    train(cfg, progress=False)
    train(tiny(tmp_path, epochs=2, threads=1), resume=True, progress=False)
    record = read_checkpoint(Path(cfg.out) / "last.pt")["provenance"]
    assert record == json.loads((Path(cfg.out) / "metrics.json").read_text())["provenance"]
    assert read_checkpoint(Path(cfg.out) / "best.pt")["provenance"]["data"] == record["data"]
    expected = {vol.case_id: case_hash(vol) for vol in open_dataset(cfg.data, label_values=[1])}
    data = record["data"]
    assert record["seed"] == cfg.seed and data["source"] == cfg.data
    assert data["case_sha256"] == expected
    assert data["sha256"] == hash_of_cases(expected)
    split = read_checkpoint(Path(cfg.out) / "last.pt")["split"]
    assert data["split_sha256"] == {part: hash_of_cases({c: expected[c] for c in ids}) for part, ids in split.items()}
    first, second = record["sessions"]
    assert (first["from_epoch"], second["from_epoch"]) == (1, 2)
    for session in (first, second):
        assert session["libraries"]["torch"] == torch.__version__
        assert session["libraries"]["numpy"] == np.__version__
        assert session["threads"] == 1 and session["amp"] == "off" and session["processes"] == 1
        assert session["machine"] == machine_signature()
        assert session["command"] and session["python"] == ".".join(map(str, sys.version_info[:3]))


def test_resume_refuses_data_whose_cases_changed_content(tmp_path, assert_one_line_error):
    data, run = tmp_path / "data", tmp_path / "run"
    subprocess.run([*EDGESEG, "data", "synth", "--out", str(data), "--cases", "4", "--size", "32", "--slices", "6",
                    "--quiet"], check=True, capture_output=True)
    common = ["--data", str(data), "--out", str(run), "--size", "32", "--base", "4", "--depth", "2",
              "--window", "-200,300", "--threads", "1", "--workers", "0", "--quiet", "--amp", "off",
              "--memory-format", "channels-last"]
    subprocess.run([*EDGESEG, "train", *common, "--epochs", "2"], check=True, capture_output=True)
    # one voxel of one case's labels corrected: same files, same case ids, same split
    path = sorted((data / "labelsTr").glob("*.nii.gz"))[0]
    image = nib.load(path)
    labels = np.asarray(image.dataobj).copy()
    labels.flat[0] = 1 - labels.flat[0] if labels.flat[0] <= 1 else 0
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), path)
    os.utime(path, (1, 1))  # the slice store sees a changed file (mtime), as it would after an edit
    proc = subprocess.run([*EDGESEG, "train", *common, "--epochs", "3", "--resume"], capture_output=True, text=True)
    assert_one_line_error(proc, f"1 case(s) of {data} hold other images or labels than the run was trained on "
                                f"({path.name.removesuffix('.nii.gz')})")
    assert read_checkpoint(run / "last.pt")["epoch"] == 2


def test_git_commit_is_that_of_the_package_checkout_only(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD").strip()
    assert source_commit(tmp_path) == {"git_commit": head, "git_dirty": False}
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == {"git_commit": head, "git_dirty": True}
    # a folder inside some repository is not that repository's checkout (a venv inside a project)
    (tmp_path / "pkg" / ".git").write_text("gitdir: nowhere\n")
    assert source_commit(tmp_path / "pkg") == {}
    assert source_commit(tmp_path / "missing") == {}
