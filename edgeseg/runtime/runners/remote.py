"""Remote runner: the network runs on a KServe v2 server (``edgeseg serve`` or Triton).

Pre- and post-processing stay local (in the Segmenter); each batch goes to
``/v2/models/NAME/infer`` as FP32 NCHW ``image`` in the binary tensor data extension and the
``logits`` come back the same way. The address is given as
``http://HOST:PORT/models/NAME`` (``/v2/models/NAME`` and ``/versions/V`` are accepted too).
Only the standard library is used. ``grpc://HOST:PORT/models/NAME`` speaks the KServe v2 gRPC
protocol instead (``edgeseg.runtime.runners.remote_grpc``, edgeseg[grpc]), with the same checks.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import numpy as np

from edgeseg.errors import BackendError
from edgeseg.runtime.manifest import TensorInfo
from edgeseg.runtime.runners.base import Runner

_PATH = re.compile(r"^(?:/v2)?/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$")
_HEADER_LENGTH = "Inference-Header-Content-Length"
_FLOATS = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2")}
# Seconds to wait for a server's answer unless told otherwise
DEFAULT_TIMEOUT_S = 60.0
#: the keys of a server's provenance record (``edgeseg serve`` sends it in its model metadata and
#: every response's parameters) that say which model and software ran there; recorded as
#: ``server_KEY`` beside the local record (edgeseg.runtime.provenance)
SERVER_KEYS = ("software_version", "manifest_sha256", "artifact", "artifact_sha256", "backend", "precision", "device",
               "backend_version")
# A value longer than this, or not printable ASCII, is no provenance a server should send: it is
# left out rather than written into a NIfTI header or a DICOM SEG.
_SERVER_VALUE = re.compile(r"[ -~]{1,128}")


def is_remote(backend: str) -> bool:
    """True when ``backend`` names a server address rather than a local backend."""
    return backend.strip().lower().startswith(("http://", "https://", "grpc://"))


def check_remote_timeout(timeout, backend) -> float:
    """``timeout`` as seconds for the remote ``backend``; BackendError for one that is not a
    positive finite number, or for a backend that is not remote (None), which would ignore it."""
    if backend is None:
        raise BackendError("a timeout applies to a remote backend (http:// or grpc://HOST:PORT/models/NAME) only")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise BackendError(f"a remote backend's timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _dims(shape) -> list[int]:
    """A KServe shape: a list of whole numbers (-1 for a variable axis); ValueError otherwise,
    where ``int()`` would have turned 64.5 into 64 and "64" into 64."""
    if not isinstance(shape, list) or not all(type(n) is int and n >= -1 for n in shape):
        raise ValueError(f"shape {shape!r} is not a list of whole numbers")
    return shape


def host_port(host: str, port: int) -> str:
    """``HOST:PORT`` as URLs and gRPC targets write it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def parse_address(url: str) -> tuple[str, str, int, str]:
    """``http://HOST:PORT/models/NAME`` -> (scheme, host, port, model path prefix); ``https`` and
    ``grpc`` (whose PORT must be given: gRPC has no usual one) likewise."""
    parts = urllib.parse.urlsplit(url.strip())
    match = _PATH.match(parts.path)
    try:
        port = parts.port  # ValueError for a port that is not a number in 0..65535
    except ValueError:
        port = -1
    if parts.scheme == "grpc" and port is None:
        port = -1
    if parts.scheme not in ("http", "https", "grpc") or not parts.hostname or match is None or port in (-1, 0):
        raise BackendError("remote backend must look like http://HOST:PORT/models/NAME or grpc://HOST:PORT/models/NAME "
                           f"(PORT 1..65535), got {url!r}")
    prefix = f"/v2/models/{match['model']}" + (f"/versions/{match['version']}" if match["version"] else "")
    port = port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, prefix


