"""Traceability of served results: every KServe v2 answer names the bundle, artifact, backend and
edgeseg version that made it; ``--audit-log`` writes one JSON line per request (serve) and per
association and series (listen), with the sha256 values recomputed here from the files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import edgeseg
from tests.serve.dcmtk_path import dcmtk_tool

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundle_checked(record: dict, bundle: Path) -> None:
    assert record["manifest_sha256"] == _sha256(bundle / "manifest.json")
    assert record["artifact_sha256"] == _sha256(bundle / record["artifact"])
    assert (record["backend"], record["precision"]) == ("onnxruntime", "fp32")
    assert record["software_version"] == edgeseg.__version__


def _infer(port: int, request_id: str | None = None) -> tuple[dict, str]:
    body = {"inputs": [{"name": "hu", "datatype": "INT16", "shape": [32, 32], "data": [0] * 1024}]}
    headers = {"Content-Type": "application/json", **({"X-Request-ID": request_id} if request_id else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/edgeseg-pipeline/infer",
                                     data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read()), reply.headers["X-Request-ID"]


def test_serve_answers_and_audit_lines_name_the_bundle(serve_bundle, serve_process, tmp_path):
    log = tmp_path / "audit.jsonl"
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32", "--audit-log", str(log)) as (_, port):
        answer, echoed = _infer(port, "req-42")
        assert echoed == "req-42"
        _bundle_checked(answer["parameters"], serve_bundle)
        _, generated = _infer(port, "bad id with spaces")  # not echoed into the log as sent
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/nothing/infer", data=b"{}", timeout=30)
        for route in ("/v2/models/edgeseg", "/v2/models/edgeseg/versions/1", "/v2/models/edgeseg/ready"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=30).read()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    # a model's metadata is a request about that model as much as its readiness or an inference
    assert [(line["path"], line.get("model")) for line in lines if line["method"] == "GET"] == \
        [("/v2/models/edgeseg", "edgeseg"), ("/v2/models/edgeseg/versions/1", "edgeseg"),
         ("/v2/models/edgeseg/ready", "edgeseg")]
    inference = [line for line in lines if line["path"].endswith("/infer")]
    assert [(line["request_id"], line["status"], line["outcome"]) for line in inference] == \
        [("req-42", 200, "ok"), (generated, 200, "ok"), (inference[2]["request_id"], 404, "error")]
    assert generated != "bad id with spaces" and len(generated) == 32
    for line in inference:
        assert line["event"] == "http_request" and line["method"] == "POST" and line["peer"].startswith("127.0.0.1:")
        assert line["latency_ms"] >= 0 and line["time"].endswith("Z")
        _bundle_checked(line["bundle"], serve_bundle)
    assert [line["model"] for line in inference] == ["edgeseg-pipeline", "edgeseg-pipeline", "nothing"]
    assert not any(line["path"].startswith("/v2/health") for line in lines)  # readiness probes are not audited


def test_upload_answer_names_the_bundle(server, serve_bundle):
    nib = pytest.importorskip("nibabel")
    import io

    image = nib.Nifti1Image(np.zeros((32, 32, 2), np.int16), np.eye(4))
    request = urllib.request.Request(f"http://{server.url}/v1/segment?format=npy", data=image.to_bytes(),
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        np.load(io.BytesIO(reply.read()))
        _bundle_checked(json.loads(reply.headers["X-Edgeseg-Provenance"]), serve_bundle)


@pytest.mark.skipif(not dcmtk_tool("storescu"), reason="dcmtk (storescu) is not installed: apt-get install dcmtk")
def test_listen_audit_lines_per_association_and_series(serve_bundle, tmp_path, free_port, wait_port):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("pynetdicom")
    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.audit import AuditLog
    from edgeseg.serve.dicom_node import DicomNode

    segmenter = Segmenter.load(serve_bundle, backend="onnxruntime:fp32")
    audit = AuditLog(tmp_path / "audit.jsonl", provenance(segmenter))
    # complete once the test has stored it all (idle 0 from then on), not after a second without
    # an image, which a loaded machine could take between two images and split the series
    node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=600, work=tmp_path / "work", audit=audit)
    node.start()
    try:
        wait_port(node.port)
        files = _store_series(node.port)
        node.idle = 0
        deadline = time.monotonic() + 60
        while not node.stats.segmented and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        node.stop()
        segmenter.close()
        audit.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    association = next(line for line in lines if line["event"] == "association")
    assert (association["calling_ae"], association["called_ae"], association["stored"], association["refused"],
            association["outcome"]) == ("SCANNER1", "EDGESEG", len(files), 0, "released")
    series = next(line for line in lines if line["event"] == "series")
    seg_file = tmp_path / "out" / series["seg_file"]
    assert (series["study_uid"], series["series_uid"], series["slices"], series["outcome"]) == \
        (source.StudyInstanceUID, source.SeriesInstanceUID, len(files), "segmented")
    assert series["seg_sop_instance_uid"] == pydicom.dcmread(seg_file).SOPInstanceUID
    for line in (association, series):
        _bundle_checked(line["bundle"], serve_bundle)
    # the audit log holds no attribute of the patient
    text = (tmp_path / "audit.jsonl").read_text()
    for value in (source.get("PatientName"), source.get("PatientID"), source.get("PatientBirthDate")):
        if value:
            assert str(value) not in text


@pytest.mark.skipif(not dcmtk_tool("storescu"), reason="dcmtk (storescu) is not installed: apt-get install dcmtk")
def test_listen_audits_a_series_a_forced_stop_leaves_unsegmented(serve_bundle, tmp_path, free_port, wait_port):
    """Its images were acknowledged to the scanner and then dropped: the audit log must say so,
    as it does for a series that failed, not leave it out."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("pynetdicom")
    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.audit import AuditLog
    from edgeseg.serve.dicom_node import DicomNode

    segmenter = Segmenter.load(serve_bundle, backend="onnxruntime:fp32")
    audit = AuditLog(tmp_path / "audit.jsonl", provenance(segmenter))
    # idle long enough that the series is still waiting when the stop comes
    node = DicomNode(segmenter, port=free_port(), out=tmp_path / "out", idle=600.0, work=tmp_path / "work",
                     audit=audit)
    node.start()
    try:
        wait_port(node.port)
        files = _store_series(node.port)
        node.abandon()  # a second Ctrl-C: the stop segments nothing more
    finally:
        node.stop()
        segmenter.close()
        audit.close()
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert node.stats.failed == [source.SeriesInstanceUID] and not node.stats.segmented
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    series = [line for line in lines if line["event"] == "series"]
    assert [(line["series_uid"], line["outcome"]) for line in series] == [(source.SeriesInstanceUID, "failed")]
    assert "stop" in series[0]["error"]
    _bundle_checked(series[0]["bundle"], serve_bundle)


def _store_series(port: int) -> list:
    """Send the test series to the node with dcmtk's storescu as SCANNER1; the files sent."""
    files = sorted(SERIES.glob("*.dcm"))
    sent = subprocess.run(["storescu", "-aet", "SCANNER1", "-aec", "EDGESEG", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    return files
