"""Which runner runs a bundle: an explicit ``NAME[:PRECISION]``, or ``auto``.

``auto`` measures every runner this machine can load on every artifact of the bundle (a short
probe at batch 1, after warm-up) and keeps the fastest. The result is cached per machine in
``$EDGESEG_CACHE_DIR`` (default ``~/.cache/edgeseg``), keyed by the manifest's sha256, the host
and the installed backend versions, so later loads pick at once. ``EDGESEG_BACKEND_PROBE=0``
skips measuring and takes the first loadable candidate in the runners' ``preference`` order. A runner
that cannot load here (a TensorRT engine built for another GPU) is logged as a warning and
the next candidate is tried. A runner the export gate failed on an artifact (the manifest's
``excluded``) is never picked by ``auto`` for it; naming it explicitly still loads it, with a
warning. On an x86 CPU without VNNI, ``auto`` also skips CPU runners on an INT8 graph of the
``tensorrt`` scheme (signed activations; every bundle from before the INT8 schemes): their
u8 x s8 pair sums saturate there, and the gate that passed them ran on the export machine
(see ``edgeseg.export.int8``). What each runner loads, needs and prefers comes from its class (see
``edgeseg.runtime.runners``); ``http://HOST:PORT/models/NAME`` selects the remote runner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import BackendError, EdgesegError
from edgeseg.runtime.manifest import MANIFEST_NAME, ArtifactEntry, Manifest
from edgeseg.runtime.runners import Runner, runner_class, runners, runners_for
from edgeseg.runtime.runners.remote import DEFAULT_TIMEOUT_S, RemoteRunner, check_remote_timeout, is_remote
from edgeseg.runtime.runners.base import check_threads

log = logging.getLogger(__name__)

PROBE_WARMUP, PROBE_RUNS = 2, 5
CACHE_NAME = "backend-probe.json"
KEY_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "torch")


@dataclass(frozen=True)
class Candidate:
    """One way to run a bundle: a runner name and the artifact it loads."""

    runner: str
    entry: ArtifactEntry

    @property
    def label(self) -> str:
        """``runner:precision``, the form ``--backend`` accepts."""
        return f"{self.runner}:{self.entry.precision}"


def canonical_backend(text: str) -> str:
    """``text`` stripped and, unless it is a server address, in lower case: runner names,
    precisions and ``auto``/``all`` are matched without regard to case (``OpenVINO:INT8`` is
    ``openvino:int8``), everywhere a backend is named; a URL keeps its case (a model name is
    case-sensitive on the server)."""
    text = text.strip()
    return text if is_remote(text) else text.lower()


def parse_backend(text: str) -> tuple[str, str | None]:
    """``"openvino:int8"`` -> ("openvino", "int8"); ``"onnxruntime"`` -> ("onnxruntime", None);
    any case (``"OpenVINO"``) is the same name."""
    name, _, precision = canonical_backend(text).partition(":")
    loadable = sorted(name for name, cls in runners().items() if cls.format is not None)
    if name not in loadable:
        raise BackendError(f"unknown backend {name!r}; known: auto, {', '.join(loadable)}, http://HOST:PORT/models/NAME")
    return name, precision or None


X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
# Instructions that add u8 x s8 products in 32 bits (no 16-bit saturation).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> frozenset[str] | None:
    """The first CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm);
    None where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
        return frozenset()
    except OSError:
        return None


def int8_saturation_risk(entry: ArtifactEntry) -> str | None:
    """Why a CPU runner on ``entry`` would compute wrong sums on this machine, or None: an ONNX
    INT8 graph not of the ``cpu`` scheme, on an x86 CPU whose flags show no VNNI. Unknown flags
    (no /proc/cpuinfo) are not a risk."""
    if entry.format != "onnx" or entry.precision != "int8" or entry.extra.get("int8_scheme") == "cpu":
        return None
    if platform.machine().lower() not in X86_MACHINES:
        return None
    flags = cpu_flags()
    if not flags or flags & VNNI_FLAGS:
        return None
    scheme = entry.extra.get("int8_scheme", "tensorrt, recorded before schemes")
    return (f"INT8 graph of the {scheme} scheme: its signed activations saturate u8 x s8 sums on this CPU "
            f"(no VNNI); re-export with --int8-scheme cpu")


