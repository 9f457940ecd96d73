"""Without the grpc extra, asking for gRPC (``serve --grpc-port``, ``--backend grpc://``) ends in
one line naming the package as pip spells it and the extra, before the model loads."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import check_one_line_error, run_without
from tests.ports import reserved_port


@pytest.mark.parametrize("command", ["serve", "predict"])
def test_grpc_without_its_extra_is_one_line(serve_bundle, tmp_path, command):
    pytest.importorskip("fastapi")
    np.save(tmp_path / "in.npy", np.full((1, 40, 40), -1000, np.int16))
    args = {"serve": ["serve", str(serve_bundle), "--port", str(reserved_port()), "--grpc-port", str(reserved_port())],
            "predict": ["predict", str(serve_bundle), "in.npy", "--out", "out.npy",
                        "--backend", "grpc://127.0.0.1:9/models/edgeseg"]}[command]
    done = run_without(["-m", "edgeseg.cli", *args], tmp_path, absent=("grpc",))
    check_one_line_error(done, "needs the 'grpcio' package: pip install 'edgeseg[grpc]'")
    assert "loaded" not in done.stdout + done.stderr  # refused before the model loads
    assert not (tmp_path / "out.npy").exists()
