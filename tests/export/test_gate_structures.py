"""The gate compares deployed masks (after the bundle's component filters) and refuses an
artifact that erases or invents a whole structure on a held-out slice, which a pooled Dice hides."""

import itertools

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.export.profiles import ExportSettings
from edgeseg.export.verify import compare_logits, failures, structure_changes
from edgeseg.kernels.components import ComponentRule

NAMES = ["background", "liver"]


def _rectangles(rng, shape, count, classes=(1, 2)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for i in range(shape[0]):
        for c in classes:
            for _ in range(rng.integers(0, count + 1)):
                h, w = rng.integers(1, 10, size=2)
                y, x = rng.integers(0, shape[1] - h), rng.integers(0, shape[2] - w)
                labels[i, y:y + h, x:x + w] = c
    return labels


def _damaged(rng, ref: np.ndarray) -> np.ndarray:
    """Per slice and class: kept, eroded, erased, moved to the far corner, or a new rectangle added."""
    out = ref.copy()
    for i, c in itertools.product(range(len(ref)), (1, 2)):
        where = ref[i] == c
        action = rng.integers(0, 5)
        if action == 4:
            y, x = rng.integers(0, ref.shape[1] - 8, size=2)
            block = out[i, y:y + 8, x:x + 8]
            block[block == 0] = c
        elif action == 1:  # erode: drop the first row of the class
            rows = np.flatnonzero(where.any(axis=1))
            if rows.size:
                out[i, rows[0]][where[rows[0]]] = 0
        elif action == 2:
            out[i][where] = 0
        elif action == 3:
            out[i][where] = 0
            out[i] = np.where(np.roll(where, (ref.shape[1] // 2, ref.shape[2] // 2), axis=(0, 1)) & (out[i] == 0), c, out[i])
    return out


def _oracle(mask, ref, truth, min_px, metric) -> set:
    """Pixel sets, one slice and class at a time."""
    found = set()
    for i, c in itertools.product(range(len(ref)), (1, 2)):
        r = {(y, x) for y, x in zip(*np.nonzero(ref[i] == c))}
        a = {(y, x) for y, x in zip(*np.nonzero(mask[i] == c))}
        t = {(y, x) for y, x in zip(*np.nonzero(truth[i] == c))}
        if min_px <= 0 or r & a:
            continue
        big_r, big_a = len(r) >= min_px, len(a) >= min_px
        if big_r and big_a:
            found.add((i, c, "moved", len(r), len(a)))
        elif big_r and (metric == "agreement" or r & t):
            found.add((i, c, "erased", len(r), len(a)))
        elif big_a and (metric == "agreement" or not a & t):
            found.add((i, c, "invented", len(r), len(a)))
    return found


def test_structure_changes_equal_a_pixel_set_oracle():
    names, kinds = ["bg", "a", "b"], set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        ref = _rectangles(rng, (10, 40, 40), 2)
        mask, truth = _damaged(rng, ref), _damaged(rng, ref)
        for min_px, metric in itertools.product((0, 1, 16, 40), ("agreement", "truth")):
            got = structure_changes(mask, ref, truth, 3, min_px, metric, names, [f"case{i // 4}" for i in range(10)])
            expected = _oracle(mask, ref, truth, min_px, metric)
            assert {(f["slice"], names.index(f["class"]), f["kind"], f["fp32_px"], f["artifact_px"]) for f in got} == expected
            assert all(f["case"] == f"case{f['slice'] // 4}" for f in got)
            kinds |= {(f["kind"], metric) for f in got}
    assert kinds == {(k, m) for k in ("erased", "invented", "moved") for m in ("agreement", "truth")}  # each exercised


def _logits(labels: np.ndarray) -> np.ndarray:
    logits = np.zeros((len(labels), 2, *labels.shape[1:]), np.float32)
    logits[:, 1] = np.where(labels == 1, 3.0, -3.0)
    return logits


def _liver_slices() -> tuple[np.ndarray, np.ndarray]:
    """Three slices with a 40x40 liver and a fourth with a 67-pixel one, which the artifact
    shrinks to 60 pixels (a row of 7 lost): the run that showed the problem on real data."""
    ref = np.zeros((4, 64, 64), np.uint8)
    ref[:3, 10:50, 10:50] = 1
    ref[3, 20:29, 20:27] = 1          # 63 pixels ...
    ref[3, 29, 20:24] = 1             # ... + 4 = 67
    art = ref.copy()
    art[3, 20, 20:27] = 0             # 60 left, all inside FP32's
    assert (ref[3] == 1).sum() == 67 and (art[3] == 1).sum() == 60
    return ref, art


def test_a_structure_the_component_filter_drops_only_for_the_artifact_fails_the_gate():
    ref, art = _liver_slices()
    cases = ["10019", "10019", "10022", "10070"]
    rules = {1: ComponentRule(min_size=64)}
    raw = compare_logits(_logits(ref), _logits(art), None, "int8", 0.01, NAMES, slice_cases=cases)
    assert raw["passed"] and raw["structure_changes"] == []
    assert raw["class_dice"]["liver"] == pytest.approx(2 * (4800 + 60) / (4800 + 67 + 4800 + 60))
    row = compare_logits(_logits(ref), _logits(art), None, "int8", 0.01, NAMES, rules=rules, slice_cases=cases)
    # Pooled over the slices the drop stays inside the limit; slice 3 alone refuses the artifact.
    assert row["class_dice"]["liver"] == pytest.approx(2 * 4800 / (4800 + 67 + 4800))
    assert row["dice_drop"] < 0.01 and not row["passed"]
    assert row["structure_changes"] == [{"slice": 3, "case": "10070", "case_slice": None, "class": "liver",
                                       "kind": "erased", "fp32_px": 67, "artifact_px": 0, "fails": True}]
    [why] = failures({"results": [{**row, "key": "onnx-int8", "run_on": "openvino-cpu", "precision": "int8"}]})
    assert why == "onnx-int8 on openvino-cpu: erased liver on slice 3 (case 10070, FP32 67 px, artifact 0 px)"
    off = compare_logits(_logits(ref), _logits(art), None, "int8", 0.01, NAMES, rules=rules, structure_px=0)
    assert off["passed"] and off["structure_px"] == 0


def test_an_invented_structure_fails_and_one_below_the_size_passes():
    ref, _ = _liver_slices()
    ref[3] = 0
    art = ref.copy()
    art[3, 5:9, 5:9] = 1  # 16 pixels where FP32 has nothing
    row = compare_logits(_logits(ref), _logits(art), None, "fp16", 0.002, NAMES, structure_px=16)
    assert [(f["kind"], f["fp32_px"], f["artifact_px"]) for f in row["structure_changes"]] == [("invented", 0, 16)]
    assert row["dice_drop"] < 0.002 and not row["passed"]
    assert compare_logits(_logits(ref), _logits(art), None, "fp16", 0.002, NAMES, structure_px=17)["passed"]


def test_keep_largest_choosing_the_other_of_two_near_equal_components_is_reported_not_refused():
    from edgeseg.export.verify import parity_table

    ref = np.zeros((3, 64, 64), np.uint8)
    ref[:2, 10:50, 10:50] = 1
    ref[2, 5:11, 5:10] = 1    # 30 pixels ...
    ref[2, 40:47, 40:44] = 1  # ... and 28 pixels: FP32 keeps the first
    art = ref.copy()
    art[2, 5, 5:8] = 0        # 27 left: the artifact keeps the second
    rules = {1: ComponentRule(keep_largest=True)}
    row = compare_logits(_logits(ref), _logits(art), None, "int8", 0.01, NAMES, rules=rules)
    assert [(f["kind"], f["fp32_px"], f["artifact_px"]) for f in row["structure_changes"]] == [("moved", 30, 28)]
    assert row["passed"]
    text = parity_table({"results": [{**row, "key": "onnx-int8", "run_on": "openvino-cpu", "precision": "int8"}]})
    assert "structures changed by onnx-int8 on openvino-cpu: moved liver on slice 2 (FP32 30 px, artifact 28 px)" in text
    # Without keep-largest the same masks mean FP32's structure gone and another one in its
    # place: that fails, as does anything the filters leave disjoint.
    ref_only, art_only = ref.copy(), ref.copy()
    ref_only[2, 40:47, 40:44] = 0                 # FP32: the first component (30 px) ...
    art_only[2, 5:11, 5:10] = 0                   # ... the artifact: the second (28 px)
    ref_only, art_only = _logits(ref_only), _logits(art_only)
    row = compare_logits(ref_only, art_only, None, "int8", 0.01, NAMES, rules={1: ComponentRule(min_size=16)})
    assert [(f["kind"], f["fails"]) for f in row["structure_changes"]] == [("moved", True)] and not row["passed"]
    # A class with 3-D filters is filtered by volume in deployment, which separate slices cannot
    # show: its changes are reported and never fail.
    row = compare_logits(ref_only, art_only, None, "int8", 0.01, NAMES, rules={1: ComponentRule(min_size=16)},
                         volume_filtered={1})
    assert [(f["kind"], f["fails"]) for f in row["structure_changes"]] == [("moved", False)]


def test_with_the_truth_metric_only_a_loss_of_accuracy_counts():
    ref, _ = _liver_slices()
    art = ref.copy()
    art[3] = 0  # the artifact erases slice 3's structure
    truth = ref.copy()
    false_positive = compare_logits(_logits(ref), _logits(art), np.where(np.arange(4)[:, None, None] == 3, 0, truth),
                                    "int8", 0.01, NAMES, "truth")
    assert false_positive["structure_changes"] == [] and false_positive["passed"]  # FP32 was wrong there
    real = compare_logits(_logits(ref), _logits(art), truth, "int8", 0.01, NAMES, "truth")
    assert [f["kind"] for f in real["structure_changes"]] == ["erased"] and not real["passed"]


def test_fp32_rows_are_judged_by_identity_of_the_network_masks():
    ref, art = _liver_slices()
    rules = {1: ComponentRule(min_size=64)}
    row = compare_logits(_logits(ref), _logits(art), None, "fp32", 0.0, NAMES, rules=rules)
    assert not row["passed"] and row["changed_pixels"] == 67  # deployed: the filter drops all 67
    [why] = failures({"results": [{**row, "key": "onnx-fp32", "run_on": "onnxruntime-cpu", "precision": "fp32"}]})
    assert why == "onnx-fp32 on onnxruntime-cpu: 7 mask pixels differ from FP32"  # decided pixels of the network
    # One pixel that float rounding decides tips the filter over the whole 64-pixel component:
    # the FP32 artifact is as right as the model, and passes.
    ref = np.zeros((1, 64, 64), np.uint8)
    ref[0, 10:18, 10:18] = 1                      # 64 pixels: kept
    reference = _logits(ref)
    reference[0, 1, 10, 10] = 1e-5                # its corner barely leads background (0 < 1e-5 < margin)
    reference[0, 0, 10, 10] = 0.0
    artifact = reference.copy()
    artifact[0, 1, 10, 10] = -1e-5                # the artifact rounds the other way: 63 pixels, removed
    row = compare_logits(reference, artifact, None, "fp32", 0.0, NAMES, rules=rules)
    assert row["changed_pixels"] == 64 and row["changed_decided_pixels"] == 0 and row["passed"]


@pytest.mark.parametrize("value", [-1, True, 2.5, "16"])
def test_structure_px_must_be_a_non_negative_integer(value):
    with pytest.raises(DataError, match="structure-px must be an integer >= 0"):
        ExportSettings(structure_px=value)


def _openvino_erases_every_structure(monkeypatch):
    """OpenVINO's real logits with the foreground channel pushed far below background."""
    from edgeseg.runtime.runners.openvino import OpenVinoRunner

    honest = OpenVinoRunner._infer

    def erasing(self, batch):
        logits = np.array(honest(self, batch), copy=True)
        logits[:, 1:] = logits[:, :1] - 100.0
        return logits

    monkeypatch.setattr(OpenVinoRunner, "_infer", erasing)


def _with_postprocess(checkpoint, path, postprocess):
    import torch

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["postprocess"] = postprocess
    torch.save(payload, path)
    return path


def test_the_export_gate_refuses_a_runner_that_erases_structures_and_filters_as_deployed(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.runtime.manifest import read_manifest
    from tests.export.conftest import CALIB_DATA

    _openvino_erases_every_structure(monkeypatch)
    # A limit of 1 leaves the slice-by-slice check as the only thing that can refuse INT8.
    settings = ExportSettings(formats=("onnx",), int8=True, calib_slices=16, max_batch=4).override(
        max_dice_drop={"int8": 1.0})
    args = {"calib": CALIB_DATA, "cache_dir": tmp_path / "cache", "progress": False, "echo": lambda text: None}
    result = export_bundle(checkpoint, tmp_path / "b", settings, **args)
    excluded = {e.file: e.excluded for e in read_manifest(tmp_path / "b").artifacts}
    why = excluded["model.int8.onnx"]["openvino"]
    assert why.startswith("erased ") and "(case " in why and ", artifact 0 px)" in why
    rows = {(r["key"], r["run_on"]): r for r in result["parity"]["results"]}
    assert rows["onnx-int8", "onnxruntime-cpu"]["passed"] and rows["onnx-int8", "onnxruntime-cpu"]["structure_changes"] == []
    lost = rows["onnx-int8", "openvino-cpu"]["structure_changes"]
    assert lost and {f["kind"] for f in lost} == {"erased"} and all(f["fp32_px"] >= 16 for f in lost)
    assert result["parity"]["structure_px"] == 16
    # A component filter that removes everything of the class leaves nothing to erase, in the
    # FP32 masks as in the artifact's: INT8 is judged on the masks the bundle delivers. FP32
    # identity is still judged on the network's masks, which OpenVINO's erasure changes.
    filtered = _with_postprocess(checkpoint, tmp_path / "filtered.pt",
                                 {"resize": "logits", "classes": {"1": {"min_pixels": 1 << 20}}})
    result = export_bundle(filtered, tmp_path / "f", settings, **args)
    excluded = {e.file: e.excluded for e in read_manifest(tmp_path / "f").artifacts}
    assert excluded["model.int8.onnx"] == {} and set(excluded["model.onnx"]) == {"openvino"}
    assert "mask pixels differ from FP32" in excluded["model.onnx"]["openvino"]
    assert result["parity"]["postprocess"]["classes"]["1"]["min_pixels"] == 1 << 20
    assert all(r["structure_changes"] == [] and r["changed_pixels"] == 0 for r in result["parity"]["results"])


def test_gate_labels_name_the_version_and_structure_size():
    from edgeseg.export.verify import gate_label

    assert gate_label(None, None) == gate_label(None, 16) == "v1"  # parity.json from before the gate had versions
    assert gate_label(2, 0) == "v2 (0 px)"


def test_each_held_out_slice_is_named_by_its_case_and_its_number_there(eager):
    from edgeseg.data import open_dataset
    from edgeseg.data.open import recorded_slice_options
    from edgeseg.data.slice_set import preprocess_stack
    from edgeseg.export.verify import load_verify_set
    from edgeseg.models.checkpoint import checkpoint_spec

    _, payload = eager
    spec = checkpoint_spec(payload)
    held_out = load_verify_set(payload, spec, None, 12)
    config = payload["train_config"]
    volumes = {v.case_id: v for v in open_dataset(config["data"], intensity=config.get("intensity"),
                                                   **recorded_slice_options(config))}
    assert len(set(held_out.case_slices)) > 1  # several slices, so a wrong number would show
    for image, case, number in zip(held_out.images, held_out.slice_cases, held_out.case_slices):
        np.testing.assert_array_equal(image, preprocess_stack(volumes[case].hu[number:number + 1], spec)[0])


def test_the_float16_check_on_a_subset_names_slices_of_the_whole_held_out_set(checkpoint, tmp_path, monkeypatch):
    """The real-float16 check runs on a subset of the held-out slices; a structure it erases is
    reported with the slice's number in the whole set, the one the other rows use."""
    import torch

    import edgeseg.export.fp16 as fp16
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.verify import ParityError, load_verify_set
    from edgeseg.models.checkpoint import checkpoint_spec, load_model

    erased = []

    def erasing_half(model, images, batch_size):
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(images))).numpy()
        area = (logits.argmax(axis=1) == 1).sum(axis=(1, 2))
        k = int(area.argmax())  # the subset's slice with the most foreground loses all of it
        logits[k, 1] = logits[k, 0] - 100.0
        erased.append((k, images[k].copy()))
        return logits

    monkeypatch.setattr(fp16, "half_precision_logits", erasing_half)
    settings = ExportSettings(formats=("onnx",), fp16=True, fp16_check_slices=4, verify_slices=12)
    with pytest.raises(ParityError) as failed:
        export_bundle(checkpoint, tmp_path / "b", settings, progress=False, echo=lambda text: None)
    [row] = [r for r in failed.value.report["results"] if r["run_on"] == fp16.HALF_EMULATION]
    assert row["slices"] == 4
    [change] = row["structure_changes"]
    _, payload = load_model(checkpoint)
    held_out = load_verify_set(payload, checkpoint_spec(payload), None, 12)
    [(position, image)] = erased
    [index] = [i for i, held in enumerate(held_out.images) if np.array_equal(held, image)]
    assert index != position  # numbered in the subset, the slice would be another one
    assert change["kind"] == "erased" and change["slice"] == index
    assert change["case"] == held_out.slice_cases[index] and change["case_slice"] == held_out.case_slices[index]
