"""An image the DICOM node holds, sent again: it replaces its file, and the series is segmented
from all its images.

A PACS resends what it is not sure was taken, and need not write a DS value the same way twice:
the node used to compare the held and the new slice's ImagePositionPatient as text, so the same
slice with ``-235.1999970`` for ``-235.199997`` was refused as a second image under one SOP
Instance UID (and the series then failed). Positions are compared as numbers, within the
tolerance the readers compare slices with. Real node on 127.0.0.1, real pynetdicom senders."""

from __future__ import annotations

import copy

import pytest

from tests.serve.test_dicom_node import _wait_for
from tests.serve.test_dicom_node_enhanced_ct import _enhanced
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_dicom_node_whole_series import _association, _referenced, _segs, _send, _slices

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")


def _segmented_whole(node, tmp_path, datasets) -> None:
    assert _wait_for(lambda: node.stats.segmented.total == 1), node.stats
    assert node.stats.failed == [] and node.stats.refused == 0
    (seg,) = _segs(tmp_path / "out")
    assert _referenced(seg) == {str(ds.SOPInstanceUID) for ds in datasets}


def _reformatted(ds):
    """``ds`` with each ImagePositionPatient value written with seven decimals: the same numbers,
    other text."""
    again = copy.deepcopy(ds)
    again.ImagePositionPatient = [f"{float(value):.7f}" for value in ds.ImagePositionPatient]
    return again


def test_a_slice_sent_again_as_it_was_replaces_its_file(running_node, tmp_path):
    datasets = _slices()
    with running_node() as node:
        assoc = _association(node.port)
        assert _send(assoc, [*datasets, datasets[1]]) == [0, 0, 0, 0]
        assoc.release()
        _segmented_whole(node, tmp_path, datasets)


def test_a_slice_sent_again_with_its_position_written_otherwise_is_taken(running_node, tmp_path):
    datasets = _slices()
    again = _reformatted(datasets[0])
    written = [value.original_string for value in again.ImagePositionPatient]
    assert written != [value.original_string for value in datasets[0].ImagePositionPatient], written
    with running_node() as node:
        assoc = _association(node.port)
        assert _send(assoc, [*datasets, again]) == [0, 0, 0, 0]
        assoc.release()
        _segmented_whole(node, tmp_path, datasets)


def test_an_enhanced_ct_sent_again_is_taken(running_node, tmp_path):
    source = pydicom.dcmread(_enhanced(tmp_path / "e.dcm"))
    ae = pynetdicom.AE(ae_title="SENDER")
    ae.add_requested_context(source.SOPClassUID, source.file_meta.TransferSyntaxUID)
    with running_node() as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        assert assoc.is_established
        assert _send(assoc, [source, source]) == [0, 0]
        assoc.release()
        _segmented_whole(node, tmp_path, [source])
