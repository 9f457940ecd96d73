"""`make test` hands the files of long tests out first (tests/conftest.py, LONG_FILES): the list
names files that exist, and the Makefile keeps xdist from putting its own order over it."""

import re
from pathlib import Path

from tests.conftest import LONG_FILES

ROOT = Path(__file__).resolve().parents[1]


def test_the_long_files_exist_and_xdist_keeps_the_collection_order():
    assert len(set(LONG_FILES)) == len(LONG_FILES)
    assert [name for name in LONG_FILES if not (ROOT / name).is_file()] == []
    recipe = re.search(r"^test-python:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "--dist loadfile" in recipe and "--no-loadscope-reorder" in recipe


def test_the_long_files_are_collected_first(request):
    """In this session's own collection: nothing of another file comes before a long file's tests."""
    files = list(dict.fromkeys(item.nodeid.split("::", 1)[0] for item in request.session.items))
    long_here = [name for name in files if name in LONG_FILES]
    assert files[:len(long_here)] == sorted(long_here, key=LONG_FILES.index)
