"""Export profiles: the shipped TOML files load, flags override them, mistakes are named."""

import subprocess
import sys

import pytest

from edgeseg.errors import DataError
from edgeseg.export.profiles import ExportSettings, load_profile


@pytest.mark.parametrize("name,int8,fp16,trt,batch", [("cpu-int8", True, False, False, 8),
                                                      ("gpu-fp16", False, True, True, 16),
                                                      ("edge-int8", True, False, True, 4)])
def test_shipped_profiles(name, int8, fp16, trt, batch):
    settings = load_profile(name)
    assert (settings.int8, settings.fp16, settings.trt, settings.max_batch) == (int8, fp16, trt, batch)
    assert settings.max_dice_drop == {"fp32": 0.0, "fp16": 0.002, "int8": 0.01}


def test_flags_override_the_profile():
    settings = load_profile("edge-int8").override(max_batch=2, calib_method="minmax", trt=False,
                                                  max_dice_drop={"int8": 0.02, "fp16": None})
    assert (settings.max_batch, settings.calib_method, settings.trt) == (2, "minmax", False)
    assert settings.max_dice_drop["int8"] == 0.02 and settings.max_dice_drop["fp16"] == 0.002
    assert settings.int8  # untouched profile values stay


def test_bad_profiles_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('formats = ["onnx"]\nbatch = 4\n')
    with pytest.raises(DataError, match=r"unknown key\(s\) \['batch'\]"):
        load_profile(str(bad))
    with pytest.raises(DataError, match="not found"):
        load_profile("no-such-target")
    with pytest.raises(DataError, match="add 'onnx'"):
        ExportSettings(formats=("torchscript",), int8=True)


@pytest.mark.parametrize("line, message", [
    # a TOML boolean is not a number (Python's bool is an int): each was read as 1 or 1.0
    ("calib_slices = true", "calib_slices must be an integer, got True"),
    ("max_batch = true", "max_batch must be an integer, got True"),
    ("verify_slices = true", "verify_slices must be an integer, got True"),
    ("structure_px = 1.5", "structure_px must be an integer, got 1.5"),
    ("int8 = 1", "int8 must be true or false, got 1"),
    ('formats = "onnx"', "formats must be a list, got 'onnx'"),
    ("formats = [1]", "formats must list format names, got [1]"),
    ("[max_dice_drop]\nint8 = true", "max_dice_drop.int8 must be a number, got True"),
    # a value out of range names the file as well
    ("calib_slices = 8", "calib-slices 8 is below the 16 slices"),
])
def test_a_profile_value_of_the_wrong_type_is_named_with_its_file(tmp_path, line, message):
    path = tmp_path / "typed.toml"
    path.write_text(f"int8 = true\n{line}\n" if not line.startswith("int8") else f"{line}\n")
    with pytest.raises(DataError) as caught:
        load_profile(str(path))
    assert str(caught.value).startswith(f"export profile {path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_profile_takes_choices_in_any_case_and_keeps_them_as_the_command_line_does(tmp_path):
    """calib_method = "Entropy" was refused while --calib-method Entropy exports."""
    path = tmp_path / "loud.toml"
    path.write_text('formats = ["ONNX", "TorchScript"]\nint8 = true\ncalib_method = "Entropy"\nfp16_check = "FULL"\n'
                    'gate_metric = "Truth"\nint8_scheme = "CPU"\n')
    settings = load_profile(str(path))
    assert settings.formats == ("onnx", "torchscript")
    assert (settings.calib_method, settings.fp16_check, settings.gate_metric, settings.int8_scheme) == (
        "entropy", "full", "truth", "cpu")
    assert ExportSettings(formats=("Onnx",)).formats == ("onnx",)  # --formats ONNX on the command line
    with pytest.raises(DataError, match=r"calibration method must be one of \['minmax', 'entropy', 'percentile'\], "
                                        r"got 'kl'"):
        ExportSettings(calib_method="kl")


def test_int8_scheme_follows_the_target_and_refuses_cpu_graphs_for_tensorrt():
    assert ExportSettings(int8=True).int8_activations == "cpu"
    assert load_profile("cpu-int8").int8_activations == "cpu"
    assert load_profile("edge-int8").int8_activations == "tensorrt"  # trt = true: TensorRT's signed form
    assert load_profile("edge-int8").override(trt=False).int8_activations == "cpu"
    assert ExportSettings(int8=True, int8_scheme="tensorrt").int8_activations == "tensorrt"
    with pytest.raises(DataError, match="TensorRT INT8 engine needs signed activations"):
        ExportSettings(int8=True, trt=True, int8_scheme="cpu")
    with pytest.raises(DataError, match=r"INT8 scheme must be one of \['cpu', 'tensorrt'\]"):
        ExportSettings(int8=True, int8_scheme="u8")


def test_max_batch_beyond_what_anything_serves_is_refused(tmp_path, assert_one_line_error):
    """--max-batch 100000000 exported a bundle whose Triton config no server took."""
    assert ExportSettings(max_batch=1024).max_batch == 1024
    with pytest.raises(DataError, match="max-batch must be at most 1024 .as for edgeseg serve., got 1025"):
        ExportSettings(max_batch=1025)
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", tmp_path / "best.pt", "--out", tmp_path / "b",
                           "--max-batch", "100000000"], capture_output=True, text=True)
    assert_one_line_error(proc, "max-batch must be at most 1024 (as for edgeseg serve), got 100000000")
    assert not (tmp_path / "b").exists()


def test_an_empty_profile_name_is_refused(tmp_path, assert_one_line_error):
    """--profile "" exported with the defaults, as if no profile had been named."""
    with pytest.raises(DataError, match="export profile name is empty"):
        load_profile("  ")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", tmp_path / "best.pt", "--out", tmp_path / "b",
                           "--profile", ""], capture_output=True, text=True)
    assert_one_line_error(proc, "export profile name is empty")
    assert not (tmp_path / "b").exists()


def test_every_profile_and_sweep_key_has_the_type_export_settings_declares():
    """A setting added to ExportSettings without a type in PROFILE_TYPES would end a profile that
    sets it in a KeyError traceback, not a one-line error (max_dice_drop is a table, checked apart);
    the sweep file's [export] stated the same types a second time. Both follow ExportSettings now:
    each default, written as TOML and read back, has its key's type (int8_scheme's None is left out
    of a file), and a sweep's [export] key takes the same types as the profile's."""
    import json
    import tomllib
    from dataclasses import fields

    from edgeseg.export.profiles import PROFILE_TYPES
    from edgeseg.file_values import has_type
    from edgeseg.sweep.config import EXPORT_KEYS

    settings = {f.name for f in fields(ExportSettings)} - {"max_dice_drop"}
    assert set(PROFILE_TYPES) == settings
    for name in settings:
        value = getattr(ExportSettings(int8_scheme="cpu"), name)
        read = tomllib.loads(f"value = {json.dumps(list(value) if isinstance(value, tuple) else value)}")["value"]
        assert has_type(read, PROFILE_TYPES[name]), name
        assert not has_type(read, tuple({bool, int, str, list} - set(PROFILE_TYPES[name]))), name
    shared = set(EXPORT_KEYS) & settings
    assert shared == {"calib_method", "calib_slices", "verify_slices", "max_batch", "gate_metric", "int8_scheme",
                      "structure_px"}
    assert {key: EXPORT_KEYS[key] for key in shared} == {key: PROFILE_TYPES[key] for key in shared}
