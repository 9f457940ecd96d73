"""Every output of ``edgeseg predict`` says what made it: the bundle (sha256 of its manifest.json
and of the artifact run, both computed here from the files), the backend and precision, and the
edgeseg version; and a NIfTI output keeps none of the input's free-text header fields."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeseg

DATA = Path(__file__).resolve().parents[1] / "data"
SERIES = DATA / "dcmqi_ct_liver" / "ct-3slice"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _predict(bundle, source, out, *extra) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(bundle), str(source), "--out", str(out),
                           "--backend", "onnxruntime:fp32", "--quiet", *extra], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _check(record: dict, bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    onnx = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    assert record["manifest_sha256"] == _sha256(bundle / "manifest.json")
    assert record["artifact"] == onnx["file"]
    assert record["artifact_sha256"] == _sha256(bundle / onnx["file"])
    assert (record["backend"], record["precision"], record["device"]) == ("onnxruntime", "fp32", "cpu")
    assert record["software_version"] == edgeseg.__version__
    assert record["backend_version"] == pytest.importorskip("onnxruntime").__version__


def _nifti_input(tmp_path) -> Path:
    """A NIfTI CT whose header carries what a converter may put there: a name in descrip and a
    DICOM header extension."""
    nib = pytest.importorskip("nibabel")
    hu = np.full((48, 40, 6), -1000, np.int16)
    hu[10:30, 12:28] = 60
    image = nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1.0]))
    image.header["descrip"] = b"DOE^JOHN 1970-01-01"
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=DOE^JOHN"))
    path = tmp_path / "ct.nii.gz"
    nib.save(image, str(path))
    return path


def test_nifti_output_records_the_bundle_and_drops_the_inputs_header_text(exported_bundle, tmp_path):
    nib = pytest.importorskip("nibabel")
    out = tmp_path / "labels.nii.gz"
    _predict(exported_bundle, _nifti_input(tmp_path), out)
    header = nib.load(str(out)).header
    texts = [ext.get_content() for ext in header.extensions]
    assert not any(b"DOE" in text for text in texts) and b"DOE" not in header["descrip"].tobytes()
    records = [json.loads(text) for text in texts]
    assert len(records) == 1 and [e.get_code() for e in header.extensions] == [6]  # a comment extension
    _check(records[0], exported_bundle)
    descrip = header["descrip"].tobytes().rstrip(b"\0").decode("ascii")
    assert descrip.startswith(f"edgeseg {edgeseg.__version__} ") and "onnxruntime:fp32" in descrip
    assert _sha256(exported_bundle / "manifest.json")[:12] in descrip


def test_seg_nrrd_png_and_overlay_record_the_bundle(exported_bundle, tmp_path):
    nrrd = pytest.importorskip("nrrd")
    Image = pytest.importorskip("PIL.Image")
    source = _nifti_input(tmp_path)
    _predict(exported_bundle, source, tmp_path / "labels.seg.nrrd", "--overlay", str(tmp_path / "overlay.png"))
    _check(json.loads(nrrd.read_header(str(tmp_path / "labels.seg.nrrd"))["edgeseg_provenance"]), exported_bundle)
    _check(json.loads(Image.open(tmp_path / "overlay.png").text["edgeseg_provenance"]), exported_bundle)
    _predict(exported_bundle, source, tmp_path / "slices", "--format", "png")
    pngs = sorted((tmp_path / "slices").glob("*.png"))
    assert len(pngs) == 6
    for png in pngs:
        _check(json.loads(Image.open(png).text["edgeseg_provenance"]), exported_bundle)


def test_dicom_seg_records_the_bundle_backend_and_versions(exported_bundle, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    out = tmp_path / "seg.dcm"
    _predict(exported_bundle, SERIES, out)
    seg = pydicom.dcmread(out)
    ort = pytest.importorskip("onnxruntime").__version__
    assert list(seg.SoftwareVersions) == [edgeseg.__version__, f"onnxruntime {ort}"]
    assert seg.ContentDescription.startswith(f"edgeseg {edgeseg.__version__} ")
    assert "onnxruntime:fp32" in seg.ContentDescription
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    parameters = dict(item.split("=", 1) for item in algorithm.AlgorithmParameters.split(","))
    assert parameters["manifest_sha256"] == _sha256(exported_bundle / "manifest.json")
    assert parameters["artifact_sha256"] == _sha256(exported_bundle / parameters["artifact"])
    assert parameters["backend"] == "onnxruntime:fp32"


def test_version_names_the_kernels_build_and_the_backend_libraries():
    from importlib import metadata

    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"edgeseg, version {edgeseg.__version__}"  # what scripts read stays the first line
    assert any(line.startswith(f"python      {sys.version.split()[0]} on ") for line in lines)
    kernels = next(line for line in lines if line.startswith("C kernels"))
    assert "OpenMP" in kernels
    libraries = next(line for line in lines if line.startswith("libraries"))
    assert f"onnxruntime {metadata.version('onnxruntime')}," in libraries
    assert f"numpy {np.__version__} " in libraries
    facts = json.loads(subprocess.run([sys.executable, "-m", "edgeseg.cli", "version", "--json"], capture_output=True,
                                      text=True, check=True).stdout)
    from edgeseg.kernels import has_openmp

    assert (facts["kernels"]["openmp"] > 0) == has_openmp()
    assert facts["libraries"]["onnxruntime"] == metadata.version("onnxruntime")



def test_backend_version_is_the_installed_library_of_every_runner(bundle_dir):
    """The OpenVINO runner loads OpenVINO's bindings without ``import openvino``: its version is
    still recorded, read from the distribution the runner names, as for ONNX Runtime. A fresh
    process: one that imported openvino already would hide the difference. OpenVINO's is the build
    string its runtime reports (as libedgeseg's), which begins with the wheel's version."""
    import importlib.util
    from importlib import metadata

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'edgeseg[openvino]')")
    script = ("import sys, json\n"
              "from edgeseg.runtime import Segmenter\n"
              "from edgeseg.runtime.provenance import provenance\n"
              "found = {}\n"
              "for backend in ('onnxruntime:fp32', 'openvino:fp32'):\n"
              "    with Segmenter.load(sys.argv[1], backend=backend) as seg:\n"
              "        found[backend] = provenance(seg).get('backend_version')\n"
              "print(json.dumps(found))\n")
    done = subprocess.run([sys.executable, "-c", script, str(bundle_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["onnxruntime:fp32"] == metadata.version("onnxruntime")
    assert found["openvino:fp32"].split("-")[0] == metadata.version("openvino"), found


def test_backend_version_stays_the_loaded_library_while_another_is_installed(bundle_dir, tmp_path, monkeypatch):
    """The record names the library the runner loaded, read once per runner (the server puts it
    in every response): a distribution of another version that appears on ``sys.path`` afterwards
    (a reinstall while the server runs) does not change what the running engine is."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.provenance import provenance

    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        assert provenance(seg)["backend_version"] == onnxruntime.__version__
        other = tmp_path / "onnxruntime-0.0.1.dist-info"  # first on sys.path: what metadata now reports
        other.mkdir()
        (other / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\nVersion: 0.0.1\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        from importlib import metadata

        assert metadata.version("onnxruntime") == "0.0.1"
        assert provenance(seg)["backend_version"] == onnxruntime.__version__
