"""What one /v1/segment upload costs the server in memory, on a real server on 127.0.0.1: its
body goes to a file as it arrives (decompressed there when sent with a Content-Encoding) and its
mask is sent from a file, so that at its peak the server holds the decoded volume and its labels,
never the upload's bytes or the mask's bytes beside them."""

from __future__ import annotations

import gzip
import http.client
import json
import tracemalloc
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")


def _volume(depth: int, side: int) -> np.ndarray:
    hu = np.full((depth, side, side), -1000, np.int16)
    hu[:, side // 4:3 * side // 4, side // 5:4 * side // 5] = 50
    hu[::3, side // 3:side // 2, side // 3:side // 2] = 300
    return hu


def _post_file(url: str, path, headers: dict, answer) -> tuple[int, bytes]:
    """POST the file ``path`` (sent as read, in blocks); a 200's body goes to file ``answer``,
    read in blocks too, so that the client holds neither body whole."""
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        with open(path, "rb") as body:
            conn.request("POST", "/v1/segment?format=npy", body=body,
                         headers={"Content-Length": str(path.stat().st_size), **headers})
        reply = conn.getresponse()
        if reply.status != 200:
            return reply.status, reply.read()
        with open(answer, "wb") as out:
            while block := reply.read(1 << 20):
                out.write(block)
        return 200, b""
    finally:
        conn.close()


def test_an_upload_is_answered_holding_its_volume_and_labels_only(server_factory, serve_bundle, tmp_path):
    """The peak of memory allocated while a 32 MiB int16 volume is uploaded, read, segmented and
    answered (tracemalloc: every Python and numpy allocation of the process, the server's threads
    included) stays under twice the volume's bytes: the volume and its uint8 labels are 1.5 times
    them, and a copy of the upload's bytes or of the mask's beside them would take it past 2."""
    from edgeseg.runtime.segmenter import Segmenter

    hu = _volume(64, 512)
    upload, answer = tmp_path / "ct.npy", tmp_path / "mask.npy"
    np.save(upload, hu)
    server = server_factory(max_batch=4, max_body_bytes=64 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        status, data = _post_file(server.url, upload, {}, answer)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert status == 200, data
    assert peak < 2 * hu.nbytes, f"peak {peak / 2**20:.1f} MiB for a volume of {hu.nbytes / 2**20:.1f} MiB"
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(answer), local.predict_volume(hu))


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_upload_is_decompressed_as_it_is_saved(server_factory, serve_bundle, tmp_path, encoding):
    from edgeseg.runtime.segmenter import Segmenter

    hu = _volume(3, 64)
    raw = tmp_path / "ct.npy"
    np.save(raw, hu)
    sent = tmp_path / "ct.npy.z"
    sent.write_bytes(gzip.compress(raw.read_bytes()) if encoding == "gzip" else zlib.compress(raw.read_bytes()))
    server = server_factory(max_batch=4, max_body_bytes=1 << 20)
    status, data = _post_file(server.url, sent, {"Content-Encoding": encoding}, tmp_path / "mask.npy")
    assert status == 200, data
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), local.predict_volume(hu))


# mtime=0 and ids: a gzip header holds the time it was made, and the test ids of parallel
# workers must be equal
@pytest.mark.parametrize("body,status,fragment", [
    (gzip.compress(b"\0" * (4 << 20), mtime=0), 413, "exceeds the limit of 1048576 bytes once gzip-decompressed"),
    (gzip.compress(b"\x93NUMPY" + b"\0" * 1000, mtime=0)[:-6], 400, "truncated gzip stream"),
    (gzip.compress(b"\x93NUMPY", mtime=0) + b"junk", 400, "4 bytes after the end of its gzip stream"),
    (b"not gzip at all", 400, "not valid gzip data"),
], ids=["too-large", "truncated", "trailing-bytes", "not-gzip"])
def test_a_compressed_upload_that_cannot_be_decompressed_is_refused(server_factory, tmp_path, body, status, fragment):
    server = server_factory(max_batch=4, max_body_bytes=1 << 20)
    sent = tmp_path / "body"
    sent.write_bytes(body)
    answered, data = _post_file(server.url, sent, {"Content-Encoding": "gzip"}, tmp_path / "mask")
    assert answered == status and fragment in json.loads(data)["error"], data
    assert server.app.state.uploads.depth == 0


def test_an_answered_upload_leaves_nothing_behind(server_factory, tmp_path):
    """Once an upload is answered, the server holds nothing of it, even while the garbage
    collector does not run (a reference cycle through its queue entry would keep its volume and
    labels alive after the byte budget had been given them back)."""
    import gc

    hu = _volume(32, 512)
    upload = tmp_path / "ct.npy"
    np.save(upload, hu)
    server = server_factory(max_batch=4, max_body_bytes=64 << 20)
    assert _post_file(server.url, upload, {}, tmp_path / "warm.npy")[0] == 200  # lazy imports done
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        status, data = _post_file(server.url, upload, {}, tmp_path / "mask.npy")
        left = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert status == 200, data
    # a quarter of the volume: its labels (half of it, uint8) or the volume itself would be more.
    # What else waits for the collector is the server's own bookkeeping of the request, thousands
    # of small objects in cycles (anyio's thread calls, asyncio's handles, starlette's middleware;
    # seen with tracemalloc), up to about 2 MiB as the body's arrival splits it into more awaits
    assert left < hu.nbytes // 4, f"{left / 2**20:.1f} MiB left after a volume of {hu.nbytes / 2**20:.1f} MiB"


def test_an_upload_whose_gzip_data_is_corrupt_is_400(server_factory, tmp_path):
    """A gzip file (not a Content-Encoding) whose header is sound and whose deflate data is not:
    one error naming it, not a 500 (zlib's own error escaped the format sniffing)."""
    corrupt = bytearray(gzip.compress(b"x" * 5000))
    corrupt[12:20] = b"\xff" * 8
    sent = tmp_path / "ct.nii.gz"
    sent.write_bytes(bytes(corrupt))
    server = server_factory(max_batch=4)
    status, data = _post_file(server.url, sent, {}, tmp_path / "mask")
    assert status == 400, data
    assert json.loads(data) == {"error": "upload is a gzip stream that cannot be decompressed"}
