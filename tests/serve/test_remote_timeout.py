"""A remote backend whose server takes the connection and never answers: ``Segmenter.load(...,
timeout=)``, ``remote_segmenter`` and ``edgeseg predict --timeout`` give up after the time they
were given, with an error naming it, instead of the fixed 60 s."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.errors import BackendError

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


@pytest.fixture
def silent_server(silent_port):
    """A server that takes the connection and never answers (``silent_port``); its model address."""
    return f"http://127.0.0.1:{silent_port}/models/edgeseg"


def test_segmenter_load_gives_up_after_its_timeout(serve_bundle, silent_server):
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.client import remote_segmenter

    with pytest.raises(BackendError, match=r"127\.0\.0\.1:\d+: no answer within 0\.3 s"):
        Segmenter.load(serve_bundle, backend=silent_server, timeout=0.3)
    with pytest.raises(BackendError, match=r"no answer within 0\.2 s"):  # a bundle folder, as a manifest
        remote_segmenter(silent_server, serve_bundle, timeout=0.2)


def test_a_timeout_for_a_local_backend_or_not_a_positive_number_is_refused(serve_bundle, silent_server):
    from edgeseg.runtime.segmenter import Segmenter

    with pytest.raises(BackendError, match="applies to a remote backend"):
        Segmenter.load(serve_bundle, backend="onnxruntime:fp32", timeout=5)
    for bad in (0, -1.0, float("nan"), "5"):
        with pytest.raises(BackendError, match="positive number of seconds"):
            Segmenter.load(serve_bundle, backend=silent_server, timeout=bad)


def test_predict_timeout_option(serve_bundle, silent_server, tmp_path, assert_one_line_error):
    def predict(*options):
        return subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(serve_bundle), str(SERIES),
                               "--out", str(tmp_path / "mask.npy"), "--quiet", *options],
                              capture_output=True, text=True, timeout=120)

    assert_one_line_error(predict("--backend", silent_server, "--timeout", "0.5"), "no answer within 0.5 s")
    assert_one_line_error(predict("--backend", "onnxruntime:fp32", "--timeout", "5"), "applies to a remote backend")
    assert not (tmp_path / "mask.npy").exists()
