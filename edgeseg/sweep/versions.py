"""The library versions a sweep's latencies were measured with, and where they differ.

Each point records the versions its latency was measured with (``versions``: edgeseg, Python,
numpy and each backend library, as ``edgeseg bench`` records them). A sweep resumed over weeks
can finish its points with different ones, and a backend release moves latencies as much as the
choice between two variants does (a new OpenVINO's INT8 kernels, an ONNX Runtime that fuses
another pattern): the default-model rule compares such points only where ``[choose]
accept_mixed_versions`` says to."""

from __future__ import annotations

from typing import Any

NOT_RECORDED = "not recorded"  # a point written before versions were recorded
ABSENT = "absent"  # a library not installed when the point was measured


def differing_versions(points: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Library -> {version: number of points}, in order of first appearance, for each library
    whose version is not one and the same in every point; empty where they all agree. Points
    written before versions were recorded count as ``not recorded`` for every library, so they
    differ from recorded ones but not from each other (nothing says those differ)."""
    recorded = [p["versions"] for p in points if isinstance(p.get("versions"), dict)]
    libraries = list(dict.fromkeys(name for versions in recorded for name in versions))
    differ: dict[str, dict[str, int]] = {}
    for name in libraries:
        counts: dict[str, int] = {}
        for p in points:
            versions = p.get("versions")
            value = str(versions.get(name, ABSENT)) if isinstance(versions, dict) else NOT_RECORDED
            counts[value] = counts.get(value, 0) + 1
        if len(counts) > 1:
            differ[name] = counts
    return differ


def versions_text(differ: dict[str, dict[str, int]]) -> str:
    """``openvino 2025.1.0 on 3, 2025.2.0 on 2; numpy ...``: what :func:`differing_versions` found."""
    return "; ".join(f"{name} " + ", ".join(f"{value} on {n}" for value, n in counts.items())
                     for name, counts in differ.items())
