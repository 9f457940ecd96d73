"""Region-based training's regions (nnU-Net's ``regions`` and ``regions_class_order``), checked.

A region is a set of foreground classes the network predicts with one sigmoid output; a pixel
is in a region when its class is. Regions are decoded in order as nnU-Net does: the label is the
class of the last region whose sigmoid exceeds 0.5, else background. edgeseg requires region k
(0-based) to decode to class k + 1, i.e. class k + 1 is in region k and in no later region, so
each region's output channel is its class's channel and the classes' argmax is that decoding
(edgeseg.models.regions). Torch-free: the training configuration checks regions with the rest.
"""

from __future__ import annotations

from typing import Any

from edgeseg.errors import ModelConfigError


def check_regions(regions: Any, num_classes: int) -> tuple[tuple[int, ...], ...]:
    """``regions`` (a list of lists of class numbers) as sorted tuples, or a one-line
    ModelConfigError naming what is wrong: not a list of lists of integers, a region that is
    empty or names a class outside 1..num_classes-1 (or twice), a count other than one region
    per foreground class, or a region k that does not decode to class k + 1."""
    foreground = num_classes - 1
    shape_ok = isinstance(regions, (list, tuple)) and all(
        isinstance(r, (list, tuple)) and all(type(c) is int for c in r) for r in regions)
    if not shape_ok:
        raise ModelConfigError(f"regions must be a list of lists of class numbers, e.g. [[1, 2], [2]], got {regions!r}")
    for k, region in enumerate(regions):
        if not region:
            raise ModelConfigError(f"region {k} of {_show(regions)} is empty; each region names one or more classes")
        unknown = [c for c in region if not 1 <= c <= foreground]
        if unknown:
            raise ModelConfigError(f"region {k} of {_show(regions)} names class {unknown[0]}, not a foreground class "
                                   f"1..{foreground}")
        if len(set(region)) != len(region):
            raise ModelConfigError(f"region {k} of {_show(regions)} names a class twice")
    if len(regions) != foreground:
        missing = sorted(set(range(1, foreground + 1)) - {c for r in regions for c in r})
        why = f"class {missing[0]} is in no region, so no region decodes to it" if missing else "one region per class"
        raise ModelConfigError(f"regions {_show(regions)} are {len(regions)} for {foreground} foreground class(es); "
                               f"each class needs the one region that decodes to it ({why})")
    for k, region in enumerate(regions):
        left = sorted(set(region) - {c for later in regions[k + 1:] for c in later})
        if left != [k + 1]:
            raise ModelConfigError(
                f"region {k} of {_show(regions)} decodes to {_classes(left)} (its classes in no later region); "
                f"region k must decode to class k + 1: order the regions as the classes, the widest first, "
                f"e.g. [[1, 2], [2]]")
    return tuple(tuple(sorted(r)) for r in regions)


def parse_regions(text: str) -> list[list[int]]:
    """``"1+2,2"`` as ``[[1, 2], [2]]`` (regions separated by commas, classes by +); unchecked
    against the classes (``check_regions`` does that with the class count)."""
    regions = []
    for item in text.split(","):
        try:
            regions.append([int(v) for v in item.split("+")])
        except ValueError:
            raise ModelConfigError(f"regions must look like '1+2,2' (classes joined by +, regions by commas), "
                                   f"got {text!r}") from None
    return regions


def _show(regions: Any) -> str:
    return str([list(r) for r in regions])


def _classes(found: list[int]) -> str:
    if not found:
        return "no class"
    return f"class {found[0]}" if len(found) == 1 else f"classes {found}"
