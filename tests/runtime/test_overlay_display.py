"""Overlay PNGs of `edgeseg predict`: the CT in the task's display window, each class in the
colour the evaluation figures give it, and the slice as a radiologist views it (the patient's
right on the image's left, anterior at the top), whatever the source's own orientation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from edgeseg.cli.main import cli
from edgeseg.data.phantom import PHANTOM_LABELS, write_phantom_dataset
from edgeseg.runtime.overlay import LUNG_WINDOW, SOFT_TISSUE_WINDOW, class_rgb, display_window, overlay_rgb
from edgeseg.runtime.readers import read_input
from edgeseg.runtime.writers import write_overlay
from tests.guarded_cli import GuardedCliRunner

Image = pytest.importorskip("PIL.Image")


def _grey(hu: np.ndarray, window) -> np.ndarray:
    low, high = window
    return np.round(np.clip((hu - low) / (high - low), 0, 1) * 255).astype(np.int16)


def test_the_display_window_follows_the_model_window():
    assert display_window((-1000, 200)) == LUNG_WINDOW == (-1350.0, 150.0)  # level -600, width 1500
    assert display_window((-1250, 250)) == LUNG_WINDOW
    assert display_window((0, 255)) == display_window((-160, 240)) == SOFT_TISSUE_WINDOW == (-160.0, 240.0)
    assert display_window(None) == SOFT_TISSUE_WINDOW


def test_each_class_is_outlined_in_its_colour():
    """Class 1 was red here and cyan in worst_cases.png: one class, two colours."""
    labels = np.zeros((40, 40), np.uint8)
    labels[5:15, 5:15] = 1
    labels[20:35, 22:38] = 2
    rgb = overlay_rgb(np.zeros((40, 40), np.float32), labels)
    for cls in (1, 2):
        mask = labels == cls
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)  # the 4-neighbour outline, independently
        assert (rgb[edge] == class_rgb(cls)).all() and not (rgb[~edge] == class_rgb(cls)).all(axis=-1).any()


def test_predict_overlay_of_a_chest_bundle_shows_the_ct_in_the_lung_window(chest_bundle_run, tmp_path):
    """It was drawn in the abdominal window: lungs, ground-glass and the air around them one black."""
    write_phantom_dataset(tmp_path / "phantom", cases=1, seed=3, shape=(6, 96, 96), kind="chest")
    source = tmp_path / "phantom" / "imagesTr" / "case_000.nii.gz"
    result = GuardedCliRunner().invoke(cli, ["predict", str(chest_bundle_run / "bundle"), str(source), "--out",
                                             str(tmp_path / "labels.npy"), "--overlay", str(tmp_path / "o.png"),
                                             "--backend", "onnxruntime:fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    labels = np.load(tmp_path / "labels.npy")
    k = int(np.argmax(np.count_nonzero(labels.reshape(len(labels), -1), axis=1)))
    volume, _ = read_input(source)
    image = np.asarray(Image.open(tmp_path / "o.png")).astype(np.int16)
    plain = labels[k] == 0  # pixels away from every outline show the CT
    assert np.abs(image[plain][:, 0] - _grey(volume.hu[k], LUNG_WINDOW)[plain]).max() <= 1


@pytest.mark.parametrize("image_format", ["nifti", "dicom"])
def test_overlays_put_the_patients_right_on_the_image_left_and_anterior_at_the_top(tmp_path, image_format):
    """The abdominal phantom's liver lies on the patient's right and its spine posterior; read from
    a RAS NIfTI file or a DICOM series, the overlay shows them where a radiologist expects."""
    write_phantom_dataset(tmp_path / "p", cases=1, seed=0, shape=(12, 64, 64), image_format=image_format)
    source = tmp_path / "p" / ("imagesTr/case_000.nii.gz" if image_format == "nifti" else "case_000")
    volume, _ = read_input(source)
    from edgeseg.data.nifti import read_nifti

    truth = read_nifti(tmp_path / "p" / "labelsTr" / "case_000.nii.gz").hu.astype(np.uint8)
    write_overlay(truth, volume, tmp_path / "o.png")
    image = np.asarray(Image.open(tmp_path / "o.png"))
    liver = np.argwhere((image == class_rgb(PHANTOM_LABELS["liver"])).all(axis=-1))
    spine = np.argwhere((image == class_rgb(PHANTOM_LABELS["spine"])).all(axis=-1))
    assert len(liver) > 20 and liver[:, 1].mean() < 0.4 * image.shape[1]
    assert len(spine) > 10 and spine[:, 0].mean() > 0.6 * image.shape[0]
