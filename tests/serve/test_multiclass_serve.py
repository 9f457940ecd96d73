"""A two-lesion-class bundle served: KServe v2 metadata and responses name the classes, and the
DICOM node's SEG has one coded segment per class."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
NAMES = ["background", "ggo", "consolidation"]


@pytest.fixture(scope="module")
def chest_bundle(tmp_path_factory) -> Path:
    """An untrained 3-class U-Net exported (ONNX FP32) and gated on the chest phantom: the
    class names and their order are what these tests read, not the masks."""
    torch = pytest.importorskip("torch")
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.models import ModelConfig, build_model
    from edgeseg.models.checkpoint import save_checkpoint
    from edgeseg.spec import PreprocessSpec

    root = tmp_path_factory.mktemp("chest-bundle")
    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, base=4, depth=2)
    save_checkpoint(root / "random.pt", build_model(config).eval(), config,
                    PreprocessSpec(window=(-1000.0, 200.0), size=(32, 32)), NAMES, epoch=0)
    export_bundle(root / "random.pt", root / "bundle", ExportSettings(formats=("onnx",), max_batch=4, verify_slices=8),
                  verify_data="chest-phantom:cases=2,size=32,slices=8", progress=False, echo=lambda text: None)
    return root / "bundle"


@pytest.fixture(scope="module")
def segmenter(chest_bundle):
    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(chest_bundle, backend="onnxruntime:fp32") as seg:
        yield seg


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_metadata_and_responses_name_every_class(segmenter):
    pytest.importorskip("fastapi")
    from tests.serve.conftest import RunningServer
    from edgeseg.serve.app import ServeConfig, create_app

    server = RunningServer(create_app(segmenter, ServeConfig(max_batch=4)))
    try:
        base = f"http://{server.url}/v2/models"
        for name in ("edgeseg", "edgeseg-pipeline"):
            meta = _get(f"{base}/{name}")
            assert meta["parameters"]["labels"] == {"0": "background", "1": "ggo", "2": "consolidation"}
            assert [(c["value"], c["name"], c["type"]) for c in meta["parameters"]["classes"]] == [
                (1, "ggo", "DCM 112120 Ground glass opacity"), (2, "consolidation", "SCT 95436008 Lung consolidation")]
        hu = np.full((1, 40, 50), -800, np.int16)
        body = json.dumps({"inputs": [{"name": "hu", "datatype": "INT16", "shape": list(hu.shape),
                                       "data": hu.ravel().tolist()}]}).encode()
        request = urllib.request.Request(f"{base}/edgeseg-pipeline/infer", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["parameters"]["classes"] == "background,ggo,consolidation"
        assert answer["outputs"][0]["shape"] == [1, 40, 50]
        assert set(answer["outputs"][0]["data"]) <= {0, 1, 2}
    finally:
        server.stop()


def test_dicom_node_writes_one_coded_segment_per_class(segmenter, tmp_path):
    hd = pytest.importorskip("highdicom")
    pytest.importorskip("pynetdicom")
    from edgeseg.serve.dicom_node import DicomNode

    folder = tmp_path / "incoming"
    shutil.copytree(SERIES, folder)
    node = DicomNode(segmenter, out=tmp_path / "out", work=tmp_path / "work")
    seg = hd.seg.segread(node.process("1.2.3", folder))
    assert [d.segment_label for d in seg.SegmentSequence] == ["ggo", "consolidation"]
    assert [seg.get_segment_description(n).segmented_property_type.value for n in (1, 2)] == ["112120", "95436008"]
