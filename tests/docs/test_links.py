"""Every relative link in README.md and docs/*.md reaches an existing file, and its #anchor a heading there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped except '-', spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} +(.+?) *$", text, re.M)}


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", page.read_text()))
            if not re.match(r"^[a-z]+:", target)]


def test_the_guide_has_its_pages():
    names = {page.name for page in PAGES}
    assert {"index.md", "data.md", "training.md", "export.md", "runtime.md", "serving.md", "kernels.md",
            "benchmarking.md", "results.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading '#{anchor}' in {dest.name}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("heading,anchor", [
    ("Phantom (`make demo`)", "phantom-make-demo"),
    ("Runtime: start-up, install size, latency per backend", "runtime-start-up-install-size-latency-per-backend"),
    ("`edgeseg serve`: KServe v2 over HTTP", "edgeseg-serve-kserve-v2-over-http"),
])
def test_slug_rule_on_known_headings(heading, anchor):
    """The slug rule, on headings whose anchors GitHub is known to give."""
    assert slug(heading) == anchor
