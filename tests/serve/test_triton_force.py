"""``--force`` replaces a Triton repository edgeseg wrote, never the bundle, its run or other folders."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from edgeseg.cli.main import cli

pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def _refused(args, message):
    result = CliRunner().invoke(cli, args)
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


def test_force_replaces_a_repository_but_not_a_folder_of_other_files(serve_bundle, tmp_path):
    repo = tmp_path / "repo"
    args = ["triton", str(serve_bundle), str(repo), "--max-batch", "0"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = CliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--force", "--name", "liver"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["liver", "liver-pipeline"]

    (repo / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "scan").mkdir()
    (tmp_path / "mine" / "scan" / "IM0001.dcm").write_bytes(b"dicom")
    before = _tree(tmp_path)
    _refused([*args[:2], str(repo), "--force"], f"REPO {repo} is not a Triton model repository: it holds notes.txt, not")
    _refused([*args[:2], str(tmp_path / "mine"), "--force"], "it holds scan, not a model folder")
    (tmp_path / "mine" / "scan" / "config.pbtxt").write_text("name: \"scan\"")
    _refused([*args[:2], str(tmp_path / "mine"), "--force"], "it holds scan/IM0001.dcm, not")
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
