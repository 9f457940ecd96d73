"""The DICOM node's settings checked before it starts, and what it counts as it runs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.errors import DataError
from edgeseg.serve.dicom_intake import check_ae_title

DEFAULT_MAX_SERIES = 16
# How long the node waits on a peer: for its association request, for the rest of a PDU it
# began, for its next PDU on an idle association, for it to take an answer. pynetdicom waited 30 s
# for a request (as dcmtk's storescp does, and Orthanc on an idle association); it is also how
# long a connection closed before its request keeps its association slot.
DEFAULT_PEER_TIMEOUT = 30.0
PEER_TIMEOUT_RANGE = (0.1, 3600.0)
# pynetdicom's own default; each association may hold about three copies of one image's data set
DEFAULT_MAX_ASSOCIATIONS = 10
MAX_ASSOCIATIONS_RANGE = (1, 1000)
# Open TCP connections (each up to two threads and one PDU of up to 1 MiB before its association
# request); a connection past them is refused as it is accepted (its request answered "local limit
# exceeded", dicom_refusal.py). Above the association limit, so a request past that is read and
# answered the same way by pynetdicom.
DEFAULT_MAX_CONNECTIONS = 32
MAX_CONNECTIONS_RANGE = (1, 10_000)
# Per host, by default, the association limit less the larger of 2 and a fifth of it, at least 1
# (8 of 10, 2 of 4, 1 of 2): one host (a modality stuck reconnecting, a scan, a misconfigured
# router) then never holds every association slot where there are two, whatever
# --max-associations is. pynetdicom counts every connection against the association limit, so
# this bounds a host's slots too.
DEFAULT_MAX_CONNECTIONS_PER_HOST = None
# Per calling AE title, by default the same: one AE title sending from several addresses (the
# nodes of a PACS cluster, a modality with two network ports) never holds every slot either.
DEFAULT_MAX_ASSOCIATIONS_PER_AE = None
# How long the images of a segmented series are kept, so that images of it arriving late are
# segmented with them into a SEG of the whole series (dicom_segmented.py); 0 keeps none.
DEFAULT_KEEP_SEGMENTED = 600.0
KEEP_SEGMENTED_RANGE = (0.0, 86400.0)
# How many names each list of NodeStats keeps (the latest): one string per series for as long as
# the node runs was the one thing of edgeseg's own that grew with the work it did.
STATS_KEPT = 1000


def per_host_limit(max_connections_per_host: int | None, max_associations: int) -> int:
    """The connections one peer address may hold: as given, or the default for ``max_associations``."""
    if max_connections_per_host is not None:
        return max_connections_per_host
    return max(1, max_associations - max(2, max_associations // 5))


class LatestNames(list):
    """A list that keeps only the latest ``kept`` names appended to it; ``total`` counts all of them."""

    def __init__(self, kept: int = STATS_KEPT) -> None:
        super().__init__()
        self.kept, self.total = kept, 0

    def append(self, name: str) -> None:
        super().append(name)
        self.total += 1
        if len(self) > self.kept:
            del self[:len(self) - self.kept]


@dataclass
class NodeStats:
    """What the node has done, for logs and tests: counts, and the latest ``STATS_KEPT`` series
    UIDs (SEG file names for the forward lists) of each outcome, with ``total`` of each list
    counting all of them."""

    received: int = 0
    refused: int = 0
    rejected_associations: int = 0
    aborted_associations: int = 0  # for sending more than the node reads (dicom_peer_bound.py)
    timed_out_connections: int = 0  # for keeping the node waiting past the peer timeout
    refused_connections: int = 0  # past --max-connections, --max-connections-per-host, --max-associations-per-ae
    segmented: LatestNames = field(default_factory=LatestNames)
    forwarded: LatestNames = field(default_factory=LatestNames)
    not_forwarded: LatestNames = field(default_factory=LatestNames)
    failed: LatestNames = field(default_factory=LatestNames)


def check_node_settings(*, out, forward, unsent, max_series, ae_title: str, calling_aets,
                        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
                        max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
                        max_connections: int = DEFAULT_MAX_CONNECTIONS,
                        max_connections_per_host: int | None = DEFAULT_MAX_CONNECTIONS_PER_HOST,
                        max_associations_per_ae: int | None = DEFAULT_MAX_ASSOCIATIONS_PER_AE,
                        keep_segmented: float = DEFAULT_KEEP_SEGMENTED, work=None) -> None:
    """DataError for settings no node can run with; ``edgeseg listen`` calls it before loading the bundle."""
    if out is None and forward is None:
        raise DataError("the DICOM node needs --out, --forward or both: otherwise results go nowhere")
    if out is not None and work is not None and _same_folder(out, work):
        # a SEG in --work is one a node left unsent there: every start would send each result again
        raise DataError(f"--out {out} is the --work folder: a SEG in the work folder is one left unsent, and each "
                        "start would send every result there again; give --out a folder of its own")
    if forward is not None and out is None and unsent is None:
        raise DataError("--forward without --out needs --unsent DIR: a SEG the peer does not take is kept "
                        "there and sent again, instead of being lost")
    if not isinstance(max_series, int) or max_series < 1:
        raise DataError(f"--max-series must be a positive integer, got {max_series!r}")
    low, high = PEER_TIMEOUT_RANGE
    if not (isinstance(peer_timeout, (int, float)) and math.isfinite(peer_timeout) and low <= peer_timeout <= high):
        raise DataError(f"--peer-timeout must be {low:g}..{high:g} seconds, got {peer_timeout!r}")
    low, high = KEEP_SEGMENTED_RANGE
    if not (isinstance(keep_segmented, (int, float)) and math.isfinite(keep_segmented) and low <= keep_segmented <= high):
        raise DataError(f"--keep-segmented must be {low:g}..{high:g} seconds, got {keep_segmented!r}")
    low, high = MAX_ASSOCIATIONS_RANGE
    if type(max_associations) is not int or not low <= max_associations <= high:  # noqa: E721 - bool is no count
        raise DataError(f"--max-associations must be an integer {low}..{high}, got {max_associations!r}")
    low, high = MAX_CONNECTIONS_RANGE
    max_connections_per_host = per_host_limit(max_connections_per_host, max_associations)
    for name, value in (("--max-connections", max_connections), ("--max-connections-per-host", max_connections_per_host)):
        if type(value) is not int or not low <= value <= high:  # noqa: E721 - bool is no count
            raise DataError(f"{name} must be an integer {low}..{high}, got {value!r}")
    per_ae = per_host_limit(max_associations_per_ae, max_associations)
    if type(per_ae) is not int or not 1 <= per_ae <= MAX_ASSOCIATIONS_RANGE[1]:  # noqa: E721 - bool is no count
        raise DataError(f"--max-associations-per-ae must be an integer 1..{MAX_ASSOCIATIONS_RANGE[1]}, got {per_ae!r}")
    if max_connections < max_associations:
        raise DataError(f"--max-connections ({max_connections}) is below --max-associations ({max_associations}): "
                        f"each association is a connection; raise --max-connections with it")
    if max_connections_per_host > max_connections:
        raise DataError(f"--max-connections-per-host ({max_connections_per_host}) is over --max-connections "
                        f"({max_connections})")
    for title in (ae_title, *(calling_aets or [])):
        check_ae_title(title)


def _same_folder(first, second) -> bool:
    """Whether the paths ``first`` and ``second`` name one folder (the same path once resolved, or
    the same folder on disk: a bind mount, a hard-linked name)."""
    if Path(first).resolve() == Path(second).resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them is not there yet: not the same folder
        return False