def skip_reasons(entry: ArtifactEntry, runner: str) -> str | None:
    """Why ``auto`` never picks ``runner`` on ``entry`` here: the export gate's verdict, a runner
    that runs only when named, or the INT8 saturation risk of this CPU for a CPU runner; None
    when it may."""
    if runner in entry.excluded:
        return entry.excluded[runner]
    if runner_class(runner).named_only:
        return runner_class(runner).named_only
    if runner_class(runner).device_kind == "cpu":
        return int8_saturation_risk(entry)
    return None


def candidates(manifest: Manifest, installed_only: bool = True, gated_only: bool = False) -> list[Candidate]:
    """Every (runner, artifact) pair of the bundle, in the runners' preference order: only those
    whose library is installed (``installed_only``), and not those ``auto`` must skip here
    (``gated_only``: the export gate excluded them, or the CPU saturates on their INT8 graph)."""
    found = [Candidate(cls.name, entry) for entry in manifest.artifacts for cls in runners_for(entry.format)
             if (not installed_only or cls.available()) and not (gated_only and skip_reasons(entry, cls.name))]
    last = 1 + max((rank for cls in runners().values() for rank in cls.preference.values()), default=0)
    return sorted(found, key=lambda c: runner_class(c.runner).preference.get(c.entry.precision, last))


def instantiate(bundle: Path, manifest: Manifest, candidate: Candidate, threads: int) -> Runner:
    """Load the candidate's runner on its artifact."""
    cls = runner_class(candidate.runner)
    return cls(bundle / candidate.entry.file, candidate.entry, manifest.inputs[0], manifest.outputs[0],
               manifest.max_batch, threads=threads)


def select_runner(bundle: Path, manifest: Manifest, backend: str | list[str] = "auto", threads: int = 0,
                  timeout: float | None = None) -> Runner:
    """The runner for ``backend``: ``"auto"``, ``"NAME"``, ``"NAME:PRECISION"``, or a list of
    those tried in order, as a Python list or a comma list (``"tensorrt,openvino:int8"``, as
    ``--backend`` takes it). An explicit name without precision prefers fp32, the reference.
    ``timeout``: seconds a remote backend waits for each answer (default 60); a local backend
    takes none (BackendError)."""
    wanted = backend_list(backend)
    check_threads(threads)  # before any runner is tried: auto would take the refusal for a failed load
    remote = len(wanted) == 1 and is_remote(wanted[0])
    if timeout is not None:
        check_remote_timeout(timeout, backend if remote else None)
    if remote:
        return RemoteRunner(wanted[0], manifest.inputs[0], manifest.outputs[0], manifest.max_batch, threads,
                            timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
                            artifacts=tuple(a.sha256 for a in manifest.artifacts), labels=manifest.labels)
    available = candidates(manifest, gated_only=True)
    if wanted == ["auto"]:
        return _auto(bundle, manifest, available, threads)
    order: list[Candidate] = []
    have = ", ".join(c.label for c in candidates(manifest, installed_only=False))
    absent = []
    for text in wanted:
        name, precision = parse_backend(text)  # an unknown name is refused, in a list too: a typo
        matches = [c for c in candidates(manifest, installed_only=False) if c.runner == name
                   and (precision is None or c.entry.precision == precision)]
        if not matches:
            # In a fallback list a bundle exported without that artifact (no TensorRT engine on a
            # CPU-only export) passes on to the next name, as a runner that cannot load does.
            absent.append(text)
            if len(wanted) > 1:
                log.warning("backend %s has no artifact in this bundle; trying the next one", text)
            continue
        matches.sort(key=lambda c: ("fp32", "int8", "fp16").index(c.entry.precision))
        for match in matches:
            if match.runner in match.entry.excluded:
                log.warning("backend %s failed the export gate on %s (%s); auto never picks it",
                            match.label, match.entry.file, match.entry.excluded[match.runner])
            elif skip_reasons(match.entry, match.runner) and not runner_class(match.runner).named_only:
                log.warning("backend %s on %s: %s; auto never picks it here", match.label, match.entry.file,
                            skip_reasons(match.entry, match.runner))
        order.extend(matches)
    if not order:
        names = "backend " + " and ".join(repr(text) for text in absent)
        raise BackendError(f"{names} {'has' if len(absent) == 1 else 'have'} no artifact in this bundle; it offers {have}")
    return _first_loadable(bundle, manifest, order, threads, strict=len(wanted) == 1)


