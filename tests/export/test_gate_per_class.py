"""The export gate judges every class on its own slices and names the class that degraded."""

import numpy as np
import pytest

from edgeseg.data import open_dataset
from edgeseg.export.int8 import classes_present, load_calibration, stratify_slices
from edgeseg.export.verify import compare_logits, failures, load_verify_set, parity_table
from edgeseg.spec import PreprocessSpec

CHEST = "chest-phantom:cases=3,size=64,slices=16,seed=2"
SPEC = PreprocessSpec(window=(-1000.0, 200.0), size=(64, 64))
NAMES = ["background", "ggo", "consolidation"]
PAYLOAD = {"class_names": NAMES, "label_values": {"ggo": [1], "consolidation": [2]}}


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    labels = np.concatenate([v.label for v in open_dataset(CHEST)])
    assert {1, 2} <= set(np.unique(labels).tolist())
    return labels


def _confident_logits(labels: np.ndarray) -> np.ndarray:
    # Background leads by 1 everywhere, the true class by 4: damaging one class's channel
    # hands its pixels to background, never to another class.
    logits = np.zeros((len(labels), 3, *labels.shape[1:]), np.float32)
    logits[:, 0] = 1.0
    for c in (1, 2):
        logits[:, c][labels == c] = 5.0
    return logits


def _oracle_dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = sum(1 for x, y in zip(a.ravel(), b.ravel()) if x and y)
    return 2.0 * inter / (int(a.sum()) + int(b.sum()))


def test_damaging_one_class_fails_the_gate_naming_it_while_the_other_passes(truth):
    reference = _confident_logits(truth)
    damaged = reference.copy()
    rng = np.random.default_rng(0)
    # Consolidation logits lose 6 at a random 40% of pixels: those consolidation pixels become background.
    damaged[:, 2] -= 6.0 * (rng.random(truth.shape) < 0.4)
    row = compare_logits(reference, damaged, truth, "int8", 0.01, NAMES)
    assert not row["passed"] and row["worst_class"] == "consolidation"
    assert row["class_dice"]["ggo"] == 1.0
    expected = _oracle_dice(damaged.argmax(axis=1) == 2, truth == 2)
    assert row["class_dice"]["consolidation"] == pytest.approx(expected, abs=1e-12)
    assert row["dice_drop"] == pytest.approx(1.0 - expected, abs=1e-12) and row["dice_drop"] > 0.1
    [why] = failures({"results": [{**row, "key": "onnx-int8", "run_on": "onnxruntime-cpu", "precision": "int8"}]})
    assert why.startswith("onnx-int8 on onnxruntime-cpu: class consolidation dice drop")
    assert "ggo 0.0000" in why


def test_the_worst_class_is_held_against_the_limit_not_the_mean_of_classes(truth):
    reference = _confident_logits(truth)
    damaged = reference.copy()
    damaged[:, 2] -= 6.0  # every consolidation pixel lost
    row = compare_logits(reference, damaged, truth, "int8", 0.01, NAMES)
    assert row["class_dice"]["consolidation"] == 0.0 and row["dice_drop"] == 1.0
    # Averaged with GGO (the old rule), the loss of a whole class would read as a drop of one half.
    from edgeseg.metrics import mean_class_dice

    assert mean_class_dice(damaged.argmax(axis=1), truth, 3) == pytest.approx(0.5)


def test_untouched_logits_pass_and_the_table_names_the_worst_class(truth):
    reference = _confident_logits(truth)
    row = compare_logits(reference, reference + 0.001, truth, "int8", 0.01, NAMES)
    assert row["passed"] and row["class_dice"] == {"ggo": 1.0, "consolidation": 1.0}
    table = parity_table({"results": [{**row, "key": "onnx-int8", "run_on": "cpu", "precision": "int8"}]})
    assert "worst class" in table.splitlines()[0]


def test_a_class_absent_from_every_slice_is_reported_unjudged_unless_the_artifact_invents_it():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 2:4, 2:4] = 1
    logits = _confident_logits(labels)
    row = compare_logits(logits, logits, labels, "int8", 0.01, NAMES)
    assert row["class_dice"] == {"ggo": 1.0, "consolidation": None} and row["passed"]
    invented = logits.copy()
    invented[1, 2, 5, 5] = 9.0  # one consolidation pixel on a slice with no lesion at all
    row = compare_logits(logits, invented, labels, "int8", 0.01, NAMES)
    assert row["class_dice"]["consolidation"] == 0.0 and row["worst_class"] == "consolidation" and not row["passed"]


