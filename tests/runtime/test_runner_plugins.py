"""docs/runtime.md#shipping-a-backend-as-its-own-package, as written: the worked example's runner
file and the entry point the page shows, installed as a distribution of its own (a
``*.dist-info`` folder and the module on ``sys.path``), is a backend of ``edgeseg predict`` and
``inspect``; a broken plugin is left out with one warning line (naming its runner is refused in
one line), and ``EDGESEG_RUNNER_PLUGINS=0`` leaves plugins out."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = (ROOT / "docs" / "runtime.md").read_text().split("## Adding a backend\n", 1)[1].split("\n## ", 1)[0]
[RUNNER_FILE] = re.findall(r"^```python\n(.*?)^```$", SECTION, flags=re.S | re.M)
[PYPROJECT] = re.findall(r"^```toml\n(.*?)^```$", SECTION, flags=re.S | re.M)
[(NAME, VALUE)] = tomllib.loads(PYPROJECT)["project"]["entry-points"]["edgeseg.runners"].items()


def install(site: Path, entry_points: dict[str, str], modules: dict[str, str], dist: str = "edgeseg_onnx_reference",
            version: str = "0.3.1") -> Path:
    """A distribution as pip leaves one in site-packages: its modules and its dist-info folder."""
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[console_scripts]\nnot-ours = x:y\n\n[edgeseg.runners]\n{lines}")
    for module, text in modules.items():
        (site / f"{module}.py").write_text(text)
    return site


@pytest.fixture(scope="module")
def documented(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("site"), {NAME: VALUE}, {VALUE.partition(":")[0]: RUNNER_FILE})


def edgeseg(sites: list[Path], tmp_path: Path, *args, plugins: str = "1") -> subprocess.CompletedProcess:
    """``edgeseg ARGS`` in a child process with the ``sites`` first on its path."""
    environ = dict(os.environ, EDGESEG_CACHE_DIR=str(tmp_path / "cache"), EDGESEG_RUNNER_PLUGINS=plugins,
                   PYTHONPATH=os.pathsep.join([*map(str, sites), str(ROOT), *sys.path]))
    return subprocess.run([sys.executable, "-c", "from edgeseg.cli.main import cli; cli(prog_name='edgeseg')",
                           *map(str, args)], capture_output=True, text=True, env=environ, cwd=tmp_path)


@pytest.fixture
def ct(tmp_path) -> Path:
    from edgeseg.data.phantom import synth_phantom

    np.save(tmp_path / "ct.npy", synth_phantom("case_000", 3, shape=(4, 64, 64)).hu)
    return tmp_path / "ct.npy"


def test_an_installed_plugin_is_listed_named_by_predict_and_shown_by_inspect(documented, bundle_dir, ct, tmp_path,
                                                                             assert_one_line_error):
    pytest.importorskip("onnx.reference")
    named = edgeseg([documented], tmp_path, "predict", bundle_dir, ct, "--out", "ref.npy", "--backend", NAME)
    assert named.returncode == 0, named.stderr
    assert f"backend {NAME}:fp32" in named.stdout
    other = edgeseg([documented], tmp_path, "predict", bundle_dir, ct, "--out", "ort.npy", "--backend", "onnxruntime:fp32")
    assert other.returncode == 0, other.stderr
    # another engine's labels for the same graph
    np.testing.assert_array_equal(np.load(tmp_path / "ref.npy"), np.load(tmp_path / "ort.npy"))

    unknown = edgeseg([documented], tmp_path, "predict", bundle_dir, ct, "--out", "x.npy", "--backend", "acme")
    assert_one_line_error(unknown, f"unknown backend 'acme'; known: auto, {NAME}, ")

    shown = edgeseg([documented], tmp_path, "inspect", bundle_dir, "--json", "inspect.json")
    assert shown.returncode == 0, shown.stderr
    artifacts = {a["file"]: a for a in json.loads((tmp_path / "inspect.json").read_text())["artifacts"]}
    # exported before the plugin was installed: auto skips it until edgeseg gate scores it
    assert "not scored by the export gate" in artifacts["model.onnx"]["auto_skips"][NAME]
    assert NAME not in artifacts["model.int8.onnx"]["auto_skips"]  # it runs fp32 only

    versions = subprocess.run([sys.executable, "-c", "from edgeseg.runtime.runners import library_distributions\n"
                               "print(library_distributions())"], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(documented), str(ROOT), *sys.path])))
    assert "'edgeseg-onnx-reference'" in versions.stdout, versions.stderr  # its upgrade re-measures auto


def test_version_shows_each_plugin_s_own_package_and_version(documented, tmp_path):
    """edgeseg version listed the plugin runner's library (onnx) but not the package that
    installed the runner, whose code is half of what ran."""
    text = edgeseg([documented], tmp_path, "version")
    assert text.returncode == 0, text.stderr
    assert f"plugins     {NAME} (edgeseg-onnx-reference 0.3.1)" in text.stdout.splitlines()
    facts = edgeseg([documented], tmp_path, "version", "--json")
    assert facts.returncode == 0, facts.stderr
    assert json.loads(facts.stdout)["plugins"] == {NAME: {"distribution": "edgeseg-onnx-reference", "version": "0.3.1",
                                                          "error": None}}
    off = edgeseg([documented], tmp_path, "version", plugins="0")
    assert "plugins     none" in off.stdout.splitlines()



def test_version_reports_on_an_installation_whose_plugin_does_not_load(tmp_path):
    """edgeseg version, what a report of a broken installation starts from, stopped at the broken
    plugin (exit 2) before printing anything; it now lists it with its package and why it is left
    out, and the libraries."""
    site = install(tmp_path / "site", {"acme-npu": "acme_npu:AcmeNpuRunner"}, {"acme_npu": "import acme_npu_sdk\n"},
                   dist="acme_npu", version="1.0")
    text = edgeseg([site], tmp_path, "version")
    assert text.returncode == 0, text.stderr
    why = "runner plugin 'acme-npu' (acme_npu:AcmeNpuRunner, from acme_npu-1.0.dist-info) does not load: " \
          "ModuleNotFoundError: No module named 'acme_npu_sdk'"
    assert f"plugins     acme-npu (acme-npu 1.0; left out: {why})" in text.stdout.splitlines()
    assert any(line.startswith("libraries   onnxruntime ") for line in text.stdout.splitlines())
    facts = edgeseg([site], tmp_path, "version", "--json")
    assert facts.returncode == 0, facts.stderr
    assert json.loads(facts.stdout)["plugins"] == {"acme-npu": {"distribution": "acme-npu", "version": "1.0", "error": why}}


BROKEN = {
    "import error": ({"acme-npu": "acme_npu:AcmeNpuRunner"}, {"acme_npu": "import acme_npu_sdk\n"},
                     "runner plugin 'acme-npu' (acme_npu:AcmeNpuRunner, from acme_npu-1.0.dist-info) does not load: "
                     "ModuleNotFoundError: No module named 'acme_npu_sdk'"),
    "exits on import": ({"acme-npu": "acme_npu:AcmeNpuRunner"}, {"acme_npu": "raise SystemExit('no NPU driver')\n"},
                        "runner plugin 'acme-npu' (acme_npu:AcmeNpuRunner, from acme_npu-1.0.dist-info) does not load: "
                        "SystemExit: no NPU driver"),
    "raises a BaseException": ({"acme-npu": "acme_npu:AcmeNpuRunner"},
                               {"acme_npu": "class DriverGone(BaseException):\n    pass\nraise DriverGone()\n"},
                               "runner plugin 'acme-npu' (acme_npu:AcmeNpuRunner, from acme_npu-1.0.dist-info) does "
                               "not load: DriverGone"),
    "not a runner": ({"acme-npu": "acme_npu:run"}, {"acme_npu": "def run(batch):\n    return batch\n"},
                     "runner plugin 'acme-npu' (acme_npu:run, from acme_npu-1.0.dist-info) is not a subclass of "
                     "edgeseg's Runner: <function run"),
    "a built-in's name": ({"onnxruntime": "acme_npu:AcmeNpuRunner"}, {"acme_npu": "raise SystemExit('never run')\n"},
                          "runner plugin 'onnxruntime' (acme_npu:AcmeNpuRunner, from acme_npu-1.0.dist-info): "
                          "'onnxruntime' is a built-in runner, which a plugin cannot replace"),
    "another name": ({"acme-npu": "acme_npu:AcmeNpuRunner"},
                     {"acme_npu": "from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeRunner\n"
                                  "class AcmeNpuRunner(OnnxRuntimeRunner):\n    name = 'acme'\n"},
                     "names its runner 'acme': the entry point's name must be the runner's name"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_is_left_out_in_one_warning_line(case, bundle_dir, ct, tmp_path, assert_one_line_error):
    """A plugin that could not be used stopped every command but version, also one that never
    named its runner (--backend onnxruntime). Now it is left out with one warning line naming it
    and why, the command gives what it gives without plugins, and naming its runner is refused
    in one line with that reason (a plugin named like a built-in leaves the built-in as it is)."""
    entry_points, modules, message = BROKEN[case]
    site = install(tmp_path / "site", entry_points, modules, dist="acme_npu", version="1.0")
    done = edgeseg([site], tmp_path, "predict", bundle_dir, ct, "--out", "out.npy", "--backend", "onnxruntime")
    assert done.returncode == 0, done.stderr
    [warning] = [line for line in done.stderr.splitlines() if "runner plugin" in line]
    assert warning.startswith("edgeseg: warning: ") and message in warning
    assert warning.endswith("its runner is left out (EDGESEG_RUNNER_PLUGINS=0 runs without plugins)")
    plain = edgeseg([site], tmp_path, "predict", bundle_dir, ct, "--out", "plain.npy", "--backend", "onnxruntime",
                    plugins="0")
    assert plain.returncode == 0, plain.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), np.load(tmp_path / "plain.npy"))
    [name] = entry_points
    if name != "onnxruntime":
        named = edgeseg([site], tmp_path, "predict", bundle_dir, ct, "--out", "named.npy", "--backend", name)
        assert_one_line_error(named, message)
        assert f"edgeseg: error: backend {name!r} is unavailable: runner plugin {name!r}" in named.stderr
        assert not (tmp_path / "named.npy").exists()


def test_edgeseg_runner_plugins_0_leaves_plugins_out(documented, bundle_dir, ct, tmp_path, assert_one_line_error):
    site = install(tmp_path / "site", {"acme-npu": "acme_npu:AcmeNpuRunner"}, {"acme_npu": "import acme_npu_sdk\n"},
                   dist="acme_npu")
    on = edgeseg([documented, site], tmp_path, "predict", bundle_dir, ct, "--out", "out.npy", "--backend", "onnxruntime")
    assert on.returncode == 0 and "runner plugin 'acme-npu'" in on.stderr, on.stderr
    off = edgeseg([documented, site], tmp_path, "predict", bundle_dir, ct, "--out", "out.npy", "--backend", "onnxruntime",
                  plugins="0")
    assert off.returncode == 0, off.stderr  # the broken plugin is not even imported
    named = edgeseg([documented, site], tmp_path, "predict", bundle_dir, ct, "--out", "ref.npy", "--backend", NAME,
                    plugins="0")
    assert_one_line_error(named, f"unknown backend {NAME!r}")


def test_every_runner_imports_its_library_through_the_extra_it_declares():
    # one source of truth: a runner that called require() with an extra of its own could name
    # another install command than the `extra` its class declares (and `edgeseg gate` reports)
    calls = []
    for path in sorted((ROOT / "edgeseg" / "runtime" / "runners").glob("*.py")):
        if path.name == "base.py":  # where Runner.import_library calls it with the class's extra
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require":
                calls.append(f"{path.name}:{node.lineno}")
    assert not calls, f"runners import their library with Runner.import_library: {calls}"


def python(sites: list[Path], tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with the ``sites`` first on its path, logging to stderr."""
    environ = dict(os.environ, EDGESEG_CACHE_DIR=str(tmp_path / "cache"), EDGESEG_RUNNER_PLUGINS="1",
                   PYTHONPATH=os.pathsep.join([*map(str, sites), str(ROOT), *sys.path]))
    setup = "import logging, sys\nlogging.basicConfig(stream=sys.stderr, format='%(levelname)s %(message)s')\n"
    return subprocess.run([sys.executable, "-c", setup + code], capture_output=True, text=True, env=environ, cwd=tmp_path)