def backend_list(backend: str | list[str]) -> list[str]:
    """``backend`` as the list of names to try: a comma list split, each name in its canonical form
    (:func:`canonical_backend`: stripped, runner names in lower case); BackendError
    for an empty name, and for ``auto`` or a server address among several (each is a whole choice)."""
    if isinstance(backend, str):
        wanted = [backend] if is_remote(backend) else backend.split(",")
    elif isinstance(backend, (list, tuple)) and all(isinstance(text, str) for text in backend):
        wanted = list(backend)
    else:
        raise BackendError(f"backend must be a string or a list of strings, got {backend!r}")
    if not wanted:
        raise BackendError("backend list is empty")
    wanted = [canonical_backend(text) for text in wanted]
    if "" in wanted:
        raise BackendError(f"backend {backend!r} has an empty name; give names such as onnxruntime or openvino:int8")
    if len(wanted) > 1:
        whole = [text for text in wanted if text == "auto" or is_remote(text)]
        if whole:
            raise BackendError(f"backend {whole[0]!r} is a choice of its own; it cannot be listed with others "
                               f"({', '.join(wanted)})")
    return wanted


def _first_loadable(bundle: Path, manifest: Manifest, order: list[Candidate], threads: int, strict: bool) -> Runner:
    errors = []
    for candidate in order:
        try:
            runner = instantiate(bundle, manifest, candidate, threads)
        except EdgesegError as exc:
            if strict and candidate is order[-1] and not errors:
                raise
            log.warning("backend %s unavailable: %s; trying the next one", candidate.label, exc)
            errors.append(f"{candidate.label}: {exc}")
            continue
        log.info("backend %s (%s)", candidate.label, candidate.entry.file)
        return runner
    raise BackendError(f"no backend could load this bundle ({'; '.join(errors) or 'none installed'})")


_PROBES: dict[str, threading.Lock] = {}


