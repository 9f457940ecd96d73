"""`edgeseg inspect CHECKPOINT.pt`: what a checkpoint holds, read with weights only; anything
else given as a checkpoint is one line."""

import hashlib
import pathlib
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from edgeseg.train.loop import train
from edgeseg.train.recipes import load_recipe

from ..train.test_training import tiny

EDGESEG = [sys.executable, "-m", "edgeseg"]


def edgeseg(*args, **kw):
    return subprocess.run([*EDGESEG, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of two epochs with a recipe, the moving average and fp16 loss scaling."""
    out = tmp_path_factory.mktemp("inspect") / "run"
    cfg = tiny(out.parent, out=str(out), epochs=2, amp="fp16", ema_epochs=1.0, threads=1, workers=0,
               recipe=load_recipe("liver-ct").record())
    train(cfg, progress=False)
    return out


def test_inspect_prints_what_last_pt_holds(run):
    proc = edgeseg("inspect", run / "last.pt")
    assert proc.returncode == 0, proc.stderr
    payload = torch.load(run / "last.pt", weights_only=True)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line and not line.startswith(" ")}
    # parameters counted here from the weights: every tensor but batch norm's running statistics
    params = sum(t.numel() for name, t in payload["state_dict"].items()
                 if not name.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert f"({params} parameters" in lines["model"] and '"name": "unet"' in lines["model"]
    assert hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()[:12] in lines["checkpoint"]
    assert f"{(run / 'last.pt').stat().st_size} bytes" in lines["checkpoint"]
    assert '"window": [-200.0, 300.0]' in lines["spec"]
    assert lines["labels"] == "labels   0=background, 1=liver; source label values liver=1"
    assert lines["recipe"] == f"recipe   liver-ct version 1 (sha256 {payload['recipe']['sha256'][:12]})"
    best = payload["best"]
    assert lines["epoch"].startswith(f"epoch    2 of 2; best val Dice {best['val_dice']:.4f} at epoch {best['epoch']}; "
                                     "split train 3, val 1, test 1 cases")
    scaler = payload["grad_scaler"]
    assert lines["resume"] == (f"resume   optimiser state, EMA after {payload['ema_updates']} updates, fp16 loss scale "
                               f"{scaler['scale']:g} ({scaler['_growth_tracker']} clean steps), memory format "
                               f"{payload['memory_format']['chosen']}")
    provenance = payload["provenance"]
    assert provenance["data"]["sha256"][:12] in lines["trained"]
    session = provenance["sessions"][0]
    assert f"  session 1 from epoch 1: 1 thread(s), amp float16" in proc.stdout
    assert f"torch {session['libraries']['torch']}" in proc.stdout and session["machine"] in proc.stdout
    assert f"    $ {session['command']}" in proc.stdout


def test_inspect_says_best_pt_is_not_resumable_and_shows_its_post_processing(run):
    proc = edgeseg("inspect", run / "best.pt")
    assert proc.returncode == 0, proc.stderr
    assert "resume   no optimiser state" in proc.stdout and "\npost     {" in proc.stdout


def test_a_run_folder_points_to_its_checkpoints(run, assert_one_line_error):
    assert_one_line_error(edgeseg("inspect", run), f"is a training run, not a bundle; inspect its checkpoints: "
                                                    f"{run / 'best.pt'} or {run / 'last.pt'}")


class _Touch:
    """Unpickling it would create a file: a checkpoint carrying code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


@pytest.mark.parametrize("kind", ["code-in-zip", "code-in-pickle", "truncated", "other-torch-file", "onnx-like",
                                  "empty"])
def test_what_is_not_a_checkpoint_is_one_line_and_runs_no_code(run, tmp_path, kind, assert_one_line_error):
    path, marker = tmp_path / "model.pt", tmp_path / "code-ran"
    if kind == "code-in-zip":
        torch.save({"format": "edgeseg-checkpoint", "hook": _Touch(marker)}, path)
        expected = "it holds objects other than tensors and plain data"
    elif kind == "code-in-pickle":
        path.write_bytes(pickle.dumps({"hook": _Touch(marker)}, protocol=2))
        expected = "is not an edgeseg checkpoint"
    elif kind == "truncated":
        path.write_bytes((run / "last.pt").read_bytes()[:4000])
        expected = "truncated or corrupt torch archive"
    elif kind == "other-torch-file":
        torch.save({"weights": torch.zeros(3)}, path)
        expected = "is not an edgeseg checkpoint (no 'edgeseg-checkpoint' marker)"
    elif kind == "onnx-like":
        path.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(100))
        expected = "neither a torch zip archive nor a pickle"
    else:
        path.write_bytes(b"")
        expected = "the file is empty"
    assert_one_line_error(edgeseg("inspect", path), expected)
    assert not marker.exists()
    assert zipfile.is_zipfile(path) == (kind in ("code-in-zip", "other-torch-file"))


def test_records_of_an_odd_shape_are_shown_as_far_as_they_go(run, tmp_path):
    payload = torch.load(run / "last.pt", weights_only=True)
    payload.update(recipe=["liver-ct"], history=5, memory_format="fast", grad_scaler="x", epoch="two",
                   provenance={"seed": 0, "data": "somewhere", "sessions": ["a", 5, {"command": "edgeseg train"}]})
    torch.save(payload, tmp_path / "odd.pt")
    proc = edgeseg("inspect", tmp_path / "odd.pt")
    assert proc.returncode == 0, proc.stderr
    assert "recipe   none" in proc.stdout and "epoch    None of 2" in proc.stdout
    assert "resume   optimiser state, EMA after" in proc.stdout and "loss scale" not in proc.stdout
    assert "  session 1 from epoch None" in proc.stdout and "    $ edgeseg train" in proc.stdout


def test_a_checkpoint_needs_torch_a_bundle_does_not(run, tmp_path, python_without, assert_one_line_error):
    proc = python_without(["-m", "edgeseg", "inspect", str(run / "last.pt")], tmp_path)
    assert_one_line_error(proc, "edgeseg inspect CHECKPOINT needs the 'torch' package: pip install 'edgeseg[train]'")
