"""Run comparison: differing hyper-parameters, eval columns, errors, and the compare command."""

from __future__ import annotations

import csv
import json

import pytest

from edgeseg.cli.compare import command
from edgeseg.errors import DataError
from edgeseg.evaluate.compare import compare_runs, differing_hyperparameters, load_run, plot_comparison
from tests.guarded_cli import GuardedCliRunner

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE_CONFIG = {"model": "unet", "base": 32, "depth": 4, "lr": 0.001, "size": [256, 256], "epochs": 3, "batch_size": 8}


def make_run(folder, best_dice, eval_summary=None, seconds=10.0, **config_changes):
    config = {**BASE_CONFIG, **config_changes}
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_dice": best_dice - 0.1 * (3 - e),
         "lr": config.get("lr", 0.001), "seconds": seconds}
        for e in (1, 2, 3)
    ]
    metrics = {"config": config, "history": history, "best": {"epoch": 3, "val_dice": best_dice}, "spec": {}}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if eval_summary is not None:
        (folder / "eval").mkdir()
        (folder / "eval" / "eval.json").write_text(json.dumps({"summary": eval_summary, "cases": {}}))
    return folder


def _liver(dice, hd95):
    return {"liver": {"dice": {"mean": dice, "std": 0.01}, "hd95": {"mean": hd95}, "hd95_undefined": 0}}


@pytest.fixture
def runs(tmp_path):
    return [
        make_run(tmp_path / "small", 0.90, eval_summary=_liver(0.91, 4.5), base=16, params=1_900_000),
        make_run(tmp_path / "large", 0.95, seconds=20.0, base=64, lr=0.0005, params=31_000_000),
    ]


def test_compare_keeps_only_differing_hyperparameters_and_always_the_results(runs):
    rows, columns = compare_runs(runs)
    assert columns == [
        "run", "base", "lr", "params", "best_epoch", "best_val_dice", "train_time_s",
        "eval_liver_dice", "eval_liver_hd95",
    ]
    assert rows[0] == {
        "run": "small", "base": 16, "lr": 0.001, "params": 1_900_000, "best_epoch": 3, "best_val_dice": 0.90,
        "train_time_s": 30.0, "eval_liver_dice": 0.91, "eval_liver_hd95": 4.5,
    }
    assert rows[1]["run"] == "large" and rows[1]["train_time_s"] == 60.0
    assert rows[1]["eval_liver_dice"] is None  # not evaluated


def test_lists_and_keys_missing_from_some_runs_count_as_differences(tmp_path):
    a = make_run(tmp_path / "a", 0.9, size=[512, 512])
    b = make_run(tmp_path / "b", 0.9, augment=True)
    assert differing_hyperparameters([a, b]) == ["size", "augment"]
    rows, _ = compare_runs([a, b])
    assert rows[0]["augment"] is None and rows[1]["size"] == [256, 256]


