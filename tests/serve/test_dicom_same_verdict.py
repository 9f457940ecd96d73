"""One CT series, two ways in: ``edgeseg predict --format dicom-seg`` of its folder and the DICOM
node (``edgeseg listen``) sent its files by C-STORE must give the same verdict on the same
malformed input: both write a SEG of the same content, or both refuse, naming the same element.
Neither may write a SEG referencing an invalid UID.

Before, predict took a series whose UIDs broke PS3.5 9.1 (66 characters, a leading zero in a
component) and wrote a SEG carrying them, with pydicom's warnings only, while the node refused
some of the same images and acknowledged others (a 66-character Study or Frame of Reference UID,
a leading zero in a SOP Instance UID) whose SEG then carried them too; an image without a
FrameOfReferenceUID was acknowledged and its series then failed, and a slice sent with the SOP
Instance UID of another replaced it, the series segmented one slice short; and once the node
refused that slice, it still segmented the slice taken before it into a SEG of part of the series."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from tests.guarded_cli import GuardedCliRunner
from tests.serve.test_dicom_node import SERIES
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
STORESCU = "/usr/bin/storescu"
pytestmark = [pytest.mark.skipif(not shutil.which(STORESCU), reason=f"dcmtk's storescu is not at {STORESCU}: apt-get install dcmtk"),
              # the malformed UIDs are the point; pydicom warns of them as it reads them
              pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")]

LONG_UID = "1.2." + "3" * 62  # 66 characters
# PS3.5 9.1, written out independently of edgeseg.data.dicom_uids: the oracle for a SEG's UIDs
VALID_UID = re.compile(r"(?=.{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _on_all(field, value):
    def change(datasets):
        for ds in datasets:
            setattr(ds, field, value)
    return change


def _on_first(field, value=None):
    def change(datasets):
        if value is None:
            delattr(datasets[0], field)
        else:
            setattr(datasets[0], field, value)
    return change


def _duplicate_sop_uid(datasets):
    datasets[1].SOPInstanceUID = datasets[0].SOPInstanceUID


# case: (change to the series, the element a refusal names; None: both accept)
CASES = {
    "valid": (lambda datasets: None, None),
    "sop uid of 66 characters": (_on_first("SOPInstanceUID", LONG_UID), "SOPInstanceUID"),
    "series uid of 66 characters": (_on_all("SeriesInstanceUID", LONG_UID), "SeriesInstanceUID"),
    "study uid of 66 characters": (_on_all("StudyInstanceUID", LONG_UID), "StudyInstanceUID"),
    "frame of reference uid with a leading zero": (_on_all("FrameOfReferenceUID", "1.2.03.4"), "FrameOfReferenceUID"),
    "sop uid with a leading zero": (_on_first("SOPInstanceUID", "1.2.03.4"), "SOPInstanceUID"),
    "sop uid with letters": (_on_first("SOPInstanceUID", "1.2.abc.4"), "SOPInstanceUID"),
    "no frame of reference uid": (_on_all("FrameOfReferenceUID", ""), "FrameOfReferenceUID"),
    "two images of one sop uid": (_duplicate_sop_uid, "SOPInstanceUID"),
    "no ImagePositionPatient": (_on_first("ImagePositionPatient"), "ImagePositionPatient"),
    "RescaleSlope 0": (_on_first("RescaleSlope", "0"), "RescaleSlope"),
    "MR modality": (_on_all("Modality", "MR"), "MR"),
}


def _series(folder: Path, change) -> list[Path]:
    """The test series with UIDs of its own (the node keeps series by UID), changed by ``change``."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    sources = sorted(SERIES.glob("*.dcm"))
    datasets = [pydicom.dcmread(path) for path in sources]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for ds in datasets:
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
    change(datasets)
    for source, ds in zip(sources, datasets):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
        ds.save_as(folder / source.name, enforce_file_format=False)
    return [folder / source.name for source in sources]


def _predict(bundle: Path, folder: Path, seg: Path) -> tuple[str, str]:
    """("SEG", "") where predict wrote the SEG, else ("refused", its error line)."""
    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["predict", str(bundle), str(folder), "--out", str(seg), "--format",
                                             "dicom-seg", "--backend", "onnxruntime:fp32", "--quiet"])
    if result.exit_code == 0:
        assert seg.is_file(), result.output
        return "SEG", ""
    errors = [line for line in result.output.splitlines() if line.startswith("edgeseg: error:")]
    assert len(errors) == 1 and "Traceback" not in result.output and not seg.exists(), result.output
    return "refused", errors[0]