def test_naming_a_broken_plugin_first_is_refused_without_a_warning_too(tmp_path):
    """runner_class, asked first of all for a broken plugin's runner, decided whether to warn before
    the registry had loaded and so knew nothing broken: the refusal came with the warning line of the
    same problem. The refusal alone says it now."""
    [(entry_points, modules, message)] = [BROKEN["import error"]]
    site = install(tmp_path / "site", entry_points, modules, dist="acme_npu", version="1.0")
    done = python([site], tmp_path, "from edgeseg.errors import BackendError\n"
                                    "from edgeseg.runtime.runners import runner_class\n"
                                    "try:\n    runner_class('acme-npu')\nexcept BackendError as exc:\n    print(exc)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"backend 'acme-npu' is unavailable: {message}\n"
    assert "runner plugin" not in done.stderr, done.stderr


def test_threads_asking_for_the_registry_at_once_get_it_whole_with_one_warning(documented, tmp_path):
    """The registry's first load was unguarded: server threads asking at once each loaded it (each
    queueing the broken plugin's warning) and popped reasons another thread had taken (IndexError).
    Now one thread loads it; every thread gets the whole registry and the warning is logged once."""
    entry_points, modules, message = BROKEN["import error"]
    site = install(tmp_path / "site", entry_points, modules, dist="acme_npu", version="1.0")
    done = python([documented, site], tmp_path, """
import json, threading
sys.setswitchinterval(1e-6)  # threads change often, inside the registry's load as anywhere
from edgeseg.runtime.runners import runners
barrier, seen, errors = threading.Barrier(24), [], []
def ask():
    barrier.wait()
    try:
        seen.append(sorted(runners()))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=ask) for _ in range(24)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"seen": seen, "errors": errors, "whole": sorted(runners())}))
""")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["errors"] == []
    assert NAME in facts["whole"] and "acme-npu" not in facts["whole"]
    assert facts["seen"] == [facts["whole"]] * 24
    [warning] = [line for line in done.stderr.splitlines() if "runner plugin" in line]
    assert warning.startswith("WARNING ") and message in warning
