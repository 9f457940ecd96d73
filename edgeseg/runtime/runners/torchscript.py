"""TorchScript runner: only where torch is installed (the training machine, a torch server)."""

from __future__ import annotations

import numpy as np

from edgeseg.errors import BackendError
from edgeseg.runtime.runners.base import ArtifactRunner, engine_message, writeable


class TorchScriptRunner(ArtifactRunner):
    """Run a ``model.ts`` artifact with torch on the CPU (``pip install 'edgeseg[train]'``)."""

    name = "torchscript"
    format = "torchscript"
    precisions = ("fp32",)
    library = "torch"
    extra = "train"
    preference = {"fp32": 9}
    # auto's probe loads and runs every candidate: a bundle from elsewhere must not get to run a
    # program through it (ONNX graphs, OpenVINO and TensorRT engines hold no such operations)
    named_only = ("a TorchScript program can run any torch operation, files included; it runs only when named "
                  "(--backend torchscript)")
    # the name parity reports have always used for this run
    run_on = "torch-jit-cpu"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._torch = self.import_library("the TorchScript backend")
        if self.threads > 0:
            self._torch.set_num_threads(self.threads)
        try:
            self._module = self._torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as exc:  # torch.jit raises RuntimeError with C++ traces
            raise BackendError(f"torchscript could not load {self.path.name}: {engine_message(exc)}") from None

    @property
    def threads_used(self) -> int | None:
        # process-wide in torch: the count it computes with now, whoever set it last
        return self._torch.get_num_threads()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._module(self._torch.from_numpy(writeable(batch))).float().numpy()

    def _release(self) -> None:
        self._module = None
