"""Which runner runs a bundle: an explicit ``NAME[:PRECISION]``, or ``auto``.

``auto`` measures every runner this machine can load on every artifact of the bundle (a short
probe at batch 1, after warm-up) and keeps the fastest. The result is cached per machine in
``$EDGESEG_CACHE_DIR`` (default ``~/.cache/edgeseg``), keyed by the manifest's sha256, the host
and the installed backend versions, so later loads pick at once. Processes and threads that
need a probe at the same time take turns, whatever their bundle, and one that finds its bundle
measured when its turn comes takes that choice (``edgeseg.runtime.probe_cache`` says why all
bundles share the turn). ``EDGESEG_BACKEND_PROBE=0``
skips measuring and takes the first loadable candidate in the runners' ``preference`` order; so
does a load whose choice could not be recorded (no writable cache: a read-only root, no home),
with one warning, so that every start picks the same backend and gives the same masks. A runner
that cannot load here (a TensorRT engine built for another GPU) is logged as a warning and
the next candidate is tried. A runner the export gate failed on an artifact (the manifest's
``excluded``), or never ran on it (not in its ``scored``: the runner was not installed where the
bundle was exported; for a manifest without ``scored``, not in parity.json's rows where those are
this bundle's, see ``edgeseg.runtime.parity_record``, else an INT8 graph on any runner but ONNX
Runtime), is never picked by ``auto`` for it; naming it explicitly still loads it, with a warning.
On an x86 CPU without VNNI, ``auto`` also skips CPU runners on an INT8 graph of the
``tensorrt`` scheme (signed activations; every bundle from before the INT8 schemes): their
u8 x s8 pair sums saturate there, and the gate that passed them ran on the export machine
(see ``edgeseg.export.int8``). What each runner loads, needs and prefers comes from its class (see
``edgeseg.runtime.runners``); ``http://`` or ``grpc://HOST:PORT/models/NAME`` selects the remote runner.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import BackendError, EdgesegError
from edgeseg.runtime.machine import cpu_flags
from edgeseg.runtime.manifest import ArtifactEntry, Manifest
from edgeseg.runtime.parity_record import with_parity_record
from edgeseg.runtime.probe_cache import probe_key, probe_lock, read_cache, write_cache
from edgeseg.runtime.runners import Runner, plugin_errors, runner_class, runners, runners_for
from edgeseg.runtime.runners.remote import DEFAULT_TIMEOUT_S, check_remote_timeout, is_remote, remote_runner
from edgeseg.runtime.runners.base import check_threads

log = logging.getLogger(__name__)

PROBE_WARMUP, PROBE_RUNS = 2, 5


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
    any case (``"OpenVINO"``) is the same name. BackendError for a name no runner has, and for a
    precision the runner does not run (``torchscript:int8``)."""
    name, _, precision = canonical_backend(text).partition(":")
    loadable = sorted(name for name, cls in runners(warn=False).items() if cls.format is not None)
    if name not in loadable:
        if name in plugin_errors():
            runner_class(name)  # raises: the plugin of that name was left out, and why
        raise BackendError(f"unknown backend {name!r}; known: auto, {', '.join(loadable)}, http:// or grpc://HOST:PORT/models/NAME")
    runs = runner_class(name).precisions
    if precision and precision not in runs:
        raise BackendError(f"backend {name!r} runs {', '.join(runs)} artifacts, not {precision!r}")
    return name, precision or None


X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
# Instructions that add u8 x s8 products in 32 bits (no 16-bit saturation).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_lacks_vnni() -> bool:
    """True on an x86 CPU whose flags are known and show none of :data:`VNNI_FLAGS`: there CPU
    INT8 kernels add u8 x s8 products in pairs into 16 bits, with saturation. False on other
    machines and where the flags are unknown (no /proc/cpuinfo)."""
    if platform.machine().lower() not in X86_MACHINES:
        return False
    flags = cpu_flags()
    return bool(flags) and not flags & VNNI_FLAGS


