"""``predict``, ``serve`` and ``listen`` as a hardened container runs them: an unprivileged user,
a read-only root filesystem (the bundle on it), HOME and TMPDIR unset, and only the output
folder writable (tests/confined.py; real permission failures, no mocks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.confined import OUT, confined

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def edgeseg(*args) -> list[str]:
    return [sys.executable, "-m", "edgeseg.cli", *map(str, args)]


def one_line_error(done, *needles: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert lines and lines[-1].startswith("edgeseg: error: "), done.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def test_predict_refuses_an_out_folder_it_cannot_write_before_any_work(serve_bundle, tmp_path):
    locked = tmp_path / "out" / "locked"
    locked.mkdir(parents=True, mode=0o555)
    locked.chmod(0o555)
    done = confined(edgeseg("predict", serve_bundle, SERIES, "--out", OUT / "locked" / "m.nii.gz"), tmp_path / "out")
    one_line_error(done, "--out", "is not a writable folder")
    assert "loaded" not in done.stderr and list(locked.iterdir()) == []


def test_listen_without_a_writable_temporary_folder_is_refused_before_loading(serve_bundle, tmp_path, free_port):
    done = confined(edgeseg("listen", serve_bundle, "--out", OUT / "seg", "--port", free_port(),
                            "--backend", "onnxruntime:fp32"), tmp_path / "out", timeout=120)
    one_line_error(done, "TMPDIR")
    assert "loaded" not in done.stderr  # refused before the model loads
    assert list((tmp_path / "out").iterdir()) == []


def test_listen_refuses_a_tmpdir_it_cannot_write(serve_bundle, tmp_path, free_port):
    # Python would put the received images in /tmp, unannounced, where TMPDIR names such a folder
    done = confined(edgeseg("listen", serve_bundle, "--out", OUT / "seg", "--port", free_port(),
                            "--backend", "onnxruntime:fp32"),
                    tmp_path / "out", env={"TMPDIR": str(SERIES)}, timeout=120)
    one_line_error(done, f"TMPDIR {SERIES}")
    assert "loaded" not in done.stderr


def test_serve_without_a_writable_temporary_folder_names_tmpdir_and_upload_dir(serve_bundle, tmp_path, free_port):
    done = confined(edgeseg("serve", serve_bundle, "--port", free_port(), "--backend", "onnxruntime:fp32"),
                    tmp_path / "out", timeout=120)
    one_line_error(done, "TMPDIR", "--upload-dir")
    assert "loaded" not in done.stderr


@pytest.mark.parametrize("command", ["serve", "listen"])
def test_the_current_folder_is_not_taken_as_the_work_folder(command, serve_bundle, tmp_path, free_port):
    # started in its writable output folder, TMPDIR unset: Python's tempfile would take the
    # current folder for uploads or received images, without a word
    extra = ["--out", OUT / "seg"] if command == "listen" else []
    done = confined(edgeseg(command, serve_bundle, "--port", free_port(), "--backend", "onnxruntime:fp32", *extra),
                    tmp_path / "out", cwd=str(OUT), timeout=120)
    line = one_line_error(done, "TMPDIR", f"the current folder {OUT}")
    assert ("--upload-dir" in line) == (command == "serve"), line
    assert "loaded" not in done.stderr
    assert list((tmp_path / "out").iterdir()) == []


# The container runtime (root) makes the pipe that is the command's stdout: an unprivileged
# process writes to it through its open descriptor but may not open it again by name.
AUDIT_TO_STDOUT = ("from edgeseg.serve.audit import AuditLog; log = AuditLog('/dev/stdout'); "
                   "log.record('http_request', status=200); log.close()")


def test_audit_log_on_a_stdout_pipe_another_user_made(tmp_path):
    done = confined([sys.executable, "-c", AUDIT_TO_STDOUT], tmp_path / "out", timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == 200


@pytest.mark.parametrize("command", ["serve", "listen"])
def test_audit_log_to_stdout_is_taken_by_the_commands(command, tmp_path, free_port):
    # the audit log is opened before the bundle is read: a missing bundle is the next error
    done = confined(edgeseg(command, OUT / "no-bundle", "--port", free_port(), "--audit-log", "/dev/stdout",
                            *(["--upload-dir", OUT] if command == "serve" else ["--out", OUT / "seg"])),
                    tmp_path / "out", env={"TMPDIR": str(OUT)}, timeout=120)
    line = one_line_error(done)
    assert "audit" not in line and "no-bundle" in line, line