def test_one_class_mask_dice_is_the_pooled_dice_of_before(truth):
    from edgeseg.metrics import mean_class_dice

    liver = (truth > 0).astype(np.uint8)
    reference = _confident_logits(liver)[:, :2]
    rng = np.random.default_rng(3)
    noisy = reference + rng.normal(0, 1.5, reference.shape).astype(np.float32)
    row = compare_logits(reference, noisy, liver, "int8", 0.01, ["background", "liver"])
    assert row["mask_dice"] == mean_class_dice(noisy.argmax(axis=1), reference.argmax(axis=1), 2)
    assert row["worst_class"] == "liver"


def test_stratified_selection_draws_every_class_combination(truth):
    rng = np.random.default_rng(1)
    keys = [(classes_present(s), float(v)) for s, v in zip(truth, rng.uniform(0, 1, len(truth)))]
    groups = {k[0] for k in keys}
    chosen = stratify_slices(keys, 8)
    assert {keys[i][0] for i in chosen} == groups  # at most 4 groups: (), (1,), (2,), (1, 2)
    for cls in (1, 2):
        assert any(cls in keys[i][0] for i in chosen)


def test_gate_slices_and_calibration_slices_hold_each_class():
    verify = load_verify_set(PAYLOAD, SPEC, CHEST, 8)
    for cls in (1, 2):
        assert (verify.truth == cls).any(axis=(1, 2)).sum() >= 2
    assert (~verify.truth.any(axis=(1, 2))).sum() >= 2  # and slices without lesions
    calib = load_calibration(CHEST, SPEC, 8, PAYLOAD["label_values"])
    assert calib.summary["with_class"]["1"] >= 2 and calib.summary["with_class"]["2"] >= 2
    assert calib.summary["without_target"] >= 2


def _damage_consolidation(logits: np.ndarray) -> np.ndarray:
    """Consolidation's logit raised above background on a fixed pattern of background pixels:
    only channel 2 changes, and no pixel moves to or from GGO."""
    out = logits.copy()
    rows, cols = np.indices(logits.shape[2:])
    hit = (logits.argmax(axis=1) == 0) & ((rows + cols) % 5 == 0)
    out[:, 2] = np.where(hit, logits[:, 0] + 1.0, logits[:, 2])
    return out


def test_export_of_an_artifact_with_damaged_consolidation_logits_fails_naming_that_class(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.export.verify import ParityError
    from edgeseg.models import ModelConfig, build_model
    from edgeseg.models.checkpoint import save_checkpoint
    from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeRunner
    from edgeseg.runtime.runners.openvino import OpenVinoRunner

    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, base=4, depth=2)
    save_checkpoint(tmp_path / "m.pt", build_model(config).eval(), config,
                    PreprocessSpec(window=(-1000.0, 200.0), size=(32, 32)), NAMES, epoch=0)
    for runner in (OnnxRuntimeRunner, OpenVinoRunner):
        honest = runner._infer
        monkeypatch.setattr(runner, "_infer", lambda self, batch, honest=honest: _damage_consolidation(honest(self, batch)))
    shown = []
    with pytest.raises(ParityError, match=r"onnx-fp32 on onnxruntime-cpu: \d+ mask pixels differ from FP32 "
                                          r"\(ggo 0, consolidation [1-9]\d*\)"):
        export_bundle(tmp_path / "m.pt", tmp_path / "bundle", ExportSettings(formats=("onnx",), max_batch=4, verify_slices=16),
                      verify_data="chest-phantom:cases=2,size=32,slices=8", progress=False, echo=shown.append)
    assert not (tmp_path / "bundle").exists()
    assert "NO" in shown[0]


def _logits_of(mask: np.ndarray) -> np.ndarray:
    logits = np.zeros((len(mask), 3, *mask.shape[1:]), np.float32)
    for c in range(3):
        logits[:, c][mask == c] = 5.0
    return logits


