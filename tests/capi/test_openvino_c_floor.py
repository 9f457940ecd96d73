"""libedgeseg builds against the C library of OpenVINO 2026.0 (docs/c-api.md): it must not call
what only later releases declare. ``ov_core_compile_model_from_file_props`` and its
``ov_property_t`` array came with 2026.4; a build against 2026.0-2026.3 failed on them
(``unknown type name 'ov_property_t'``). Built and run by hand against the 2026.0.0 wheel
(docs/results.md); here the sources are held to it without that wheel."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# OpenVINO C API names newer than the 2026.0 floor (checked against the 2026.0.0 wheel's headers)
AFTER_FLOOR = ("ov_core_compile_model_from_file_props", "ov_core_compile_model_props", "ov_property_t",
               "ov_compiled_model_set_properties")


def _code(path: Path) -> str:
    """The C source without its comments (they may name what the code avoids)."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", path.read_text(), flags=re.S)


def test_libedgeseg_uses_no_openvino_c_name_newer_than_its_floor():
    sources = sorted((ROOT / "csrc").rglob("*.[ch]"))
    assert any(path.name == "openvino_model.c" for path in sources)
    found = [f"{path.relative_to(ROOT)}: {name}" for path in sources if "third_party" not in path.parts
             for name in AFTER_FLOOR if re.search(rf"\b{name}\b", _code(path))]
    assert found == []


def test_the_floor_is_stated_where_the_build_and_the_docs_say_it():
    assert "OpenVINO 2026.0 or later" in (ROOT / "setup.py").read_text()
    assert "**2026.0 or later**" in (ROOT / "docs" / "c-api.md").read_text()
