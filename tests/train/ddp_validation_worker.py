"""Run by test_distributed_validation.py under ``torchrun --nproc-per-node 2``: a short training
on a phantom with three validation cases, so that the two processes share them unevenly.

Each process records every file-system write it made (ddp_worker's audit hook): the validation
predictions it kept show which cases it predicted. A helper program, not a test file: the
assertions on what it wrote are in test_distributed_validation.py.
"""

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

from edgeseg.train import distributed  # noqa: E402
from edgeseg.train.loop import train  # noqa: E402

# 8 cases split 4 / 3 / 1: three validation cases of 6 slices, 24 training slices (one step
# of 8 slices per process and epoch).
PHANTOM = "phantom:cases=8,seed=2,size=64,slices=6"


def config(out: Path, epochs: int):
    # Half of each batch from liver slices and a large first step: the first epoch's noisy
    # predictions give the cases a Dice above 0 and many components for the post-processing
    # choice to weigh (ddp_worker's settings predict background everywhere at first).
    return dataclasses.replace(ddp_worker.config(out, epochs), data=PHANTOM, fractions=(0.5, 0.375, 0.125), lr=0.02,
                               foreground_share=0.5, base=8)


def main(out: Path, epochs: int) -> None:
    writes: list[str] = []
    ddp_worker.record_writes(writes)
    place = distributed.place_from_env()
    train(config(out / "run", epochs), progress=False)
    (out / f"rank{place.rank}.json").write_text(json.dumps({"writes": writes}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