def test_truth_metric_passes_an_artifact_as_accurate_as_fp32_that_the_agreement_metric_refuses(truth):
    # FP32 and the artifact each miss a different, equally large set of ggo pixels:
    # their masks disagree a lot, yet both are exactly as right against the labels.
    ggo = np.flatnonzero(truth.ravel() == 1)
    rng = np.random.default_rng(1)
    picked = rng.permutation(ggo)[: 2 * (len(ggo) // 10)]
    ref_mask, art_mask = truth.copy().ravel(), truth.copy().ravel()
    ref_mask[picked[: len(picked) // 2]] = 0
    art_mask[picked[len(picked) // 2:]] = 0
    ref_mask, art_mask = ref_mask.reshape(truth.shape), art_mask.reshape(truth.shape)
    reference, artifact = _logits_of(ref_mask), _logits_of(art_mask)

    agreement = compare_logits(reference, artifact, truth, "int8", 0.01, NAMES)
    assert not agreement["passed"] and agreement["worst_class"] == "ggo" and agreement["dice_drop"] > 0.05
    row = compare_logits(reference, artifact, truth, "int8", 0.01, NAMES, metric="truth")
    assert row["passed"] and row["gate_metric"] == "truth"
    assert row["class_drop"]["ggo"] == pytest.approx(0.0, abs=1e-12)
    assert row["class_dice"]["ggo"] == pytest.approx(agreement["class_dice"]["ggo"])  # agreement is still reported


def test_truth_metric_drop_is_the_fall_of_dice_against_the_labels_and_names_the_class(truth):
    reference = _confident_logits(truth)
    damaged = reference.copy()
    rng = np.random.default_rng(0)
    damaged[:, 2] -= 6.0 * (rng.random(truth.shape) < 0.3)
    row = compare_logits(reference, damaged, truth, "int8", 0.01, NAMES, metric="truth")
    expected = _oracle_dice(reference.argmax(1) == 2, truth == 2) - _oracle_dice(damaged.argmax(1) == 2, truth == 2)
    assert not row["passed"] and row["worst_class"] == "consolidation"
    assert row["dice_drop"] == pytest.approx(expected, abs=1e-12) and expected > 0.1
    assert row["class_drop"]["ggo"] == pytest.approx(0.0, abs=1e-12)
    [why] = failures({"results": [{**row, "key": "onnx-int8", "run_on": "onnxruntime-cpu", "precision": "int8"}]})
    assert why.startswith("onnx-int8 on onnxruntime-cpu: class consolidation Dice drop against truth")


def test_truth_metric_without_labels_is_refused(truth):
    from edgeseg.errors import DataError

    reference = _confident_logits(truth)
    with pytest.raises(DataError, match="truth gate metric needs labelled"):
        compare_logits(reference, reference, None, "int8", 0.01, NAMES, metric="truth")


def test_a_drop_equal_to_the_limit_passes_and_one_pixel_more_fails():
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, 1:6, 1:5] = 1  # 20 ggo pixels
    reference = _confident_logits(labels)
    damaged = reference.copy()
    damaged[0, 1, 1, 1] = 0.0  # one ggo pixel becomes background: Dice 2 * 19 / 39
    limit = 1.0 - 2 * 19 / 39
    assert compare_logits(reference, damaged, labels, "int8", limit, NAMES)["passed"]
    damaged[0, 1, 1, 2] = 0.0  # a second one: Dice 2 * 18 / 38, a drop beyond the limit
    row = compare_logits(reference, damaged, labels, "int8", limit, NAMES)
    assert not row["passed"] and row["dice_drop"] == pytest.approx(1.0 - 2 * 18 / 38, abs=1e-12)


def test_non_finite_logits_fail_however_few_pixels_they_touch(truth):
    reference = _confident_logits(truth)
    broken = reference.copy()
    broken[0, 0, 0, 0] = np.nan  # one background logit: the mask hardly changes
    row = compare_logits(reference, broken, truth, "int8", 0.5, NAMES)
    assert not row["finite"] and not row["passed"] and row["max_abs"] == float("inf")
    [why] = failures({"results": [{**row, "key": "onnx-int8", "run_on": "onnxruntime-cpu", "precision": "int8"}]})
    assert why == "onnx-int8 on onnxruntime-cpu: non-finite logits (overflow)"


def test_mask_dice_is_the_worst_class_agreement(truth):
    reference = _confident_logits(truth)
    damaged = reference.copy()
    damaged[:, 2] -= 6.0 * (np.random.default_rng(1).random(truth.shape) < 0.3)  # consolidation only
    row = compare_logits(reference, damaged, truth, "int8", 0.01, NAMES)
    ggo = _oracle_dice(damaged.argmax(axis=1) == 1, reference.argmax(axis=1) == 1)
    consolidation = _oracle_dice(damaged.argmax(axis=1) == 2, reference.argmax(axis=1) == 2)
    assert ggo == 1.0 and consolidation < 0.9
    assert row["mask_dice"] == pytest.approx(min(ggo, consolidation), abs=1e-12)
