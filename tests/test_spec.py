"""PreprocessSpec: validation, JSON round-trip, stable hash."""

import json
import subprocess
import sys

import pytest

from edgeseg.errors import SpecError
from edgeseg.spec import PreprocessSpec


def test_json_round_trip_preserves_every_field():
    spec = PreprocessSpec(window=(-160, 240), size=(192, 256), interpolation="area", mean=0.5, std=0.25, dtype="float16")
    back = PreprocessSpec.from_json(spec.to_json())
    assert back == spec
    assert back.window == (-160.0, 240.0) and back.size == (192, 256)
    assert hash(back) == hash(spec)


def test_hash_is_stable_across_processes_and_sensitive_to_each_field():
    spec = PreprocessSpec(window=(-100, 400), size=(256, 256))
    code = "from edgeseg.spec import PreprocessSpec; print(PreprocessSpec(window=(-100, 400), size=(256, 256)).hash)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == spec.hash and len(spec.hash) == 16
    variants = [
        PreprocessSpec(window=(-100, 401), size=(256, 256)),
        PreprocessSpec(window=(-100, 400), size=(256, 128)),
        PreprocessSpec(window=(-100, 400), size=(256, 256), interpolation="area"),
        PreprocessSpec(window=(-100, 400), size=(256, 256), std=2.0),
        PreprocessSpec(window=(-100, 400), size=(256, 256), dtype="float16"),
    ]
    assert len({v.hash for v in variants} | {spec.hash}) == len(variants) + 1


def test_canonical_json_is_sorted_and_compact():
    text = PreprocessSpec().to_json()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert " " not in text and data["schema"] == 1


def test_scale_offset_maps_window_ends_to_normalised_range():
    spec = PreprocessSpec(window=(-100, 300), mean=0.5, std=0.5)
    a, b = spec.scale_offset
    assert a * -100 + b == pytest.approx(-1.0)
    assert a * 300 + b == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"window": (400, -100)}, "low must be below high"),
        ({"window": (10, 10)}, "low must be below high"),
        ({"window": (0, float("inf"))}, "finite"),
        ({"size": (0, 256)}, "size"),
        ({"size": (256.5, 256)}, "whole numbers"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"dtype": "int8"}, "dtype"),
        ({"std": 0}, "std"),
        ({"orientation": "RAS"}, "orientation"),
        ({"window": (1, 2, 3)}, "pair"),
    ],
)
def test_invalid_specs_are_refused_with_the_offending_value(kwargs, fragment):
    with pytest.raises(SpecError, match=fragment):
        PreprocessSpec(**kwargs)


def test_unknown_fields_and_newer_schema_are_refused():
    data = PreprocessSpec().to_dict()
    with pytest.raises(SpecError, match="unknown"):
        PreprocessSpec.from_dict({**data, "gamma": 2})
    with pytest.raises(SpecError, match="schema 99"):
        PreprocessSpec.from_dict({**data, "schema": 99})
    with pytest.raises(SpecError, match="not valid JSON"):
        PreprocessSpec.from_json("{window: 1")


def test_size_bounds_are_inclusive_at_both_ends():
    assert PreprocessSpec(size=(1, 8192)).size == (1, 8192)
    for size in ((8193, 256), (256, 8193), (0, 1)):
        with pytest.raises(SpecError, match="between 1 and 8192"):
            PreprocessSpec(size=size)


@pytest.mark.parametrize("mean", [float("nan"), float("inf"), -float("inf")])
def test_a_mean_that_is_not_finite_is_refused(mean):
    with pytest.raises(SpecError, match="mean finite"):
        PreprocessSpec(mean=mean)


@pytest.mark.parametrize("schema", [0, -1])
def test_a_schema_older_than_any_written_is_refused(schema):
    with pytest.raises(SpecError, match=f"schema {schema} is not supported"):
        PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), "schema": schema})
