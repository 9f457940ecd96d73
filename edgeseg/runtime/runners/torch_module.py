"""Torch runner: an in-memory ``torch.nn.Module``, the reference every exported artifact is
scored against (evaluation and the export gate run it through the same Segmenter)."""

from __future__ import annotations

import numpy as np

from edgeseg.runtime.manifest import TensorInfo
from edgeseg.runtime.runners.base import Runner, writeable


class TorchModuleRunner(Runner):
    """Run a PyTorch module in eval mode on the CPU (or ``device``), in float32.

    Args:
        module: the network; it is put in eval mode.
        input_info, output_info, max_batch, threads: as for :class:`Runner`.
        device: a torch device string, e.g. ``cpu`` or ``cuda:0``.
    """

    name = "torch"
    precisions = ("fp32",)
    library = "torch"
    extra = "train"

    def __init__(self, module, input_info: TensorInfo, output_info: TensorInfo, max_batch: int, threads: int = 0,
                 device: str = "cpu") -> None:
        super().__init__(input_info, output_info, max_batch, threads, precision="fp32", artifact="in-memory")
        self._torch = self.import_library("the torch backend")
        if self.threads > 0:
            self._torch.set_num_threads(self.threads)
        self._device = str(device)
        self._module = module.eval().to(self._device)

    @property
    def device(self) -> str:
        return self._device

    @property
    def threads_used(self) -> int | None:
        # process-wide in torch: the count it computes with now, whoever set it last
        return self._torch.get_num_threads() if self._device == "cpu" else None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self._module(torch.from_numpy(writeable(batch)).to(self._device)).float().cpu().numpy()

    def _release(self) -> None:
        self._module = None

