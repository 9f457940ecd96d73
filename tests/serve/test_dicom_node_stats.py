"""The DICOM node's statistics stay bounded however many series it segments: NodeStats kept one
series UID per series for as long as the node ran (tracemalloc, docs/results.md "Soak")."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.serve.dicom_node import DicomNode
from edgeseg.serve.dicom_node_settings import STATS_KEPT, LatestNames, NodeStats

pytest.importorskip("pynetdicom")
pytest.importorskip("pydicom")
SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def test_latest_names_keep_the_last_ones_and_count_all():
    names, everything = LatestNames(), []
    for index in range(2 * STATS_KEPT + 7):
        names.append(f"1.2.{index}")
        everything.append(f"1.2.{index}")
        assert len(names) == min(len(everything), STATS_KEPT)
    assert names == everything[-STATS_KEPT:] and names.total == len(everything)


def test_every_list_of_the_node_stats_is_bounded():
    stats = NodeStats()
    for name in ("segmented", "forwarded", "not_forwarded", "failed"):
        kept = getattr(stats, name)
        for index in range(STATS_KEPT + 1):
            kept.append(f"{name}-{index}")
        assert len(kept) == STATS_KEPT and kept[0] == f"{name}-1" and kept.total == STATS_KEPT + 1, name


def test_a_node_segmenting_series_after_series_keeps_only_the_latest(serve_bundle, tmp_path):
    from edgeseg.runtime.segmenter import Segmenter

    segmenter = Segmenter.load(serve_bundle, backend="onnxruntime:fp32")
    node = DicomNode(segmenter, port=1, out=tmp_path / "out", work=tmp_path / "work")
    try:
        node.stats.segmented.kept = 3
        uids = [f"1.2.826.0.1.3680043.8.498.{index}" for index in range(1, 9)]
        for uid in uids:
            assert node.process(uid, SERIES).is_file()
        assert node.stats.segmented == uids[-3:] and node.stats.segmented.total == len(uids)
        assert len(list((tmp_path / "out").iterdir())) == len(uids)  # every series was segmented all the same
    finally:
        segmenter.close()
