"""A series holding two volumes under one Series Instance UID (two orientations, two stacks, two
temporal positions, two acquisitions at the same positions), sent to the DICOM node by dcmtk's
storescu, gets one SEG per volume, ``UID.volK.seg.dcm``, each referencing exactly the images of
volume K and holding the masks ``edgeseg predict`` makes of those images alone; both are
forwarded. Before, the node acknowledged every image and then failed the whole series ("lie at the
same slice position", "a series must have one orientation"), writing no SEG."""

from __future__ import annotations

import pytest

from tests.dicom_volume_series import KINDS, copy_volume, make_series
from tests.guarded_cli import GuardedCliRunner
from tests.serve.test_dicom_node import _storescu, _wait_for, node, storescp  # noqa: F401 - the fixtures

pydicom = pytest.importorskip("pydicom")


def _predicted_seg(bundle, folder, seg) -> pydicom.Dataset:
    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["predict", str(bundle), str(folder), "--out", str(seg), "--format",
                                             "dicom-seg", "--backend", "onnxruntime:fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    return pydicom.dcmread(seg)


def _referenced(seg: pydicom.Dataset) -> set[str]:
    (series,) = seg.ReferencedSeriesSequence
    return {str(item.ReferencedSOPInstanceUID) for item in series.ReferencedInstanceSequence}


@pytest.mark.parametrize("kind", KINDS)
def test_the_node_writes_one_seg_per_volume(node, storescp, serve_bundle, tmp_path, kind):
    _, received = storescp
    volumes = make_series(tmp_path / "series", KINDS[kind])
    sent = _storescu(node.port, sorted((tmp_path / "series").iterdir()))
    assert sent.returncode == 0, sent.stderr
    assert _wait_for(lambda: len(node.stats.forwarded) == 2), (node.stats, sent.stderr)
    uid = str(pydicom.dcmread(volumes[0][0]).SeriesInstanceUID)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.seg.dcm")) == [f"{uid}.vol1.seg.dcm", f"{uid}.vol2.seg.dcm"]
    assert node.stats.segmented == [uid] and not node.stats.failed
    segs = []
    for number, files in enumerate(volumes, start=1):
        seg = pydicom.dcmread(tmp_path / "out" / f"{uid}.vol{number}.seg.dcm")
        assert _referenced(seg) == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        alone = _predicted_seg(serve_bundle, copy_volume(files, tmp_path / f"alone{number}"), tmp_path / f"{number}.dcm")
        assert _referenced(alone) == _referenced(seg)
        assert seg.pixel_array.shape == alone.pixel_array.shape and int((seg.pixel_array != alone.pixel_array).sum()) == 0
        segs.append(seg)
    assert segs[0].SeriesInstanceUID != segs[1].SeriesInstanceUID  # each volume's SEG a series of its own
    forwarded = {str(pydicom.dcmread(p).SOPInstanceUID) for p in received.iterdir()}
    assert forwarded == {str(seg.SOPInstanceUID) for seg in segs}