def _send(port: int, files: list[Path]) -> subprocess.CompletedProcess:
    """The files sent to the node by dcmtk's storescu, a sender that passes on UIDs as the files
    hold them (pynetdicom refuses to send a UID over 64 characters), by its absolute path: the
    one of pynetdicom's scripts in a virtual environment has its name."""
    return subprocess.run([STORESCU, "-aec", "EDGESEG", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def _node_verdict(running_node, files: list[Path], out: Path, caplog) -> tuple[str, str]:
    """("SEG", "") where the node acknowledged every image and wrote a SEG; else ("refused", its
    log lines naming why) where it refused an image, or ("failed", its log) where it took them
    all and wrote none."""
    caplog.clear()
    with running_node(out=out) as node:
        sent = _send(node.port, files)
        refused = node.stats.refused
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (node.stats.segmented.total + node.stats.failed.total):
            if refused and not node.stats.received:
                break  # nothing was taken, so nothing will be segmented
            time.sleep(0.1)
    refusals = [r.getMessage() for r in caplog.records if r.name == "edgeseg.listen" and "refused" in r.getMessage()]
    for seg in out.glob("*.seg.dcm"):  # whatever it wrote, it references valid UIDs only
        _assert_valid_uids(seg)
    if refused:  # and no SEG of the images it took before the refusal: a series with one refused is not segmented
        assert sent.returncode != 0 and refusals, (sent.stderr, refusals)
        assert not list(out.glob("*.seg.dcm")), f"a SEG of part of the series: {refusals}"
        return "refused", " ".join(refusals)
    segs = list(out.glob("*.seg.dcm"))
    return ("SEG", "") if len(segs) == 1 else ("failed", " ".join(r.getMessage() for r in caplog.records))


def _assert_valid_uids(path: Path) -> None:
    seg = pydicom.dcmread(path)
    uids = [str(seg.get(field, "")) for field in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                                                  "FrameOfReferenceUID")]
    for series in seg.ReferencedSeriesSequence:
        uids.append(str(series.SeriesInstanceUID))
        uids += [str(item.ReferencedSOPInstanceUID) for item in series.ReferencedInstanceSequence]
    invalid = [uid for uid in uids if not VALID_UID.fullmatch(uid)]
    assert not invalid, f"{path.name} references invalid UIDs {invalid}"


def _content(path: Path):
    seg = pydicom.dcmread(path)
    referenced = sorted(str(item.ReferencedSOPInstanceUID)
                        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence)
    return referenced, seg.pixel_array


@pytest.mark.parametrize("case", CASES)
def test_predict_and_the_node_give_the_same_verdict(serve_bundle, running_node, tmp_path, caplog, case):
    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    change, element = CASES[case]
    with warnings.catch_warnings():  # pydicom warns of the malformed values the case writes
        warnings.simplefilter("ignore")
        files = _series(tmp_path / "series", change)
    predicted = _predict(serve_bundle, tmp_path / "series", tmp_path / "predicted.seg.dcm")
    node = _node_verdict(running_node, files, tmp_path / "out", caplog)
    assert predicted[0] == node[0], f"predict: {predicted}; node: {node}"
    if element is None:
        _assert_valid_uids(tmp_path / "predicted.seg.dcm")
        (node_seg,) = (tmp_path / "out").glob("*.seg.dcm")
        (predicted_refs, predicted_pixels), (node_refs, node_pixels) = (_content(tmp_path / "predicted.seg.dcm"),
                                                                        _content(node_seg))
        assert predicted_refs == node_refs == sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
        assert (predicted_pixels == node_pixels).all()
    else:
        assert element in predicted[1], predicted
        assert element in node[1], node


def test_images_at_one_position_with_nothing_to_tell_them_apart_are_refused_by_both(serve_bundle, running_node,
                                                                                     tmp_path, caplog):
    """Two copies of each slice, nothing telling them apart (edgeseg.data.dicom_volumes): predict
    refuses the series in one line and the node fails it, writing no SEG, each naming the
    positions; a series that does tell its volumes apart is split by both (test_dicom_volumes.py,
    test_dicom_node_volumes.py)."""
    from tests.dicom_volume_series import AMBIGUOUS, make_series

    caplog.set_level(logging.INFO, logger="edgeseg.listen")
    volumes = make_series(tmp_path / "series", AMBIGUOUS)
    heights = ", ".join(f"{float(pydicom.dcmread(f).ImagePositionPatient[2]):.3f}" for f in reversed(volumes[0]))
    predicted = _predict(serve_bundle, tmp_path / "series", tmp_path / "predicted.seg.dcm")
    node = _node_verdict(running_node, sorted((tmp_path / "series").iterdir()), tmp_path / "out", caplog)
    assert predicted[0] == "refused" and node[0] == "failed", (predicted, node)
    for said in (predicted[1], node[1]):
        assert "lie at the same slice position" in said and f"{heights} mm" in said and "nothing tells them apart" in said
