"""Runners other distributions install: the ``edgeseg.runners`` entry points.

A backend shipped as its own pip package declares its runner in its pyproject.toml::

    [project.entry-points."edgeseg.runners"]
    acme-npu = "acme_edgeseg.runner:AcmeNpuRunner"

and the registry adds it to the built-in runners the first time it is asked for them. The entry
points are read from the ``entry_points.txt`` of the ``*.dist-info`` folders on ``sys.path``
(the first distribution of a name wins, as for ``importlib.metadata.entry_points``) without
importing importlib.metadata, which costs every cold start tens of ms. A plugin that does not
load, is not a Runner, or takes a name already taken is left out with one warning line naming
it and why (the registry, ``edgeseg.runtime.runners``): the other runners work, and naming its
runner is refused with that reason, so a bundle never runs on another engine than the one named.
``EDGESEG_RUNNER_PLUGINS=0`` runs with the built-in runners only.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import NamedTuple

from edgeseg.errors import BackendError
from edgeseg.runtime.machine import distributions_on_path
from edgeseg.runtime.runners.base import Runner

GROUP = "edgeseg.runners"
SWITCH = "EDGESEG_RUNNER_PLUGINS"
# What --backend can name: matched in lower case, split at ':', and 'auto' and 'all' are taken.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_RESERVED = ("auto", "all")


class EntryPoint(NamedTuple):
    name: str          # the runner's name
    value: str         # module:Class
    distribution: str  # the dist-info folder that declares it
    project: str       # that distribution's normalised name

    def where(self) -> str:
        return f"runner plugin {self.name!r} ({self.value}, from {self.distribution})"


def enabled() -> bool:
    """Whether plugins are looked for: unless ``EDGESEG_RUNNER_PLUGINS`` is ``0``."""
    return os.environ.get(SWITCH, "1").strip() != "0"


def entry_points() -> list[EntryPoint]:
    """The ``edgeseg.runners`` entry points of the distributions on ``sys.path``."""
    found = []
    for project, _, folder in distributions_on_path():
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as fh:
                text = fh.read()
        except OSError:  # most distributions declare none
            continue
        found += [EntryPoint(name, value, os.path.basename(folder), project) for name, value in _group(text, GROUP)]
    return found


def _group(text: str, group: str) -> list[tuple[str, str]]:
    """``name = value`` lines of one ``[group]`` section of an entry_points.txt (an INI file)."""
    pairs, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group:
            name, _, value = line.partition("=")
            pairs.append((name.strip(), value.partition("[")[0].strip()))  # drop "[extras]"
    return pairs


def load(entry: EntryPoint, builtin: dict, plugins: dict[str, EntryPoint]) -> type[Runner]:
    """The Runner class ``entry`` names, checked; BackendError in one line when it does not
    import, is no Runner subclass, is named otherwise than its entry point, or takes the name of
    one of the ``builtin`` runners or of an earlier one of the ``plugins``."""
    if entry.name in builtin:  # refused before its module runs: it may be what breaks the built-in
        raise BackendError(f"{entry.where()}: {entry.name!r} is a built-in runner, which a plugin cannot replace; "
                           "give it another name")
    if entry.name in plugins:
        raise BackendError(f"{entry.where()}: {entry.name!r} is also {plugins[entry.name].where()}")
    if not _NAME.fullmatch(entry.name) or entry.name in _RESERVED:
        raise BackendError(f"{entry.where()}: a runner name is lower-case letters, digits, '.', '_' and '-', "
                           f"and not {' or '.join(_RESERVED)}")
    module_name, colon, attribute = (part.strip() for part in entry.value.partition(":"))
    if not colon or not module_name or not attribute:
        raise BackendError(f"{entry.where()}: {entry.value!r} is not 'module:Class'")
    try:
        found = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except KeyboardInterrupt:  # the user's Ctrl-C, arriving during the import: not the plugin's fault
        raise
    except BaseException as exc:  # noqa: BLE001 - whatever the plugin's import raises, SystemExit included
        message = " ".join(str(exc).split())
        raise BackendError(f"{entry.where()} does not load: {type(exc).__name__}"
                           + (f": {message}" if message else "")) from None
    if not (isinstance(found, type) and issubclass(found, Runner)):
        raise BackendError(f"{entry.where()} is not a subclass of edgeseg's Runner: {found!r}")
    if found.name != entry.name:
        raise BackendError(f"{entry.where()} names its runner {found.name!r}: the entry point's name must be "
                           "the runner's name")
    return found
