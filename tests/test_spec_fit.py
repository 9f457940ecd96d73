"""PreprocessSpec.fit: the pad geometry against an independent oracle, and old specs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeseg.errors import DataError, SpecError
from edgeseg.kernels import reference
from edgeseg.runtime.manifest import Manifest
from edgeseg.spec import PreprocessSpec

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.mark.parametrize("size", [(256, 256), (64, 96), (33, 17)])
def test_fit_box_equals_the_fraction_oracle_on_every_shape(size):
    spec = PreprocessSpec(size=size, fit="pad")
    for rows in range(1, 90, 2):
        for cols in list(range(1, 90, 3)) + [255, 456, 512, 600]:
            try:
                want = reference.fit_box(rows, cols, size, "pad")
            except DataError:
                with pytest.raises(DataError, match=f"{rows}x{cols}"):
                    spec.fit_box(rows, cols)
                continue
            assert spec.fit_box(rows, cols) == want, (rows, cols)


def test_fit_box_known_answers():
    spec = PreprocessSpec(size=(256, 256), fit="pad")
    assert spec.fit_box(153, 456) == (86, 256, 85, 0)  # 153 * 256 / 456 = 85.89
    assert spec.fit_box(457, 351) == (256, 197, 0, 29)  # 351 * 256 / 457 = 196.6
    assert spec.fit_box(1, 256) == (1, 256, 127, 0)  # exactly one row: still valid
    assert spec.fit_box(512, 2) == (256, 1, 0, 127)
    assert spec.fit_box(256, 256) == (256, 256, 0, 0)
    assert PreprocessSpec(size=(256, 256)).fit_box(153, 456) == (256, 256, 0, 0)
    assert PreprocessSpec(size=(64, 64), fit="pad").fit_box(3, 2) == (64, 43, 0, 10)  # 42.67 -> 43


def test_a_slice_too_thin_to_pad_is_refused_naming_its_shape():
    with pytest.raises(DataError) as err:
        PreprocessSpec(size=(256, 256), fit="pad").fit_box(1, 512)
    message = str(err.value)
    assert "1x512" in message and "256x256" in message and "\n" not in message


def test_fit_is_validated_and_round_trips():
    with pytest.raises(SpecError, match="fit must be one of"):
        PreprocessSpec(fit="crop")
    spec = PreprocessSpec(window=(-1000.0, 400.0), size=(128, 96), fit="pad")
    assert '"fit":"pad"' in spec.to_json()
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    assert spec.hash != PreprocessSpec(window=(-1000.0, 400.0), size=(128, 96)).hash


def test_a_spec_written_before_fit_keeps_its_json_and_hash():
    text = (LEGACY / "spec-0.1.0.json").read_text()
    spec = PreprocessSpec.from_json(text)
    assert spec.fit == "stretch"
    assert spec.to_json() == text
    assert spec.hash == "f6988820f06f804f"  # what edgeseg 0.1.0 computed for this spec
    assert "fit" not in PreprocessSpec().to_dict()


def test_a_manifest_written_before_fit_loads_as_stretch():
    data = json.loads((LEGACY / "manifest-0.1.0.json").read_text())
    manifest = Manifest.from_dict(data)
    assert manifest.spec.fit == "stretch"
    assert manifest.spec.hash == "2824735eab10ebe9"  # edgeseg 0.1.0's hash of this spec
    assert manifest.spec.fit_box(153, 456) == (64, 64, 0, 0)
    assert "fit" not in manifest.to_dict()["spec"]
