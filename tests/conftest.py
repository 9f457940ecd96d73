"""Shared test set-up: nothing a test run writes may land in the working tree (the one
exception is pytest's own cache folder, which keeps the exported test bundles, abdomen and chest,
between runs)."""

import hashlib
import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
from pathlib import Path

import pytest

from tests.guarded_cli import keep_test_process_stderr
from tests.shared_builds import build_once

# Folders this process made for the run (not those a parent, e.g. the xdist controller, made and
# passed down in the environment); removed when the run ends.
_RUN_FOLDERS: list[str] = []


def _run_folder(variable: str, prefix: str) -> None:
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
        _RUN_FOLDERS.append(os.environ[variable])


# hypothesis keeps an example database and a constants cache in ./.hypothesis by default.
_run_folder("HYPOTHESIS_STORAGE_DIRECTORY", "edgeseg-hypothesis-")
# The backend probe and the compiled-model caches go to ~/.cache/edgeseg by default; a test run
# keeps its own (tests that check the caches point EDGESEG_CACHE_DIR at their tmp_path).
_run_folder("EDGESEG_CACHE_DIR", "edgeseg-cache-")


# Files whose few tests each train, sweep or build for tens of seconds, longest first. Under
# `make test` (xdist --dist loadfile --no-loadscope-reorder) a worker takes the next file in
# collection order, so these are collected first: xdist's default order, by number of tests per
# file, handed them out last, and one worker went on with them alone after the other had finished.
LONG_FILES = ("tests/sweep/test_sweep.py", "tests/sweep/test_redo.py", "tests/cli/test_cli.py",
              "tests/cli/test_sigterm.py", "tests/capi/test_wheel.py", "tests/train/test_bench_train_scale.py",
              "tests/sweep/test_status.py", "tests/docs/test_quickstart.py", "tests/runtime/test_adding_a_backend.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(LONG_FILES)))  # stable: files keep their order


def pytest_configure(config):
    keep_test_process_stderr()  # pytest's capture is off here: the stderr a hung CLI test's last words go to


def pytest_unconfigure(config):
    for folder in _RUN_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def check_one_line_error(proc, fragment: str) -> None:
    """A finished `edgeseg` process failed with exit 2 and exactly one stderr line
    `edgeseg: error: ...` containing ``fragment``, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:"), proc.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture
def assert_one_line_error():
    """The one-line error check for CLI tests (see check_one_line_error)."""
    return check_one_line_error


def blocker(absent: tuple[str, ...]) -> str:
    """A sitecustomize that makes the top-level packages ``absent`` fail to import."""
    return textwrap.dedent(f"""
        import sys

        class _Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {absent!r}:
                    raise ImportError(name + " is not installed here")

        sys.meta_path.insert(0, _Absent())
    """)


def run_without(args: list[str], tmp_path, absent: tuple[str, ...] = ("torch",)) -> subprocess.CompletedProcess:
    """Run Python with ``args`` in a process where the ``absent`` packages cannot be imported."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(blocker(absent))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]),
               EDGESEG_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env)


