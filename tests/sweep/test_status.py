"""edgeseg sweep --status (reads the sweep folder only) and --point order, on the tiny phantom sweep."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()


def test_status_says_where_each_point_stands_and_writes_nothing(tmp_path, assert_one_line_error,
                                                                copy_mobile_point_sweep, sweep_here):
    """--status reads the sweep folder only: a finished point with its result, a point trained
    part-way (stopped, then running while another process holds its lock) with the epochs and
    Dice of its metrics.json, and a point not started; it creates no file."""
    import fcntl

    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = tmp_path / "out"
    # --status only reads the folder: it runs in this process (sweep_here), no torch import of its own
    def status(*extra):
        return sweep_here(tmp_path / "sweep.toml", out, "--status", *extra)

    assert_one_line_error(status(), f"{out} holds no sweep")
    copy_mobile_point_sweep(out)  # `--point mobile_unet-b4-d2-s64` finished
    listing = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = status()
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "points" / "mobile_unet-b4-d2-s64" / "result.json").read_text())
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["unet-b4-d2-s64", "not", "started", "epoch"] and "0/3" in lines[0]
    assert lines[1].split()[:4] == ["mobile_unet-b4-d2-s64", "finished", "epoch", "3/3"]
    assert f"Dice fp32 {result['dice_fp32']:.4f}" in lines[1] and f"{result['latency_ms_p50']:.2f} ms" in lines[1]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == listing  # nothing written

    # The unet point trained for 1 of its 3 epochs, as a killed sweep leaves it. Trained in a
    # child process: training with DataLoader workers inside a test worker that has already
    # loaded and released inference engines has crashed that worker (see measure_latency).
    folder = out / "points" / "unet-b4-d2-s64"
    script = ("import sys\n"
              "from pathlib import Path\n"
              "from edgeseg.sweep.config import load_sweep, train_config\n"
              "from edgeseg.train.loop import train\n"
              "sweep = load_sweep(sys.argv[1])\n"
              "cfg = train_config(sweep, sweep.points[0], Path(sys.argv[2]))\n"
              "cfg.epochs = 1\n"
              "train(cfg, progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "sweep.toml"), str(folder / "run")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [epoch] = json.loads((folder / "run" / "metrics.json").read_text())["history"]
    proc = status()
    first = proc.stdout.splitlines()[0]
    assert first.split()[:4] == ["unet-b4-d2-s64", "stopped", "epoch", "1/3"], first
    assert f"best val Dice {epoch['val_dice']:.4f}" in first and f"{epoch['seconds']:.0f} s/epoch lately" in first
    assert f"about {2 * epoch['seconds'] / 3600:.1f} h of training left" in first
    with open(folder / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this test process plays the sweep process running it
        proc = status()
    assert proc.stdout.splitlines()[0].split()[:2] == ["unet-b4-d2-s64", "running"]
    proc = status("--remeasure", "2")
    assert_one_line_error(proc, "--status, --regate, --rescore and --remeasure do not go together: give one")


def test_points_run_in_the_order_given_with_point(tmp_path, monkeypatch):
    """--point A --point B runs A first even where the grid lists B first (a long reference can
    lead a process's list); without --point the grid's order holds."""
    from edgeseg.sweep import run as sweep_run
    from edgeseg.sweep.config import load_sweep

    (tmp_path / "sweep.toml").write_text(SWEEP)
    sweep = load_sweep(tmp_path / "sweep.toml")
    ran = []

    def fake_point(sweep, point, out, progress):  # the scheduler is under test, not training
        ran.append(point.id)
        return {"id": point.id}

    monkeypatch.setattr(sweep_run, "run_point", fake_point)
    sweep_run.run_sweep(sweep, tmp_path / "given", only=["mobile_unet-b4-d2-s64", "unet-b4-d2-s64"])
    assert ran == ["mobile_unet-b4-d2-s64", "unet-b4-d2-s64"]
    ran.clear()
    sweep_run.run_sweep(sweep, tmp_path / "grid")
    assert ran == ["unet-b4-d2-s64", "mobile_unet-b4-d2-s64"]


def test_status_takes_the_epochs_from_a_named_recipe(tmp_path):
    """A sweep whose [recipe] leaves epochs to the named training recipe reports the recipe's."""
    from edgeseg.sweep.config import load_sweep
    from edgeseg.sweep.run import sweep_status

    recipe = tmp_path / "task.toml"
    recipe.write_text('name = "task"\nversion = 1\n[train]\nepochs = 40\n')
    (tmp_path / "sweep.toml").write_text(SWEEP.replace("epochs = 3\n", f'recipe = "{recipe}"\n'))
    sweep = load_sweep(tmp_path / "sweep.toml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"config": sweep.to_dict(), "points": []}))
    rows = sweep_status(sweep, out)
    assert [(r["id"], r["epochs"], r["state"]) for r in rows] == [("unet-b4-d2-s64", 40, "not started"),
                                                                  ("mobile_unet-b4-d2-s64", 40, "not started")]
    assert [r["id"] for r in sweep_status(sweep, out, only=["mobile_unet-b4-d2-s64"])] == ["mobile_unet-b4-d2-s64"]
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]