def test_single_run_shows_results_only_and_best_falls_back_to_history(tmp_path):
    folder = make_run(tmp_path / "only", 0.8)
    metrics = json.loads((folder / "metrics.json").read_text())
    del metrics["best"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rows, columns = compare_runs([folder])
    assert columns == ["run", "best_epoch", "best_val_dice", "train_time_s"]
    assert rows == [{"run": "only", "best_epoch": 3, "best_val_dice": pytest.approx(0.8), "train_time_s": 30.0}]


def test_runs_with_the_same_folder_name_get_distinct_names(tmp_path):
    a = make_run(tmp_path / "sweep1" / "run", 0.9)
    b = make_run(tmp_path / "sweep2" / "run", 0.9)
    rows, _ = compare_runs([a, b])
    assert [row["run"] for row in rows] == ["sweep1/run", "sweep2/run"]


def test_folder_without_metrics_is_not_a_run(tmp_path):
    with pytest.raises(DataError, match="not a training run \\(no metrics.json\\): .*empty"):
        load_run(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_run(tmp_path / "bad")
    with pytest.raises(DataError, match="no runs"):
        compare_runs([])


def test_plot_comparison_writes_a_png(runs, tmp_path):
    path = tmp_path / "plots" / "compare.png"
    plot_comparison(path, runs)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in path.parent.iterdir()) == ["compare.png"]


def test_plot_comparison_keeps_long_run_labels_inside_the_image(tmp_path):
    """The legend of long labels sat inside the curve panel, over the curves and the axis label,
    and ran off the figure's left edge."""
    import matplotlib.image
    import numpy as np

    runs = [make_run(tmp_path / f"run{k}", 0.9 - 0.1 * k, data="/data/hospital-a/ct/liver-2024/nifti" + "x" * 20 * k,
                     window=[-160.0, 240.0 + k], labels={"liver": [1, 2][: 2 - min(k, 1)]}, base=8 * (k + 1)) for k in range(3)]
    plot_comparison(tmp_path / "c.png", runs)
    image = matplotlib.image.imread(tmp_path / "c.png")[..., :3]
    ink = np.any(image < 0.9, axis=-1)
    assert not ink[:, :2].any() and not ink[:, -2:].any() and not ink[-2:].any()
    from edgeseg.evaluate.compare import _run_label, differing_hyperparameters, load_run

    loaded = [load_run(r) for r in runs]
    label = _run_label(loaded[0], differing_hyperparameters(loaded))
    assert "window=[-160, 240]" in label and "labels=liver=1+2" in label  # not [-160.0000, ...], {'liver': [1, 2]}


def test_cli_prints_the_table_and_writes_three_files(runs, tmp_path):
    out = tmp_path / "comparison"
    result = GuardedCliRunner().invoke(command, [str(runs[0]), str(runs[1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    header, rule, *lines = result.stdout.splitlines()
    assert header.split() == ["run", "base", "lr", "params", "best_epoch", "best_val_dice", "train_time_s",
                              "eval_liver_dice", "eval_liver_hd95"]
    assert lines[0].split()[:3] == ["small", "16", "0.0010"]
    assert lines[1].split()[-2:] == ["-", "-"]  # "large" was never evaluated

    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json", "compare.png"]
    with (out / "compare.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["run"] for row in table] == ["small", "large"] and table[1]["eval_liver_dice"] == ""
    document = json.loads((out / "compare.json").read_text())
    assert document["columns"][0] == "run" and document["rows"][1]["eval_liver_hd95"] is None
    assert (out / "compare.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_rejects_a_folder_that_is_not_a_run_and_documents_its_options(tmp_path, runs):
    result = GuardedCliRunner().invoke(command, [str(runs[0]), str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError) and "nothing" in str(result.exception)
    help_text = GuardedCliRunner().invoke(command, ["--help"]).output
    assert "Compare training runs" in help_text and "compare.csv" in help_text


def test_output_folder_and_threads_are_not_hyperparameters():
    from edgeseg.evaluate.compare import differing_hyperparameters

    runs = [
        {"name": "a", "config": {"out": "runs/a", "threads": 1, "lr": 0.001}, "history": [], "best": {}, "eval": None},
        {"name": "b", "config": {"out": "runs/b", "threads": 2, "lr": 0.002}, "history": [], "best": {}, "eval": None},
    ]
    assert differing_hyperparameters(runs) == ["lr"]


def test_cli_writes_its_three_files_as_one_set(runs, tmp_path, monkeypatch):
    """A compare that fails while writing (a full disk at the plot) leaves the earlier set whole,
    no temporary beside it, and no folder where there was none."""
    import edgeseg.cli.compare as compare_cli

    out = tmp_path / "comparison"
    assert GuardedCliRunner().invoke(command, [str(runs[0]), str(runs[1]), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["compare.csv", "compare.json", "compare.png"]

    def full_disk(path, loaded):
        path.write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compare_cli, "plot_comparison", full_disk)
    for args in ([str(runs[1]), str(runs[0])], [str(runs[1])]):  # other rows and columns than the set there
        result = GuardedCliRunner().invoke(command, [*args, "--out", str(out)])
        assert isinstance(result.exception, OSError)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fresh = tmp_path / "fresh"
    assert isinstance(GuardedCliRunner().invoke(command, [str(runs[0]), "--out", str(fresh)]).exception, OSError)
    assert not fresh.exists()


def test_the_same_run_given_twice_is_refused(runs, tmp_path, assert_one_line_error):
    import subprocess
    import sys

    (tmp_path / "link").symlink_to(runs[0])
    for twice, also in (([runs[0], runs[1], runs[0]], ""), ([runs[0], tmp_path / "link"], f" (as {runs[0]})")):
        proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "compare", *map(str, twice), "--out",
                               str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert_one_line_error(proc, f"the run folder {twice[-1]} is given twice{also}; name each run once")
        assert not (tmp_path / "out").exists()


def test_runs_of_different_classes_get_one_warning_naming_them_and_keep_the_table(tmp_path):
    liver = make_run(tmp_path / "liver", 0.9, _liver(0.9, 4.0), labels={"liver": [1]})
    covid = make_run(tmp_path / "covid", 0.6, labels={"ggo": [1], "consolidation": [2]})
    merged = make_run(tmp_path / "merged", 0.8, labels={"liver": [1, 2]})
    out = tmp_path / "comparison"
    result = GuardedCliRunner().invoke(command, [str(liver), str(covid), str(merged), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()[:1]
    assert line == ("edgeseg: warning: these runs segment different classes: liver=1 (liver); ggo=1, "
                    "consolidation=2 (covid); liver=1+2 (merged); their Dice and HD95 columns are not comparable")
    assert [row.split()[0] for row in result.stdout.splitlines()[2:]] == ["liver", "covid", "merged"]
    assert json.loads((out / "compare.json").read_text())["different_classes"].startswith("liver=1 (liver)")


def test_runs_of_the_same_classes_get_no_warning(tmp_path):
    a = make_run(tmp_path / "a", 0.9, labels={"liver": [1]})
    b = make_run(tmp_path / "b", 0.8, labels={"liver": [1]}, lr=0.01)
    old = make_run(tmp_path / "old", 0.7)  # records no classes: nothing to say about it
    result = GuardedCliRunner().invoke(command, [str(a), str(b), str(old)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