def int8_saturation_risk(entry: ArtifactEntry) -> str | None:
    """Why a CPU runner on ``entry`` would compute wrong sums on this machine, or None: an ONNX
    INT8 graph not of the ``cpu`` scheme, on a CPU where :func:`cpu_lacks_vnni`."""
    if entry.format != "onnx" or entry.precision != "int8" or entry.extra.get("int8_scheme") == "cpu":
        return None
    if not cpu_lacks_vnni():
        return None
    # A graph from before the schemes has the tensorrt scheme's signed activations.
    scheme = entry.extra.get("int8_scheme")
    graph = f"of the {scheme} scheme" if scheme else "of the tensorrt scheme (exported before schemes were recorded)"
    return (f"INT8 graph {graph}: its signed activations saturate u8 x s8 sums on this CPU "
            f"(no VNNI); re-export with --int8-scheme cpu")


# The runner every parity gate, from the first, ran on the artifacts of each format: a manifest
# from before the gate listed its runners (no ``scored``) vouches for these alone on INT8, where
# runners' kernels differ most (until 2026-12-01 the gate ran ONNX graphs on ONNX Runtime only).
ALWAYS_GATED = {"onnx": "onnxruntime", "tensorrt": "tensorrt"}


def unscored_reason(entry: ArtifactEntry, runner: str) -> str | None:
    """Why the gate's record does not cover ``runner`` on ``entry``: it lists the runners it
    scored and ``runner`` is not among them, or (a bundle from before the gate recorded the list)
    the entry is an INT8 graph and ``runner`` is not the one every gate ran on its format
    (:data:`ALWAYS_GATED`); None where it is covered, excluded (that reason comes first), or an
    FP32/FP16 artifact of such a bundle (judged by ``excluded`` alone)."""
    if runner in entry.excluded or (entry.scored is not None and runner in entry.scored):
        return None
    if entry.scored is not None:
        return f"not scored by the export gate: {runner} was not installed where the bundle was exported; edgeseg gate scores it"
    if entry.precision != "int8" or runner == ALWAYS_GATED.get(entry.format):
        return None
    return (f"not scored by the export gate: a manifest without scored runners vouches for "
            f"{ALWAYS_GATED.get(entry.format, 'no runner')} alone on an INT8 graph; edgeseg gate scores it")


def skip_reasons(entry: ArtifactEntry, runner: str) -> str | None:
    """Why ``auto`` never picks ``runner`` on ``entry`` here: the export gate's verdict, a runner
    that runs only when named, a runner the gate never ran on it, or the INT8 saturation risk of
    this CPU for a CPU runner; None when it may."""
    if runner in entry.excluded:
        return entry.excluded[runner]
    if runner_class(runner).named_only:
        return runner_class(runner).named_only
    if unscored_reason(entry, runner):
        return unscored_reason(entry, runner)
    if runner_class(runner).device_kind == "cpu":
        return int8_saturation_risk(entry)
    return None


