"""Shared test set-up: nothing a test run writes may land in the working tree."""

import os
import tempfile

# hypothesis keeps an example database and a constants cache in ./.hypothesis by default.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="edgeseg-hypothesis-"))
