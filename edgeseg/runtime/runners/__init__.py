"""Backends that run a segmentation network: one file per backend, found by looking.

The first time the registry is asked, every module of this package is imported (they import
their libraries lazily, so that is cheap and works without any of them) and each Runner subclass
with a ``name`` is registered; adding a backend is adding a file. Runners other distributions
install as ``edgeseg.runners`` entry points come after them (``edgeseg.runtime.runner_plugins``:
a broken one is left out with one warning line and ``plugin_errors()`` says why, naming its
runner is refused with that reason, none replaces a built-in runner, and
``EDGESEG_RUNNER_PLUGINS=0`` leaves them out). ``runner_class(name)`` returns one,
``runners()`` all of them, ``runners_for(format, precision)`` those that run an artifact,
``artifact_formats()`` the artifact formats and precisions some runner loads (what a manifest
may name), ``library_distributions()`` the distributions whose versions matter to results,
``plugin_distributions()`` the distribution each plugin's runner came from.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import threading

from edgeseg.errors import BackendError
from edgeseg.runtime.runners.base import ArtifactRunner, Runner

_REGISTRY: dict[str, type[Runner]] = {}
# runner name -> the distribution that installed it, for the plugins' runners
_PLUGIN_DISTRIBUTIONS: dict[str, str] = {}
# entry point name -> why that plugin was left out (it does not load, is no Runner, its name is taken)
_PLUGIN_ERRORS: dict[str, str] = {}
_UNWARNED: list[str] = []  # those reasons not logged yet
# One thread loads the registry and logs the reasons; the others wait for it (a server's threads
# asking at once would each load it, and warn twice or pop a reason another thread took).
# Reentrant: a plugin's module may ask the registry while it is imported.
_LOCK = threading.RLock()

log = logging.getLogger(__name__)


def runners(warn: bool = True) -> dict[str, type[Runner]]:
    """Backend name -> Runner class: every runner module of this package, then the installed
    plugins' runners (a broken plugin left out, with one warning line once ``warn`` is True:
    checking a name given, which is refused with the reason when it is that plugin's, leaves
    it to the next call)."""
    with _LOCK:
        if not _REGISTRY:
            found = builtin_runners()
            plugins = _plugins(found)
            _REGISTRY.update(sorted(found.items()))
            _REGISTRY.update(sorted(plugins.items()))
        while warn and _UNWARNED:
            log.warning("%s; its runner is left out (EDGESEG_RUNNER_PLUGINS=0 runs without plugins)", _UNWARNED.pop(0))
    return _REGISTRY


def builtin_runners() -> dict[str, type[Runner]]:
    """Backend name -> Runner class of this package's own runners, no plugin's."""
    found = {}
    for info in pkgutil.iter_modules(__path__, prefix=__name__ + "."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Runner) and cls.name and cls.__module__ == module.__name__:
                found[cls.name] = cls
    return found


def _plugins(builtin: dict[str, type[Runner]]) -> dict[str, type[Runner]]:
    from edgeseg.runtime import runner_plugins

    if not runner_plugins.enabled():
        return {}
    loaded, entries = {}, {}
    for entry in runner_plugins.entry_points():
        try:
            loaded[entry.name] = runner_plugins.load(entry, builtin, entries)
            entries[entry.name] = entry
        except BackendError as exc:  # the other runners work; naming this one says why it cannot
            _UNWARNED.append(str(exc))
            _PLUGIN_ERRORS.setdefault(entry.name, str(exc))
    for name in _PLUGIN_ERRORS:  # a name one plugin failed to provide is no other plugin's either
        loaded.pop(name, None)
    _PLUGIN_DISTRIBUTIONS.update((name, entries[name].project) for name in loaded)
    return loaded


def plugin_errors() -> dict[str, str]:
    """Entry point name -> why that runner plugin was left out, for each broken plugin."""
    runners(warn=False)
    return dict(_PLUGIN_ERRORS)


def plugin_distributions() -> dict[str, str]:
    """Runner name -> the (normalised) name of the distribution that installed it, for each
    plugin's runner; empty without plugins or with ``EDGESEG_RUNNER_PLUGINS=0``. Read from the
    installed entry points alone, no plugin imported: ``edgeseg version`` lists a plugin that
    does not load too (the report that says which one is broken), and costs no SDK's import."""
    from edgeseg.runtime import runner_plugins

    if not runner_plugins.enabled():
        return {}
    return {entry.name: entry.project for entry in runner_plugins.entry_points()}


def runner_class(name: str) -> type[Runner]:
    """The Runner subclass registered as ``name``; BackendError naming the known ones otherwise,
    or why the plugin of that name was left out."""
    runners(warn=False)  # whether `name` is a broken plugin's is known once the registry is loaded
    try:
        return runners(warn=name not in _PLUGIN_ERRORS)[name]
    except KeyError:
        if name in _PLUGIN_ERRORS:
            raise BackendError(f"backend {name!r} is unavailable: {_PLUGIN_ERRORS[name]}") from None
        raise BackendError(f"unknown backend {name!r}; known: {sorted(runners())}") from None


def artifact_formats() -> dict[str, tuple[str, ...]]:
    """Artifact format -> the precisions some registered runner loads in that format (a check of
    a manifest, which leaves a broken plugin's warning to the choice of a runner)."""
    formats: dict[str, set[str]] = {}
    for cls in runners(warn=False).values():
        if cls.format is not None:
            formats.setdefault(cls.format, set()).update(cls.precisions)
    return {fmt: tuple(sorted(p)) for fmt, p in sorted(formats.items())}


def runners_for(fmt: str, precision: str | None = None) -> list[type[Runner]]:
    """The runner classes that load artifacts of format ``fmt`` (and, given ``precision``, run
    that precision: a runner is never offered an artifact its ``precisions`` leave out)."""
    return [cls for cls in runners().values()
            if cls.format == fmt and (precision is None or precision in cls.precisions)]


def library_distributions() -> tuple[str, ...]:
    """Every distribution some runner's library may be installed as, each once, in registry
    order, then each plugin's own distribution (its code is the engine's glue): what the probe
    cache key and benchmark results record."""
    return tuple(dict.fromkeys([*(dist for cls in runners().values() for dist in cls.library_distributions()),
                                *_PLUGIN_DISTRIBUTIONS.values()]))


__all__ = ["ArtifactRunner", "Runner", "artifact_formats", "builtin_runners", "library_distributions",
           "plugin_distributions", "plugin_errors", "runner_class", "runners", "runners_for"]
