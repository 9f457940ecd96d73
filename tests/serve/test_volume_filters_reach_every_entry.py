"""The bundle's 3-D post-processing reaches every volume entry point, not only
``Segmenter.predict_volume``: ``edgeseg predict`` on a NIfTI volume and on a DICOM series, and
the DICOM node. The bundle keeps the largest 3-D liver component of at least 50 voxels; on this
phantom that removes voxels the network predicts. The NIfTI output must equal the raw
prediction filtered by scipy (``filter_components(reference=True)``) voxel for voxel; a DICOM
SEG must hold as many segmented voxels as that filtered prediction (its frames are not mapped
back to positions here)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgeseg.cli.main import cli
from edgeseg.data.dicom import read_dicom_series
from edgeseg.data.dicom_ct_writer import write_ct_series
from edgeseg.data.nifti import read_nifti, to_lps_layout
from edgeseg.data.phantom import synth_phantom
from edgeseg.kernels import ComponentRule, filter_components
from edgeseg.runtime import Segmenter
from tests.guarded_cli import GuardedCliRunner
from tests.serve.dcmtk_path import dcmtk_tool

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
DCMTK = all(dcmtk_tool(tool) for tool in ("storescu", "storescp"))
BACKEND = "onnxruntime:fp32"


@pytest.fixture(scope="module")
def case(serve_bundle, tmp_path_factory):
    """A bundle with the 3-D filter, the phantom as NIfTI and as a DICOM series, and what the
    filter must leave of the raw prediction of each."""
    root = tmp_path_factory.mktemp("filters3d")
    volume = synth_phantom("case_012", 9, shape=(14, 80, 80))
    volume.hu[:] = np.round(volume.hu)  # whole HU, as a scanner stores them
    bundle = Path(shutil.copytree(serve_bundle, root / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["postprocess"] = {"classes": {"1": {"keep_largest_3d": True, "min_ml": 50 * math.prod(volume.spacing) / 1000}}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    nifti = root / "case.nii.gz"
    image = nib.Nifti1Image(np.ascontiguousarray(volume.hu.astype(np.int16).transpose(2, 1, 0)), volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    nib.save(image, nifti)
    series = root / "series"
    series.mkdir()
    write_ct_series(volume, series)
    wants = {}
    with Segmenter.load(bundle, backend=BACKEND) as segmenter:
        for name, read in (("nifti", read_nifti(nifti)), ("dicom", read_dicom_series(series))):
            raw = segmenter.predict_volume(read, volume_filters=False)
            want = filter_components(raw, {1: ComponentRule(True, 50)}, volume=True, reference=True)
            assert (want == 1).any() and (want != raw).any()  # the filter has work to do here
            wants[name] = want
    return bundle, nifti, series, wants


def _predict(*args) -> None:
    result = GuardedCliRunner().invoke(cli, ["predict", *map(str, args), "--backend", BACKEND, "--quiet"])
    assert result.exit_code == 0, result.output


def test_predict_on_nifti_applies_the_3d_filter(case, tmp_path):
    bundle, nifti, _, wants = case
    _predict(bundle, nifti, "--out", tmp_path / "labels.nii.gz")
    written = nib.load(str(tmp_path / "labels.nii.gz"))
    labels, _ = to_lps_layout(np.asarray(written.dataobj), written.affine)
    np.testing.assert_array_equal(labels, wants["nifti"])


def _seg_voxels(path: Path) -> int:
    seg = pydicom.dcmread(path)
    return int(np.asarray(seg.pixel_array, dtype=np.int64).sum())


def test_predict_on_a_dicom_series_applies_the_3d_filter(case, tmp_path):
    bundle, _, series, wants = case
    _predict(bundle, series, "--out", tmp_path / "pred.dcm")
    assert _seg_voxels(tmp_path / "pred.dcm") == int((wants["dicom"] == 1).sum())


@pytest.mark.skipif(not DCMTK, reason="dcmtk (storescu, storescp) is not installed: apt-get install dcmtk")
def test_the_dicom_node_applies_the_3d_filter(case, tmp_path, free_port, wait_port):
    from edgeseg.serve.dicom_node import DicomNode

    bundle, _, series, wants = case
    with Segmenter.load(bundle, backend=BACKEND) as segmenter:
        # complete once storescu has stored it all (idle 0 from then on), not after a second
        # without an image, which a loaded machine could take between two images and split it
        node = DicomNode(segmenter, ae_title="EDGESEG", port=free_port(), out=tmp_path / "out", idle=600,
                         work=tmp_path / "work")
        node.start()
        try:
            wait_port(node.port)
            done = subprocess.run(["storescu", "-aec", "EDGESEG", "127.0.0.1", str(node.port),
                                   *map(str, sorted(series.glob("*.dcm")))], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            node.idle = 0
            deadline = time.monotonic() + 60
            while not node.stats.segmented and not node.stats.failed and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            node.stop()
    assert len(node.stats.segmented) == 1, node.stats
    [seg] = (tmp_path / "out").glob("*.seg.dcm")
    assert _seg_voxels(seg) == int((wants["dicom"] == 1).sum())
