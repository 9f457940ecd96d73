"""``edgeseg evaluate`` on a slice folder of label-map masks (PNG images + grey 0/1/2 PNG masks):
its per-class Dice and IoU, per case and per slice, equal a numpy oracle computed from the masks
as written and from predictions made apart from evaluate (the exported chest bundle, ONNX
Runtime FP32, on HU computed here from the PNG pixels)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.data.chest_phantom import synth_chest_phantom
from edgeseg.data.phantom import phantom_geometry
from edgeseg.data.volume import Volume, default_affine

WINDOW = (-1000.0, 200.0)  # the slices store this HU window as 0..255, as the chest bundle sees it
NAMES = ("ggo", "consolidation")
# Per case: (rows, columns) cropped from the 96 x 96 phantom, so the folder also holds non-square slices.
CROPS = {"p0": (slice(None), slice(None)), "p1": (slice(8, 88), slice(None)), "p2": (slice(None), slice(10, 82))}


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _pixels(hu: np.ndarray) -> np.ndarray:
    low, high = WINDOW
    return np.round(np.clip((hu - low) / (high - low), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slice_folder(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every other slice of three chest phantoms as images/pK_ZZ.png + masks/pK_ZZ.png; returns the
    folder and, per case, the (pixels, label map) stacks written."""
    root = tmp_path_factory.mktemp("chest-slices")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    written = {}
    for k, (case, (rows, cols)) in enumerate(CROPS.items()):
        volume = synth_chest_phantom(f"case_{k:03d}", 13, *phantom_geometry(96, 16))
        pixels, labels = _pixels(volume.hu[::2, rows, cols]), volume.label[::2, rows, cols]
        for z in range(len(pixels)):
            Image.fromarray(pixels[z]).save(root / "images" / f"{case}_{z:02d}.png")
            Image.fromarray(labels[z]).save(root / "masks" / f"{case}_{z:02d}.png")
        written[case] = (pixels, labels)
    assert {1, 2} <= set(np.unique(np.concatenate([lab.ravel() for _, lab in written.values()])).tolist())
    return root, written


def _dice(p: np.ndarray, t: np.ndarray) -> float:
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def _iou(p: np.ndarray, t: np.ndarray) -> float:
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


@pytest.fixture(scope="module")
def oracle(slice_folder, chest_bundle_run) -> dict[str, dict[str, dict[str, float]]]:
    """{case: {class: {"dice", "iou", "slice_dice"}}} from the written masks and the bundle's masks."""
    from edgeseg.runtime import Segmenter

    _, written = slice_folder
    low, high = WINDOW
    result = {}
    with Segmenter.load(chest_bundle_run / "bundle", backend="onnxruntime:fp32") as segmenter:
        for case, (pixels, truth) in written.items():
            hu = (np.float32(low) + pixels.astype(np.float32) / np.float32(255) * np.float32(high - low))
            pred = segmenter.predict_volume(Volume(hu=hu, spacing=(1.0, 1.0, 1.0),
                                                   affine=default_affine((1.0, 1.0, 1.0)), case_id=case))
            assert pred.shape == truth.shape
            result[case] = {name: {"dice": _dice(pred == c, truth == c), "iou": _iou(pred == c, truth == c),
                                   "slice_dice": float(np.mean([_dice(p, t) for p, t in zip(pred == c, truth == c)]))}
                            for c, name in enumerate(NAMES, start=1)}
    return result


