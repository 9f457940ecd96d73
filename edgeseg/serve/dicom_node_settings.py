"""The DICOM node's settings checked before it starts, and what it counts as it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeseg.errors import DataError
from edgeseg.serve.dicom_intake import check_ae_title

DEFAULT_MAX_SERIES = 16


@dataclass
class NodeStats:
    """What the node has done, for logs and tests."""

    received: int = 0
    refused: int = 0
    rejected_associations: int = 0
    aborted_associations: int = 0  # for sending more than the node reads (dicom_peer_bound.py)
    segmented: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    not_forwarded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def check_node_settings(*, out, forward, unsent, max_series, ae_title: str, calling_aets) -> None:
    """DataError for settings no node can run with; ``edgeseg listen`` calls it before loading the bundle."""
    if out is None and forward is None:
        raise DataError("the DICOM node needs --out, --forward or both: otherwise results go nowhere")
    if forward is not None and out is None and unsent is None:
        raise DataError("--forward without --out needs --unsent DIR: a SEG the peer does not take is kept "
                        "there and sent again, instead of being lost")
    if not isinstance(max_series, int) or max_series < 1:
        raise DataError(f"--max-series must be a positive integer, got {max_series!r}")
    for title in (ae_title, *(calling_aets or [])):
        check_ae_title(title)