def _auto(bundle: Path, manifest: Manifest, available: list[Candidate], threads: int) -> Runner:
    if not available:
        skipped = [f"{c.label}: {skip_reasons(c.entry, c.runner)}" for c in candidates(manifest)]
        if skipped:
            raise BackendError(f"auto may run none of this bundle's artifacts here ({'; '.join(skipped)}); "
                               "name a backend to run one anyway")
        raise BackendError("no installed backend can run this bundle's artifacts (pip install 'edgeseg[runtime]')")
    if os.environ.get("EDGESEG_BACKEND_PROBE", "1") == "0":
        return _first_loadable(bundle, manifest, available, threads, strict=False)
    key = probe_key(bundle, threads)
    # threads loading one bundle at once share one probe, so they choose alike (setdefault is atomic)
    with _PROBES.setdefault(key, threading.Lock()):
        cached = _read_cache().get(key, {}).get("choice")
        by_label = {c.label: c for c in available}
        if cached in by_label:
            try:
                runner = instantiate(bundle, manifest, by_label[cached], threads)
                log.info("backend auto -> %s (cached probe)", cached)
                return runner
            except EdgesegError as exc:
                log.warning("cached backend %s no longer loads (%s); probing again", cached, exc)
        timings, best, runner = probe(bundle, manifest, available, threads)
        if best is None or runner is None:
            raise BackendError(f"no backend could load this bundle: {timings}")
        _write_cache(key, {"choice": best.label, "p50_ms": timings,
                           "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    summary = ", ".join(f"{k} {v:.1f} ms" if isinstance(v, float) else f"{k} {v}" for k, v in timings.items())
    log.info("backend auto -> %s (probe at batch 1: %s)", best.label, summary)
    return runner


def probe(bundle: Path, manifest: Manifest, available: list[Candidate], threads: int
          ) -> tuple[dict[str, float | str], Candidate | None, Runner | None]:
    """Median batch-1 latency (ms) of each candidate, the fastest, and its runner (kept loaded)."""
    batch = np.zeros((max(1, manifest.inputs[0].shape[0]), *manifest.inputs[0].shape[1:]), dtype=np.float32)
    timings: dict[str, float | str] = {}
    best, best_runner, best_ms = None, None, float("inf")
    for candidate in available:
        try:
            runner = instantiate(bundle, manifest, candidate, threads)
        except EdgesegError as exc:
            log.warning("backend %s unavailable: %s", candidate.label, exc)
            timings[candidate.label] = "unavailable"
            continue
        for _ in range(PROBE_WARMUP):
            runner.infer(batch)
        samples = []
        for _ in range(PROBE_RUNS):
            start = time.perf_counter()
            runner.infer(batch)
            samples.append((time.perf_counter() - start) * 1e3)
        ms = float(np.median(samples))
        timings[candidate.label] = round(ms, 3)
        if ms < best_ms:
            if best_runner is not None:
                best_runner.close()
            best, best_runner, best_ms = candidate, runner, ms
        else:
            runner.close()
    return timings, best, best_runner


def probe_key(bundle: Path, threads: int) -> str:
    """Cache key: the manifest's sha256, the host, the thread count and the backend versions."""
    manifest_sha = hashlib.sha256((bundle / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    found = installed_versions(KEY_DISTRIBUTIONS)
    versions = [f"{dist}={found.get(dist, 'absent')}" for dist in KEY_DISTRIBUTIONS]
    host = f"{platform.node()}|{platform.machine()}|{os.cpu_count()}|{cpu_model()}"
    return f"{manifest_sha}|{host}|threads={threads}|{','.join(versions)}"


def cpu_model() -> str:
    """The CPU's model name: the first ``model name`` of /proc/cpuinfo ("" where it has none,
    as on ARM), else (no /proc) ``platform.processor()``. On Linux that would run ``uname -p``
    in a child process, a few ms of every cold start, and mostly say only ``x86_64``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:  # stops at the first CPU's entry
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
        return ""
    except OSError:
        return platform.processor()


# CPU features that change how fast a bundle runs here (vector width, INT8 and bf16 dot products):
# x86 flags, and the Arm ones of /proc/cpuinfo's Features line (asimddp: INT8 dot products).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
               "asimd", "asimddp", "sve", "i8mm", "bf16")


def machine_signature() -> str:
    """What a latency figure depends on besides load: CPU model, logical CPUs and the speed-relevant
    instruction sets, e.g. ``AMD EPYC | 2 cpus | avx2``. Figures with different signatures are not
    comparable (the same model name can hide different generations; the flags tell them apart)."""
    flags = cpu_flags() or frozenset()
    isa = ",".join(f for f in SPEED_FLAGS if f in flags) or "-"
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may run on (taskset, containers)
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    return f"{cpu_model() or platform.machine()} | {cpus} cpus | {isa}"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Distribution name -> installed version, for those of ``names`` installed (as wheels do:
    a ``NAME-VERSION.dist-info`` folder on ``sys.path``; the first one wins, as for
    ``importlib.metadata.version``). Read from the folder names: importlib.metadata itself
    imports email, csv and zipfile, tens of ms of every cold start that reads the probe cache."""
    wanted = {_normalized(n): n for n in names}
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            entries = os.scandir(folder or ".")
        except OSError:  # a zip file, or a folder that is gone
            continue
        with entries:
            for entry in entries:
                stem, dot, ext = entry.name.rpartition(".")
                if ext not in ("dist-info", "egg-info") or not dot:
                    continue
                name, _, version = stem.partition("-")
                version = version.partition("-")[0]  # an egg-info's NAME-VERSION-pyX.Y
                key = _normalized(name)
                if key in wanted and wanted[key] not in found and version:
                    found[wanted[key]] = version
    return found


def cache_path() -> Path:
    """Where the probe results live: ``$EDGESEG_CACHE_DIR`` or the user cache folder."""
    root = os.environ.get("EDGESEG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeseg")
    return Path(root) / CACHE_NAME


def _read_cache() -> dict:
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    """Record one probe: the cache is read again and written whole under a lock, so processes
    probing other bundles at the same time (a sweep's points, parallel tests) keep each other's
    entries rather than the last writer's copy alone."""
    import fcntl

    from edgeseg.atomic import atomic_write_text  # only when probing: it imports tempfile, secrets

    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cache = _read_cache()
            cache[key] = entry
            atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    except OSError as exc:  # a read-only home must not stop inference
        log.warning("cannot write the backend probe cache %s: %s", path, exc)