def test_evaluate_reports_per_class_dice_of_a_label_map_slice_folder(slice_folder, oracle, chest_bundle_run,
                                                                      tmp_path):
    folder, written = slice_folder
    out = tmp_path / "eval"
    done = edgeseg("evaluate", chest_bundle_run / "train" / "best.pt", "--data", folder, "--split", "all",
                   "--intensity", f"window:{WINDOW[0]:g},{WINDOW[1]:g}", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["classes"] == ["background", *NAMES]
    assert [(c["case_id"], c["slices"]) for c in report["cases"]] == [(case, 8) for case in CROPS]
    for case in report["cases"]:
        for name in NAMES:
            expected = oracle[case["case_id"]][name]
            assert case["metrics"][name]["dice"] == pytest.approx(expected["dice"], abs=1e-9)
            assert case["metrics"][name]["iou"] == pytest.approx(expected["iou"], abs=1e-9)
            assert case["slice_dice_by_class"][name] == pytest.approx(expected["slice_dice"], abs=1e-9)
    for name in NAMES:
        mean = float(np.mean([oracle[case][name]["slice_dice"] for case in CROPS]))
        assert report["slice_dice_by_class"][name] == pytest.approx(mean, abs=1e-9)
        # Not a degenerate check: the model finds lesions, and misses some.
        dices = [oracle[case][name]["dice"] for case in CROPS]
        assert 0.3 < float(np.mean(dices)) < 1.0, (name, dices)
    assert "ggo dice" in (out / "eval.txt").read_text()
    # slice images carry no pixel size: the table says its distances are pixels
    assert "HD95 in pixels (slice images carry no pixel size)" in (out / "eval.txt").read_text()
    assert {case["hd95_unit"] for case in report["cases"]} == {"pixels"}


def test_a_mask_value_outside_the_classes_is_refused_naming_value_and_file(slice_folder, chest_bundle_run, tmp_path,
                                                                          assert_one_line_error):
    import shutil

    folder = shutil.copytree(slice_folder[0], tmp_path / "slices")
    mask = folder / "masks" / "p1_03.png"
    labels = np.asarray(Image.open(mask)).copy()
    labels[0, 0] = 3
    Image.fromarray(labels).save(mask)
    out = tmp_path / "eval"
    done = edgeseg("evaluate", chest_bundle_run / "train" / "best.pt", "--data", folder, "--split", "all",
                   "--intensity", f"window:{WINDOW[0]:g},{WINDOW[1]:g}", "--out", out, "--quiet")
    assert_one_line_error(done, "3")
    assert "p1_03" in done.stderr
    assert not out.exists()


def test_predict_reads_an_image_with_the_intensity_the_bundle_records(slice_folder, chest_bundle_run, tmp_path,
                                                                       assert_one_line_error):
    """A PNG slice is read as the bundle's training slices were (manifest ``source.intensity``),
    unless --intensity says otherwise; a bundle that records none keeps the hu-clipped default,
    which this lung-window model refuses: HU clipped to 0..255 hold none of the air it looks at."""
    import shutil

    from edgeseg.runtime import Segmenter

    folder, written = slice_folder
    png = folder / "images" / "p0_03.png"
    bundle = shutil.copytree(chest_bundle_run / "bundle", tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "intensity" not in manifest["source"]  # trained on phantom volumes: nothing to record
    window = f"window:{WINDOW[0]:g},{WINDOW[1]:g}"
    manifest["source"]["intensity"] = window
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    def predict(bundle_dir, name, *flags):
        out = tmp_path / f"{name}.npy"  # the label map itself
        done = edgeseg("predict", bundle_dir, png, "--out", out, "--backend", "onnxruntime:fp32", *flags)
        assert done.returncode == 0, done.stderr
        return np.load(out), done.stderr

    recorded, log = predict(bundle, "recorded")
    assert f"pixels as {window}, the intensity of the bundle's training slices" in log
    explicit, _ = predict(chest_bundle_run / "bundle", "explicit", "--intensity", window)
    assert np.array_equal(recorded, explicit)
    for name, flags in (("default", ()), ("clipped", ("--intensity", "hu-clipped:0,255"))):
        out = tmp_path / f"{name}.npy"
        done = edgeseg("predict", chest_bundle_run / "bundle", png, "--out", out, "--backend", "onnxruntime:fp32",
                       "--quiet", *flags)
        assert_one_line_error(done, "none below 0 HU")
        assert "window starts at -1000 HU" in done.stderr and not out.exists()
    # The oracle: the bundle on HU computed here from the PNG's pixels with the window.
    pixels = written["p0"][0][3].astype(np.float32)
    hu = np.float32(WINDOW[0]) + pixels / np.float32(255) * np.float32(WINDOW[1] - WINDOW[0])
    with Segmenter.load(chest_bundle_run / "bundle", backend="onnxruntime:fp32") as segmenter:
        expected = segmenter.predict_volume(Volume(hu=hu[None], spacing=(1.0, 1.0, 1.0),
                                                   affine=default_affine((1.0, 1.0, 1.0)), case_id="p0"))[0]
    assert expected.any()
    assert np.array_equal(recorded.reshape(expected.shape), expected)


@pytest.fixture(scope="module")
def slice_run_checkpoint(slice_folder, chest_bundle_run, tmp_path_factory) -> Path:
    """The chest model's checkpoint as a run on the slice folder records it: trained on that
    folder, read with ``--intensity window:-1000,200 --mask labels`` (as the infection recipe
    reads its slices)."""
    import torch

    payload = torch.load(chest_bundle_run / "train" / "best.pt", map_location="cpu", weights_only=True)
    payload["train_config"] = {**payload["train_config"], "data": str(slice_folder[0]),
                               "intensity": f"window:{WINDOW[0]:g},{WINDOW[1]:g}", "mask": "labels"}
    path = tmp_path_factory.mktemp("slice-run") / "best.pt"
    torch.save(payload, path)
    return path


def test_evaluate_reads_the_runs_own_slices_with_the_intensity_it_recorded(slice_folder, slice_run_checkpoint, oracle,
                                                                          tmp_path):
    """Without --intensity the run's slices are read as training read them (export, cv and predict
    already did): read as the default hu-clipped:0,255 instead, the window -1000..200 HU was refused,
    and a window inside 0..255 would have been scored on pixels of another meaning."""
    out = tmp_path / "eval"
    done = edgeseg("evaluate", slice_run_checkpoint, "--data", slice_folder[0], "--split", "all", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "eval.json").read_text())
    assert [c["case_id"] for c in report["cases"]] == list(CROPS)
    for case in report["cases"]:
        for name in NAMES:
            assert case["metrics"][name]["dice"] == pytest.approx(oracle[case["case_id"]][name]["dice"], abs=1e-9)


def test_a_slice_folder_run_evaluates_nifti_volumes(slice_run_checkpoint, chest_bundle_run, tmp_path):
    """The slice-folder options a run recorded (intensity, mask kind) do not apply to NIfTI volumes,
    which carry HU: evaluating such a run on them was refused ("apply to slice folders only")."""
    from edgeseg.data.nifti import read_nifti_dataset
    from edgeseg.runtime import Segmenter

    data, out = tmp_path / "chest", tmp_path / "eval"
    made = edgeseg("data", "synth", "--kind", "chest", "--out", data, "--cases", "2", "--size", "96",
                   "--slices", "16", "--seed", "3")
    assert made.returncode == 0, made.stderr
    done = edgeseg("evaluate", slice_run_checkpoint, "--data", data, "--split", "all", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    report = {c["case_id"]: c["metrics"] for c in json.loads((out / "eval.json").read_text())["cases"]}
    with Segmenter.load(chest_bundle_run / "bundle", backend="onnxruntime:fp32") as segmenter:
        volumes = read_nifti_dataset(data)
        assert sorted(report) == sorted(v.case_id for v in volumes)
        for volume in volumes:
            pred = segmenter.predict_volume(volume)
            for c, name in enumerate(NAMES, start=1):
                expected = _dice(pred == c, volume.label == c)
                assert report[volume.case_id][name]["dice"] == pytest.approx(expected, abs=1e-9)
