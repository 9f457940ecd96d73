"""The tables of docs/dicom-conformance.md (and docs/dicom-seg-codes.md), read as the tests need
them: each ``### heading`` followed by a Markdown table gives a list of rows, each a dict from the
header's cells to the row's."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs"
STATEMENT = DOCS / "dicom-conformance.md"
SEG_CODES = DOCS / "dicom-seg-codes.md"
UID_IN_TICKS = re.compile(r"`([0-9]+(?:\.[0-9]+)+)`")
TICKED = re.compile(r"`([^`]*)`")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Each ``### heading`` with the first table under it (before the next heading)."""
    found, heading, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        if heading is None or heading in found or not line.startswith("|"):
            continue
        if i + 1 >= len(lines) or not set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            continue
        header, rows = _cells(line), []
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            rows.append(dict(zip(header, _cells(row))))
        found[heading] = rows
    return found


def statement() -> dict[str, list[dict[str, str]]]:
    return tables(STATEMENT.read_text())


def key_values(rows: list[dict[str, str]]) -> dict[str, str]:
    """An ``| item | value |`` table as a dict, a value in backticks without them."""
    return {row["item"]: ticked(row["value"]) or row["value"] for row in rows}


def ticked(cell: str) -> str | None:
    """The first value in backticks of ``cell`` when the cell starts with it, else None."""
    match = TICKED.match(cell.strip())
    return match.group(1) if match else None


def uids(cell: str) -> list[str]:
    """The UIDs in backticks in ``cell``, in order."""
    return UID_IN_TICKS.findall(cell)


def coded(cell: str) -> tuple[str, str, str] | None:
    """``SCT 91723000 Anatomical Structure`` -> (scheme, value, meaning); ``-`` -> None."""
    if cell.strip() == "-":
        return None
    scheme, value, meaning = cell.strip().split(" ", 2)
    return scheme, value, meaning


def seg_codes() -> dict[str, tuple]:
    """Class name -> (category, type, region) of docs/dicom-seg-codes.md ("any other name": ``None``)."""
    [rows] = [rows for rows in tables(SEG_CODES.read_text()).values()
              if rows and "class name" in rows[0]]
    return {ticked(row["class name"]): (coded(row["segmented property category"]),
                                        coded(row["segmented property type"]), coded(row["anatomic region"]))
            for row in rows}
