"""``--force`` replaces a Triton repository edgeseg wrote, never the bundle, its run or other folders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeseg.cli.main import cli
from tests.guarded_cli import GuardedCliRunner

pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def _refused(args, message):
    result = GuardedCliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("edgeseg: error: ") and len(result.output.strip().splitlines()) == 1
    assert message in result.output, result.output


def test_force_never_replaces_the_bundle_or_a_folder_holding_or_inside_it(serve_bundle, tmp_path):
    run = tmp_path / "tb"
    shutil.copytree(serve_bundle, run / "bundle")
    (run / "best.pt").write_bytes(b"weights")
    before = _tree(tmp_path)
    _refused(["triton", str(run / "bundle"), str(run), "--force"], f"REPO {run} holds the bundle")
    _refused(["triton", str(run / "bundle"), str(run / "bundle"), "--force"], "is the bundle")
    _refused(["triton", str(run / "bundle"), str(run / "bundle" / ".." / "bundle" / "repo")], "lies inside the bundle")
    (tmp_path / "link").symlink_to(run)
    _refused(["triton", str(run / "bundle"), str(tmp_path / "link"), "--force"], "holds the bundle")
    (tmp_path / "link").unlink()
    assert _tree(tmp_path) == before


def test_force_writes_into_a_repository_but_not_into_a_folder_of_other_files(serve_bundle, tmp_path):
    repo = tmp_path / "repo"
    args = ["triton", str(serve_bundle), str(repo), "--max-batch", "0"]
    assert GuardedCliRunner().invoke(cli, args).exit_code == 0
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--force", "--name", "liver"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["edgeseg", "edgeseg-pipeline", "liver", "liver-pipeline"]

    (repo / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "scan").mkdir()
    (tmp_path / "mine" / "scan" / "IM0001.dcm").write_bytes(b"dicom")
    before = _tree(tmp_path)
    _refused([*args[:2], str(repo), "--force"], f"REPO {repo} is not a Triton model repository: it holds notes.txt, not")
    _refused([*args[:2], str(tmp_path / "mine"), "--force"], "it holds scan, not a model folder")
    (tmp_path / "mine" / "scan" / "config.pbtxt").write_text("name: \"scan\"")
    # a model folder of another name is left alone; one of the name to replace must be edgeseg's kind
    _refused([*args[:2], str(tmp_path / "mine"), "--force", "--name", "scan"], "it holds scan/IM0001.dcm, not")
    (tmp_path / "mine" / "scan" / "config.pbtxt").unlink()
    assert _tree(tmp_path) == before


def test_export_triton_refuses_the_bundle_and_the_checkpoint_folder_before_any_work(trained_checkpoint, tmp_path):
    run = tmp_path / "w" / "run"
    run.mkdir(parents=True)
    shutil.copyfile(trained_checkpoint, run / "best.pt")
    (run / "last.pt").write_bytes(b"weights")
    before = _tree(tmp_path)
    export = ["export", str(run / "best.pt"), "--out", str(tmp_path / "b"), "--formats", "onnx", "--quiet", "--force"]
    _refused([*export, "--triton", str(tmp_path / "b")], "is the bundle")
    _refused([*export, "--triton", str(tmp_path / "b" / "repo")], "lies inside the bundle")
    _refused([*export, "--triton", str(run)], f"--triton {run} is the checkpoint's folder")
    _refused([*export, "--triton", str(tmp_path)], f"--triton {tmp_path} holds the bundle")
    _refused([*export, "--triton", str(tmp_path / "w")], f"--triton {tmp_path / 'w'} holds the checkpoint's folder")
    assert _tree(tmp_path) == before


# the stub's own Python sees no site-packages; the model puts them on its path, as edgeseg's do
OTHER_MODEL = '''import sys
sys.path[:0] = {paths!r}


class TritonPythonModel:
    def execute(self, requests):
        import triton_python_backend_utils as pb_utils
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor.from_dlpack(
            "y", pb_utils.get_input_tensor_by_name(r, "x").to_dlpack())]) for r in requests]
'''


def test_force_keeps_the_repository_s_other_models_and_triton_serves_them_all(serve_bundle, tmp_path):
    """A Triton repository usually holds many models: ``--force`` replaces edgeseg's own (and an
    earlier bundle's -trt model it no longer writes) in place; another model, with files of its
    own beside config.pbtxt, is kept byte for byte and still loads."""
    from edgeseg.export.triton import python_paths
    from edgeseg.serve.triton_launch import TritonServer, pytriton_root

    repo = tmp_path / "repo"
    other = repo / "echo"
    (other / "1").mkdir(parents=True)
    (other / "config.pbtxt").write_text('name: "echo"\nbackend: "python"\nmax_batch_size: 0\n'
                                        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                                        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')
    (other / "1" / "model.py").write_text(OTHER_MODEL.format(paths=python_paths()))
    (other / "labels.txt").write_text("a\nb\n")
    (repo / "edgeseg-trt" / "1").mkdir(parents=True)
    (repo / "edgeseg-trt" / "config.pbtxt").write_text('name: "edgeseg-trt"\nplatform: "tensorrt_plan"\n')
    kept = _tree(other)
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--kind", "KIND_CPU", "--force"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["echo", "edgeseg", "edgeseg-pipeline"]
    assert _tree(other) == kept
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left beside it
    if pytriton_root() is None:
        pytest.skip("tritonserver comes with the nvidia-pytriton wheel: pip install nvidia-pytriton")
    http = pytest.importorskip("tritonclient.http")
    with TritonServer(repo, start_timeout=240, workdir=tmp_path / "server") as server:
        client = http.InferenceServerClient(url=server.url)
        states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        x = np.arange(5, dtype=np.float32)
        tensor = http.InferInput("x", [5], "FP32")
        tensor.set_data_from_numpy(x)
        echoed = client.infer("echo", [tensor]).as_numpy("y")
    assert states == {"echo": "READY", "edgeseg": "READY", "edgeseg-pipeline": "READY"}
    np.testing.assert_array_equal(echoed, x)


def test_the_refusal_names_the_models_overwrite_replaces(serve_bundle, tmp_path):
    """The error said `models named edgeseg* are replaced`; --overwrite keeps `edgeseg-old`, so the
    line names the three models it does replace."""
    repo = tmp_path / "repo"
    args = ["triton", str(serve_bundle), str(repo), "--max-batch", "0"]
    assert GuardedCliRunner().invoke(cli, args).exit_code == 0
    shutil.copytree(repo / "edgeseg", repo / "edgeseg-old")
    kept = _tree(repo / "edgeseg-old")
    _refused(args, "(its models edgeseg, edgeseg-pipeline and edgeseg-trt are replaced, the others kept)")
    result = GuardedCliRunner().invoke(cli, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert _tree(repo / "edgeseg-old") == kept
