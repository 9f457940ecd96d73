"""edgeseg is a typed package (PEP 561, ``edgeseg/py.typed``): an application whose CI runs
``mypy --strict`` type-checks its calls to the public, torch-free API against edgeseg's own
annotations. Three runs of mypy from this environment:

- the public modules themselves, under pyproject.toml's ``[tool.mypy]`` (strict);
- ``typed_api/consumer.py``, the API used as docs/runtime.md shows it, with ``--strict`` from a
  folder outside the checkout, so that mypy finds edgeseg as an installed package (which it
  reads only with a ``py.typed`` marker): no error;
- ``typed_api/consumer_wrong.py``, mistakes mypy must report line by line with their codes:
  were the annotations to decay into Any (a lost marker, an unannotated return), they would
  type-check and this test would fail.

And what the annotations promise (the dtype of each array returned) is checked against what a
real bundle's Segmenter returns: an annotation that lied would pass mypy and mislead every
application that trusts it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

import edgeseg
from edgeseg.data.phantom import synth_phantom
from edgeseg.data.volume import Volume
from edgeseg.runtime import Segmenter
from edgeseg.runtime.readers import read_input

ROOT = Path(__file__).resolve().parents[1]
CONSUMERS = Path(__file__).resolve().parent / "typed_api"
# Where `import edgeseg` finds the package: site-packages for a wheel, the checkout for `pip install -e`.
INSTALLED = Path(edgeseg.__file__).resolve().parents[1]


def _mypy(args: list[str], cwd: Path, cache: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(INSTALLED), "MYPY_FORCE_COLOR": "0", **extra_env}
    env.pop("MYPYPATH", None)
    return subprocess.run([sys.executable, "-m", "mypy", "--no-color-output", "--no-error-summary",
                           "--cache-dir", str(cache), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_public_modules_pass_their_strict_configuration(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    result = _mypy(["--config-file", str(ROOT / "pyproject.toml")], ROOT, tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_an_application_type_checks_against_the_installed_package(tmp_path):
    """consumer.py passes ``--strict``; each line of consumer_wrong.py marked ``# error: CODE``
    is reported with that code, and nothing else is (one run: both files, one cache)."""
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    ok, wrong = CONSUMERS / "consumer.py", CONSUMERS / "consumer_wrong.py"
    # An application's own (empty) configuration: not the checkout's pyproject.toml, which mypy
    # finds walking up from a tmp_path inside the checkout, nor a user's configuration, such as
    # the one here that would silence two of the codes expected.
    config, work = tmp_path / "app.ini", tmp_path / "work"
    config.write_text("[mypy]\n")
    work.mkdir()
    (tmp_path / "xdg" / "mypy").mkdir(parents=True)
    (tmp_path / "xdg" / "mypy" / "config").write_text("[mypy]\ndisable_error_code = attr-defined, operator\n")
    result = _mypy(["--config-file", str(config), "--strict", "--show-error-codes", str(ok), str(wrong)],
                   work, tmp_path / "cache", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    errors = re.findall(r"^(.+?):(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M)
    assert [e for e in errors if Path(e[0]).name != wrong.name] == [], result.stdout + result.stderr
    reported = {(int(line), code) for _, line, code in errors}
    expected = {(number, mark.group(1)) for number, text in enumerate(wrong.read_text().splitlines(), 1)
                if (mark := re.search(r"# error: ([a-z-]+)$", text))}
    assert len(expected) >= 10
    assert reported == expected, result.stdout + result.stderr


def _annotated_dtype(function: object) -> type:
    """The scalar type of the ``NDArray[...]`` a function's return annotation names."""
    array = typing.get_type_hints(function)["return"]
    [dtype] = typing.get_args(typing.get_args(array)[1])
    return typing.cast(type, dtype)


def test_the_returned_arrays_have_the_annotated_dtypes(exported_bundle, tmp_path):
    volume = synth_phantom("case_007", 3, shape=(3, 70, 90))
    np.save(tmp_path / "slice.npy", volume.hu[1].astype(np.int16))
    with Segmenter.load(exported_bundle, backend="onnxruntime:fp32") as seg:
        model_input = np.zeros((2, 1, *seg.spec.size), np.float32)
        returned = {Segmenter.predict: seg.predict(volume.hu[1]), Segmenter.predict_volume: seg.predict_volume(volume),
                    Segmenter.infer: seg.infer(model_input), Segmenter.logits: seg.logits(model_input)}
    for method, array in returned.items():
        assert isinstance(array, np.ndarray) and array.dtype == _annotated_dtype(method), method.__name__
    read, refs = read_input(tmp_path / "slice.npy")
    assert isinstance(read, Volume) and refs is None