class RemoteRunner(Runner):
    """Send batches to a KServe v2 model and return its logits.

    Args:
        url: ``http://HOST:PORT/models/NAME``.
        input_info, output_info, max_batch: the bundle's tensors and batch limit; the server's
            model metadata must agree with them, or loading fails with BackendError.
        timeout: seconds to wait for one response.
        artifacts, labels: the bundle's artifact sha256s and classes. Where the server says which
            model file it runs and what its classes are (``edgeseg serve`` does, in the model's
            metadata parameters), they must be the bundle's: a server running another model with
            the same tensors would otherwise give its masks under this bundle's names. Its batch
            limit (``max_batch``) splits larger batches into several requests.
    """

    name = "remote"

    def __init__(self, url: str, input_info: TensorInfo, output_info: TensorInfo, max_batch: int, threads: int = 0,
                 timeout: float = DEFAULT_TIMEOUT_S, artifacts: tuple[str, ...] = (), labels: dict[int, str] | None = None) -> None:
        super().__init__(input_info, output_info, max_batch, threads, precision="server", artifact=url)
        self._scheme, self._host, self._port, self._prefix = parse_address(url)
        self._timeout = check_remote_timeout(timeout, url)
        self._connection = None  # an http.client connection, opened on the first request
        self._artifacts, self._labels = tuple(artifacts), labels
        self._server_batch = 0  # the server's batch limit, where it says one (0: none said)
        #: what the server says it runs (SERVER_KEYS), from its metadata, then its latest response
        self.served: dict[str, str] = {}
        self._check_metadata()

    @property
    def device(self) -> str:
        return host_port(self._host, self._port)

    @property
    def run_on(self) -> str:
        return f"remote-{self.device}"

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange on the kept-alive connection; (status, lower-cased headers, body)."""
        # Imported here: every process that segments imports this module (the registry and
        # Segmenter.load look for remote addresses), and http.client brings ssl and email.
        import http.client

        lost = ""
        for _ in range(2):  # a server may close an idle kept-alive connection: reconnect once
            if self._connection is None:
                cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
                self._connection = cls(self._host, self._port, timeout=self._timeout)
            try:
                self._connection.request(method, path, body=body, headers=headers or {})
                response = self._connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._disconnect()
                lost = f"connection lost ({exc})"
            except TimeoutError:  # a server that takes the connection and never answers
                self._disconnect()
                raise BackendError(f"remote {self._scheme}://{self.device}: no answer within {self._timeout:g} s "
                                   "(the remote backend's timeout)") from None
            except OSError as exc:
                self._disconnect()
                raise BackendError(f"remote: cannot reach {self._scheme}://{self.device} ({exc})") from None
        raise BackendError(f"remote {self.device}: {lost}")

    def _metadata(self) -> dict:
        """The model's KServe v2 metadata as JSON gives it (``parameters`` included, where sent)."""
        status, _, body = self._request("GET", self._prefix)
        if status != 200:
            raise BackendError(f"remote {self.device}{self._prefix}: {_server_error(status, body)}")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise BackendError(f"remote {self.device}{self._prefix}: model metadata is not KServe v2 JSON") from None

    def _check_metadata(self) -> None:
        meta = self._metadata()
        try:
            served = [(t["name"], t["datatype"], _dims(t["shape"])) for t in (meta["inputs"][0], meta["outputs"][0])]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            raise BackendError(f"remote {self.device}{self._prefix}: model metadata is not KServe v2 JSON") from None
        for (name, datatype, shape), info in zip(served, (self.input_info, self.output_info)):
            # Triton leaves the batch axis out of the shape when the model batches.
            dims = shape[1:] if len(shape) == len(info.shape) else shape
            # The request always carries FP32; the logits may come back in any float type.
            wanted = ("FP32",) if info is self.input_info else tuple(_FLOATS)
            if name != info.name or datatype not in wanted or list(dims) != list(info.shape[1:]):
                raise BackendError(f"remote {self.device}{self._prefix} serves {name} {datatype} {shape}; "
                                   f"the bundle needs {info.name} float {list(info.shape)}")
        self._check_identity(meta.get("parameters"))

    def _check_identity(self, parameters) -> None:
        """The server's model is the bundle's, where its metadata says which it is."""
        where = f"remote {self.device}{self._prefix}"
        if not isinstance(parameters, dict):
            return
        self._note_served(parameters)
        labels = parameters.get("labels")
        if self._labels is not None and isinstance(labels, dict):
            wanted = {str(k): v for k, v in sorted(self._labels.items())}
            if labels != wanted:
                raise BackendError(f"{where} names its classes {labels}; the bundle names them {wanted}")
        limit = parameters.get("max_batch")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self._server_batch = limit

    def _note_served(self, parameters) -> None:
        """Keep what the server says it ran (metadata or response ``parameters``); BackendError for a
        model file that is not one of the bundle's (a server whose model was swapped since loading
        would otherwise give its masks under this bundle's names)."""
        if not isinstance(parameters, dict):
            return
        served = parameters.get("artifact_sha256")
        if self._artifacts and isinstance(served, str) and served not in self._artifacts:
            raise BackendError(f"remote {self.device}{self._prefix} runs another model (artifact sha256 {served[:12]}...) "
                               "than this bundle holds; give the bundle the server serves")
        found = {key: value for key in SERVER_KEYS
                 if isinstance(value := parameters.get(key), str) and _SERVER_VALUE.fullmatch(value)}
        if found:
            self.served = found

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        step = self._server_batch or len(batch)
        if len(batch) > step:  # more slices than the server takes in one request
            return np.concatenate([self._infer(batch[i:i + step]) for i in range(0, len(batch), step)])
        return self._send(batch)

    def _send(self, batch: np.ndarray) -> np.ndarray:
        """The logits of one request of ``batch`` (within the server's batch limit)."""
        raw = batch.astype("<f4", copy=False).tobytes()
        header = json.dumps({
            "inputs": [{"name": self.input_info.name, "shape": list(batch.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": self.output_info.name, "parameters": {"binary_data": True}}],
        }, separators=(",", ":")).encode()
        status, headers, body = self._request("POST", self._prefix + "/infer", header + raw, {
            "Content-Type": "application/octet-stream", _HEADER_LENGTH: str(len(header))})
        if status != 200:
            raise BackendError(f"remote {self.device}{self._prefix}: {_server_error(status, body)}")
        return self._decode(headers, body, batch.shape[0])

    def _decode(self, headers: dict[str, str], body: bytes, rows: int) -> np.ndarray:
        """The logits of a KServe v2 response; BackendError for anything a server should not send."""
        try:
            return self._decode_logits(headers, body, rows)
        except BackendError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
            raise BackendError(f"remote {self.device}: malformed response ({' '.join(str(exc).split())[:160]})") from None

    def _decode_logits(self, headers: dict[str, str], body: bytes, rows: int) -> np.ndarray:
        length = int(headers.get(_HEADER_LENGTH.lower(), len(body)))
        if not 0 <= length <= len(body):
            raise BackendError(f"remote {self.device}: {_HEADER_LENGTH} {length} is outside the response")
        try:
            doc = json.loads(body[:length])
            [out] = [o for o in doc["outputs"] if o["name"] == self.output_info.name]
            dtype, shape = _FLOATS[out["datatype"]], tuple(_dims(out["shape"]))
        except (ValueError, KeyError, TypeError):
            raise BackendError(f"remote {self.device}: the response holds no float {self.output_info.name!r} output") from None
        self._check_shape(shape, rows)
        self._note_served(doc.get("parameters"))
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            logits = np.asarray(out["data"], dtype=dtype).reshape(shape)
        elif int(size) != int(np.prod(shape)) * dtype.itemsize or len(body) - length < int(size):
            raise BackendError(f"remote {self.device}: binary logits of {size} bytes do not fit shape {list(shape)}")
        else:
            logits = np.frombuffer(body, dtype=dtype, count=int(np.prod(shape)), offset=length).reshape(shape)
        return self._check_finite(logits)

    def _check_shape(self, shape: tuple, rows: int) -> None:
        """BackendError unless the logits' ``shape`` is that of a batch of ``rows``."""
        if shape != (rows, *self.output_info.shape[1:]):
            raise BackendError(f"remote {self.device}: logits of shape {list(shape)} for a batch of {rows}")

    def _check_finite(self, logits: np.ndarray) -> np.ndarray:
        """``logits``, checked here so that the error names the server: post-processing would
        refuse the same values as bad input data."""
        if not np.isfinite(logits).all():
            raise BackendError(f"remote {self.device}: the server's logits hold NaN or infinite values")
        return logits

    def _release(self) -> None:
        self._disconnect()

    def _disconnect(self) -> None:
        """Drop the kept-alive connection; the next request opens a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def remote_runner(url: str, *args, **kwargs) -> RemoteRunner:
    """The runner for the address ``url``: gRPC for ``grpc://``, HTTP otherwise (same arguments)."""
    if url.strip().lower().startswith("grpc://"):
        from edgeseg.runtime.runners.remote_grpc import GrpcRemoteRunner

        return GrpcRemoteRunner(url, *args, **kwargs)
    return RemoteRunner(url, *args, **kwargs)


def _server_error(status: int, body: bytes) -> str:
    """The server's error message (KServe v2 puts it in ``{"error": ...}``), or the status."""
    try:
        return f"HTTP {status}: {json.loads(body)['error']}"
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"
