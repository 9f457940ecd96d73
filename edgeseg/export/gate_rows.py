"""One parity row: an artifact's logits on one runner against the FP32 reference, as the export's
gate and ``edgeseg gate`` both score it (one code path, so a runner scored after the export is
judged exactly as one scored during it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.export.verify import VerifySet, compare_logits
from edgeseg.progress import progress_bar
from edgeseg.runtime.manifest import ArtifactEntry, network_tensors
from edgeseg.spec import PreprocessSpec


@dataclass
class GateJudge:
    """What every row of one gate run is judged with: the held-out slices, the FP32 reference
    logits on them, the limits per precision, the drop metric and the structure check's settings
    (``compare_logits``' ``rules``, ``structure_px``, ``volume_filtered``)."""

    spec: PreprocessSpec
    labels: dict[int, str]
    batch: int
    verify_set: VerifySet
    reference: np.ndarray
    limits: dict[str, float]
    metric: str
    gate: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def row(self, entry: ArtifactEntry, logits: np.ndarray, images: slice | np.ndarray = slice(None)) -> dict:
        """``compare_logits`` of ``logits`` (of the held-out slices ``images`` picks) against the reference."""
        vs = self.verify_set
        pick = np.arange(len(vs.images))[images]
        return compare_logits(self.reference[pick], logits, None if vs.truth is None else vs.truth[pick],
                              entry.precision, self.limits[entry.precision],
                              [self.labels[c] for c in sorted(self.labels)], self.metric,
                              slice_cases=[vs.slice_cases[i] for i in pick],
                              case_slices=[vs.case_slices[i] for i in pick], **self.gate)


def runner_row(judge: GateJudge, folder: Path, entry: ArtifactEntry, cls) -> dict:
    """The parity row of ``entry`` on the runner class ``cls`` (loaded from ``folder``);
    EdgesegError when the runner does not load the artifact."""
    from edgeseg.export.stages import stage
    from edgeseg.runtime.segmenter import Segmenter

    inputs, outputs = network_tensors(judge.spec, len(judge.labels))
    runner = cls(folder / entry.file, entry, inputs, outputs, judge.batch)
    with stage(f"{entry.key}-{cls.name}"), Segmenter(judge.spec, judge.labels, runner) as segmenter:
        logits = gate_logits(segmenter.logits, judge.verify_set.images, judge.batch,
                             f"gate: {entry.key} on {cls.name}", judge.progress)
        row = judge.row(entry, logits)
        return {"key": entry.key, "file": entry.file, "sha256": entry.sha256, "precision": entry.precision,
                "runner": cls.name, "run_on": runner.run_on, **row}


def gate_logits(infer: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, what: str,
                progress: bool) -> np.ndarray:
    """``infer`` over ``images`` ``batch`` slices at a time, with a bar on stderr counting the
    slices: at a large spec size one artifact's pass over the held-out slices takes minutes."""
    parts = []
    with progress_bar(total=len(images), desc=what, unit="slice", shown=progress) as bar:
        for start in range(0, len(images), batch):
            parts.append(infer(images[start : start + batch]))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)