def candidates(manifest: Manifest, installed_only: bool = True, gated_only: bool = False) -> list[Candidate]:
    """Every (runner, artifact) pair of the bundle, in the runners' preference order: only those
    whose library is installed (``installed_only``), and not those ``auto`` must skip here
    (``gated_only``: the export gate excluded them, or the CPU saturates on their INT8 graph)."""
    found = [Candidate(cls.name, entry) for entry in manifest.artifacts
             for cls in runners_for(entry.format, entry.precision)
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
    manifest = with_parity_record(bundle, manifest)  # the gate's runners, for a manifest without scored
    check_threads(threads)  # before any runner is tried: auto would take the refusal for a failed load
    remote = len(wanted) == 1 and is_remote(wanted[0])
    if timeout is not None:
        check_remote_timeout(timeout, backend if remote else None)
    if remote:
        return remote_runner(wanted[0], manifest.inputs[0], manifest.outputs[0], manifest.max_batch, threads,
                            timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
                            artifacts=tuple(a.sha256 for a in manifest.artifacts), labels=manifest.labels)
    if wanted == ["auto"]:
        return _auto(bundle, manifest, candidates(manifest, gated_only=True), threads)
    # an unknown name is refused, in a list too (a typo), before the runners are listed
    parsed = [parse_backend(text) for text in wanted]
    order: list[Candidate] = []
    have = ", ".join(c.label for c in candidates(manifest, installed_only=False))
    absent = []
    for text, (name, precision) in zip(wanted, parsed):
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
            elif unscored_reason(match.entry, match.runner) and not runner_class(match.runner).named_only:
                log.warning("backend %s on %s: %s; auto never picks it", match.label, match.entry.file,
                            unscored_reason(match.entry, match.runner))
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


def _auto(bundle: Path, manifest: Manifest, available: list[Candidate], threads: int) -> Runner:
    unscored: dict[str, list[str]] = {}
    for c in candidates(manifest):
        if unscored_reason(c.entry, c.runner) and not runner_class(c.runner).named_only:
            unscored.setdefault(unscored_reason(c.entry, c.runner), []).append(c.label)
    for why, labels in unscored.items():  # installed here, so a user may expect auto to measure it
        log.info("backend auto skips %s: %s", ", ".join(labels), why)
    if not available:
        skipped = [f"{c.label}: {skip_reasons(c.entry, c.runner)}" for c in candidates(manifest)]
        if skipped:
            raise BackendError(f"auto may run none of this bundle's artifacts here ({'; '.join(skipped)}); "
                               "name a backend to run one anyway")
        raise BackendError("no installed backend can run this bundle's artifacts (pip install 'edgeseg[runtime]')")
    if os.environ.get("EDGESEG_BACKEND_PROBE", "1") == "0":
        return _first_loadable(bundle, manifest, available, threads, strict=False)
    key = probe_key(bundle, threads)
    runner, stale = _cached_choice(bundle, manifest, available, key, threads)
    if runner is not None:
        return runner  # a cached choice takes no lock: it never waits for another bundle's probe
    # Threads and processes probing at once take turns (see edgeseg.runtime.probe_cache): each
    # timing the backends while the others load and run theirs could choose another backend.
    with probe_lock() as shared:
        if not shared:  # nothing measured now could be kept: choose as every start will (warned)
            return _first_loadable(bundle, manifest, available, threads, strict=False)
        # whoever held the lock may have measured this very bundle
        runner, _ = _cached_choice(bundle, manifest, available, key, threads, stale)
        if runner is not None:
            return runner
        timings, best, runner = probe(bundle, manifest, available, threads)
        if best is None or runner is None:
            raise BackendError(f"no backend could load this bundle: {timings}")
        write_cache(key, {"choice": best.label, "p50_ms": timings,
                          "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    summary = ", ".join(f"{k} {v:.1f} ms" if isinstance(v, float) else f"{k} {v}" for k, v in timings.items())
    log.info("backend auto -> %s (probe at batch 1: %s)", best.label, summary)
    return runner


def _cached_choice(bundle: Path, manifest: Manifest, available: list[Candidate], key: str, threads: int,
                   stale: str | None = None) -> tuple[Runner | None, str | None]:
    """The cached choice's runner (None where there is no choice, or it no longer loads) and the
    choice; ``stale``, a choice already found not to load, is not tried again."""
    cached = read_cache().get(key, {}).get("choice")
    by_label = {c.label: c for c in available}
    if cached not in by_label or cached == stale:
        return None, cached
    try:
        runner = instantiate(bundle, manifest, by_label[cached], threads)
    except EdgesegError as exc:
        log.warning("cached backend %s no longer loads (%s); probing again", cached, exc)
        return None, cached
    log.info("backend auto -> %s (cached probe)", cached)
    return runner, cached


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
