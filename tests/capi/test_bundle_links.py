"""libedgeseg refuses a bundle file that is a link resolving outside the bundle folder, as the
Python runtime does and in its words (ES_EBUNDLE / BundleError): the FP32 artifact or the
manifest moved elsewhere and linked back, its sha256 still matching. A link inside the folder, and
a bundle folder reached through a link, open."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeseg.errors import BundleError

ES_OK, ES_EBUNDLE = 0, 16


def _fp32_file(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return next(a["file"] for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")


def _linked_out(bundle: Path, tmp_path: Path, name: str | None) -> Path:
    """A copy of ``bundle`` whose ``name`` (default: the FP32 artifact) lives in another folder,
    a link to it left in its place."""
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    name = name or _fp32_file(copy)
    (tmp_path / "shared").mkdir()
    shutil.move(copy / name, tmp_path / "shared" / name)
    (copy / name).symlink_to(tmp_path / "shared" / name)
    return copy


@pytest.mark.parametrize("name", [None, "manifest.json"])
def test_both_refuse_a_file_linked_from_outside_in_the_same_words(name, bundle, tmp_path, run_checks):
    from edgeseg.runtime import Segmenter

    copy = _linked_out(bundle, tmp_path, name)
    with pytest.raises(BundleError) as caught:
        Segmenter.load(copy, backend="openvino:fp32")
    code, message, _ = run_checks("open", copy, "fp32")
    assert (code, message) == (ES_EBUNDLE, str(caught.value))
    shown = name or _fp32_file(copy)
    assert message == (f"bundle {copy}: {shown} resolves to {(tmp_path / 'shared' / shown).resolve()}, outside the "
                       "bundle folder (a bundle holds its own files, not links to others)")


def test_a_link_inside_the_folder_and_a_linked_folder_open(bundle, tmp_path, run_checks):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    name = _fp32_file(copy)
    (copy / "store").mkdir()
    shutil.move(copy / name, copy / "store" / name)
    (copy / name).symlink_to(Path("store") / name)
    (tmp_path / "current").symlink_to(copy, target_is_directory=True)
    for folder in (copy, tmp_path / "current"):
        code, message, _ = run_checks("open", folder, "fp32")
        assert (code, message) == (ES_OK, "opened")