def run_in_terminal(args: list, tmp_path, interrupt_after: str | None = None) -> tuple[str, int]:
    """Run ``edgeseg ARGS`` with stdin, stdout and stderr on a pseudo-terminal (its controlling
    terminal, 100 columns as a window has); type Ctrl-C once ``interrupt_after`` has been written.
    Returns everything written and the exit status (negative: the signal that ended it).

    Started by subprocess (vfork and exec, no Python code in this process's child), not pty.fork:
    the test process may hold library threads, and whatever a library does at fork stays out of
    it. A fresh interpreter takes the terminal as its controlling one and Ctrl-C as at an
    interactive shell (a test run started in the background by a non-interactive shell has SIGINT
    ignored, and an ignored signal stays ignored across exec), then becomes edgeseg."""
    env = dict(os.environ)
    env.pop("EDGESEG_PROGRESS_INTERVAL", None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    boot = ("import fcntl, os, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.executable, [sys.executable, '-m', 'edgeseg', *sys.argv[1:]])")
    proc = subprocess.Popen([sys.executable, "-c", boot, *map(str, args)], stdin=slave, stdout=slave, stderr=slave,
                            cwd=tmp_path, env=env, start_new_session=True)
    os.close(slave)
    seen, sent = b"", None
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 600)
            assert ready, f"no output for 600 s: {seen[-2000:]!r}"
            if sent is not None and time.monotonic() - sent > 120:  # the command goes on: it never took the Ctrl-C
                raise AssertionError(f"still running 120 s after Ctrl-C: {seen[-2000:]!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if interrupt_after and sent is None and interrupt_after.encode() in seen:
                os.write(master, b"\x03")
                sent = time.monotonic()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(master)
    return seen.decode(errors="replace"), proc.wait()


@pytest.fixture
def in_terminal():
    """``run_in_terminal``: a command whose stderr is a terminal, as at an interactive shell."""
    return run_in_terminal


@pytest.fixture
def python_without():
    """``run_without``: run Python where the named packages (default torch) cannot be imported."""
    return run_without


# The test bundle: a tiny U-Net trained on phantom CT (so its masks are real) and exported by
# edgeseg.export like any user's model. It is rebuilt when anything it is made from changes.
# Six augmented cases: the runtime tests segment phantoms of other sizes and aspect ratios.
# The runtime, serving and C API tests need its INT8 graph to pass the gate on every CPU runner.
# The INT8 arithmetic of the default (cpu) scheme is the same on every CPU, but the trained
# weights are not (torch's float kernels differ with the instruction set), and this tiny model's
# INT8 drop moves with them: 0.0015 to 0.0109 over seeds and sources here, against the default
# limit of 0.01. Its INT8 limit is 0.05, so the gate's verdict on it does not turn on the CPU
# (tests/export checks the gate itself at the default limits).
# Everything that changes float rounding is named, not left to the process: one torch thread (the
# same weights whatever OMP_NUM_THREADS, the cores or an earlier test set; at 2 threads the run
# is another, whose best epoch and masks differ), float32, channels-last, no loader workers.
BUNDLE_TRAINING = dict(data="phantom:cases=6,size=64,slices=16", size=64, base=8, depth=2, epochs=20, batch_size=8,
                       lr=5e-3, augment=True, seed=1, threads=1, amp="off", memory_format="channels-last", workers=0)
BUNDLE_CALIBRATION = "phantom:cases=3,size=64,slices=16,seed=5"
BUNDLE_EXPORT = dict(int8=True, calib_slices=32, max_batch=8, max_dice_drop={"int8": 0.05})
_ROOT = Path(__file__).resolve().parents[1]
# What the bundle is made from: the code of every layer up to export, and the C kernels.
_BUNDLE_SOURCES = ("edgeseg/*.py", "edgeseg/data/**/*.py", "edgeseg/kernels/**/*.py", "edgeseg/kernels/*.pyx",
                   "edgeseg/models/**/*.py", "edgeseg/runtime/**/*.py", "edgeseg/train/**/*.py",
                   "edgeseg/export/**/*.py", "edgeseg/metrics/*.py", "edgeseg/report/*.py", "csrc/*.c", "csrc/*.h")


def bundle_key() -> str:
    """sha256 over the test bundle's settings, the versions of the libraries that train and
    export it, and every source file it depends on."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    versions = [version(name) for name in ("torch", "onnx", "onnxruntime", "openvino")]
    digest = hashlib.sha256(repr((BUNDLE_TRAINING, BUNDLE_CALIBRATION, BUNDLE_EXPORT, versions)).encode())
    files = sorted({path for pattern in _BUNDLE_SOURCES for path in _ROOT.glob(pattern) if path.is_file()})
    for path in files:
        digest.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:24]


def _export_test_bundle(out: Path) -> None:
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    train(TrainConfig(out=str(out / "train"), **BUNDLE_TRAINING), progress=False)
    settings = ExportSettings(**BUNDLE_EXPORT)
    export_bundle(out / "train" / "best.pt", out / "bundle", settings, calib=BUNDLE_CALIBRATION,
                  cache_dir=out / "cache", progress=False, echo=lambda text: None)


@pytest.fixture(scope="session")
def exported_bundle(request) -> Path:
    """A bundle made by ``edgeseg.export`` (TorchScript, ONNX FP32 and INT8; max batch 8),
    cached in pytest's cache folder under the sha256 of its sources; read-only by convention
    (tests that damage a bundle copy it first)."""
    pytest.importorskip("torch")
    from filelock import FileLock

    root = Path(request.config.cache.mkdir("edgeseg-test-bundle"))
    key = bundle_key()
    bundle = root / key / "bundle"
    # Parallel test workers share the cache: one builds, the others wait for it and reuse it.
    with FileLock(str(root.parent / "edgeseg-test-bundle.lock")):
        if not (bundle / "manifest.json").is_file():
            for stale in root.iterdir():
                shutil.rmtree(stale, ignore_errors=True)
            staging = root / f"{key}.partial"
            _export_test_bundle(staging)
            os.replace(staging, root / key)
    return bundle


# The chest bundle: a small U-Net trained on the chest phantom's two lesion classes with the
# infection recipe's loss (Dice + class-weighted cross-entropy), long enough to learn both, and
# exported (ONNX FP32). Cached like the test bundle, under the sha256 of the same sources; one
# torch thread like it (tiny convolutions: one thread also beats contending for shared cores).
CHEST_TRAINING = dict(data="chest-phantom:cases=8,size=96,slices=16,seed=0", size=96, base=8, depth=3, epochs=20,
                      batch_size=8, lr=5e-3, augment=False, window=(-1000.0, 200.0),
                      labels={"ggo": [1], "consolidation": [2]}, loss="dice-ce", class_weights=[0.5, 1.0, 2.0], seed=0,
                      threads=1, amp="off", memory_format="channels-last", workers=0)
CHEST_VERIFY = "chest-phantom:cases=2,size=96,slices=16,seed=7"


def _export_chest_bundle(out: Path) -> None:
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    train(TrainConfig(out=str(out / "train"), **CHEST_TRAINING), progress=False)
    export_bundle(out / "train" / "best.pt", out / "bundle", ExportSettings(formats=("onnx",), max_batch=4,
                                                                            verify_slices=16),
                  verify_data=CHEST_VERIFY, progress=False, echo=lambda text: None)


@pytest.fixture(scope="session")
def chest_bundle_run(request) -> Path:
    """A folder with ``train/`` (the chest-phantom run: best.pt, metrics.json; labels ggo=1,
    consolidation=2, window -1000..200 HU, 96 x 96 input) and ``bundle/`` (its ONNX FP32 export),
    cached in pytest's cache folder under the sha256 of its sources; read-only by convention."""
    pytest.importorskip("torch")
    from filelock import FileLock

    root = Path(request.config.cache.mkdir("edgeseg-chest-bundle"))
    key = hashlib.sha256((bundle_key() + repr((CHEST_TRAINING, CHEST_VERIFY))).encode()).hexdigest()[:24]
    with FileLock(str(root.parent / "edgeseg-chest-bundle.lock")):
        if not (root / key / "bundle" / "manifest.json").is_file():
            for stale in root.iterdir():
                shutil.rmtree(stale, ignore_errors=True)
            staging = root / f"{key}.partial"
            _export_chest_bundle(staging)
            os.replace(staging, root / key)
    return root / key


@pytest.fixture(scope="session")
def trained_checkpoint(exported_bundle) -> Path:
    """The checkpoint the test bundle was exported from (``edgeseg train`` of the tiny U-Net,
    validation split and training data recorded in it); read-only like the bundle."""
    return exported_bundle.parent / "train" / "best.pt"


@pytest.fixture
def one_torch_thread():
    """One torch thread for a test of tiny models (faster than contending for shared cores),
    restored afterwards so later tests, and the test bundle they may build, see the default."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pad_bundle(tmp_path_factory) -> Path:
    """A bundle whose PreprocessSpec has ``fit="pad"``: a tiny U-Net (64x64, base 8) trained a few
    epochs on phantom CT with ``fit="pad"`` and exported (ONNX FP32, gate on phantom slices). Its
    masks are rough but not flat, which is what the tests of the padded geometry need: they
    compare paths, not quality. Built once per test run (``tests.shared_builds``): the runtime,
    serving and C API tests that use it go to different workers."""
    pytest.importorskip("torch")

    def build(root: Path) -> None:
        from edgeseg.export.pipeline import export_bundle
        from edgeseg.export.profiles import ExportSettings
        from edgeseg.train.config import TrainConfig
        from edgeseg.train.loop import train

        train(TrainConfig(out=str(root / "train"), data="phantom:cases=4,size=64,slices=8", size=64, base=8, depth=2,
                          epochs=6, batch_size=8, lr=5e-3, seed=0, fit="pad"), progress=False)
        export_bundle(root / "train" / "best.pt", root / "bundle", ExportSettings(formats=("onnx",), max_batch=4,
                                                                                  verify_slices=8),
                      verify_data="phantom:cases=2,size=64,slices=4", progress=False, echo=lambda text: None)

    return build_once(tmp_path_factory, "pad-bundle", build) / "bundle"


@pytest.fixture(scope="session", autouse=True)
def in_process_training_defaults():
    """Two defaults of training inside the test processes (session-wide, so the session's bundle
    fixtures see them too; a test that names a value keeps it, and trainings in child processes
    are untouched):

    - no DataLoader worker processes: twice a test worker that had trained in-process with a
      loader worker and then run engines and child processes died ("node down"), in different
      tests; the loader workers are tested in child processes alone (tests/train/test_streaming.py,
      sweeps, torchrun, the CLI: the one test that still started them in a test worker was where
      the last such death came);
    - channels-last under --memory-format auto without a probe: a test model's pass takes
      milliseconds, and on a loaded machine a slow one could make the probe choose by noise, so
      two runs a test compares could train in different layouts. The probe is tested with
      explicit thresholds (tests/train/test_memory_format.py);
    - float32 under --amp auto on every CPU: auto picks bf16 autocast where the CPU has AMX, and the
      tiny test models trained that way differ from those of other CPUs (a fixture model found no
      foreground on a small phantom there); bf16 itself is tested with --amp bf16.
    """
    try:
        from edgeseg.train import loop, memory_format, precision
    except ImportError:  # torch-free test environments
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "default_workers", lambda: 0)
        patch.setattr(memory_format, "MIN_PROBED_STEP_S", float("inf"))
        patch.setattr(precision, "cpu_has_bf16", lambda cpuinfo=None: False)
        yield


def _conv_graph(classes: int, stride: int, batch, size: int) -> bytes:
    """An ONNX graph image [batch, 1, size, size] -> 1x1 convolution -> logits
    [batch, classes, size/stride, size/stride] (``batch`` a number, or a name for a dynamic one)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    out = size // stride
    weights = helper.make_tensor("w", TensorProto.FLOAT, [classes, 1, 1, 1], list(np.linspace(-1, 1, classes)))
    node = helper.make_node("Conv", ["image", "w"], ["logits"], strides=[stride, stride])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes, out, out])],
                              initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def swap_graph():
    """``swap_graph(bundle, classes, stride, batch, precision)``: put a 1x1-convolution ONNX graph
    that gives ``classes`` channels at 1/``stride`` of the spec size (batch fixed when ``batch`` is
    a number) in place of the bundle's ONNX graph of ``precision``, with its hash and size
    recorded, keeping only that artifact: a bundle whose graph does not do what its manifest
    says, and nothing else wrong."""
    import json

    def swap(bundle, classes: int, stride: int = 1, batch="N", precision: str = "fp32") -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == precision)
        graph = _conv_graph(classes, stride, batch, manifest["spec"]["size"][0])
        (bundle / entry["file"]).write_bytes(graph)
        entry.update(sha256=hashlib.sha256(graph).hexdigest(), bytes=len(graph))
        manifest["artifacts"] = [entry]
        (bundle / "manifest.json").write_text(json.dumps(manifest))

    return swap
