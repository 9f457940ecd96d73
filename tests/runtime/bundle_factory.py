"""A small real bundle for the runtime tests and benchmarks (a test fixture, not the exporter).

``make_bundle`` trains a U-Net for a few steps on phantom slices (so its masks are not empty),
exports it with ``torch.onnx.export`` (dynamic batch), optionally adds a statically quantised
INT8 Q/DQ copy (ONNX Runtime quantisation, calibrated on phantom slices) and a TorchScript
trace, and writes ``manifest.json`` with the sha256 of each file. Run as a script to make the
benchmark model: ``python tests/runtime/bundle_factory.py OUT --base 32 --depth 4 --size 256``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from edgeseg.data.phantom import PHANTOM_LABELS, synth_phantom
from edgeseg.kernels import preprocess
from edgeseg.runtime.manifest import ArtifactEntry, Manifest, TensorInfo, sha256_file
from edgeseg.spec import PreprocessSpec

LABELS = {0: "background", **{value: name for name, value in PHANTOM_LABELS.items()}}


def phantom_slices(size: int, cases: int = 2, slices: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) HU slices and their labels from phantom volumes."""
    volumes = [synth_phantom(f"case_{k:03d}", seed, shape=(slices, size, size)) for k in range(cases)]
    return (np.concatenate([v.hu for v in volumes]).astype(np.float32),
            np.concatenate([v.label for v in volumes]).astype(np.int64))


def _train(model, spec: PreprocessSpec, steps: int, seed: int, num_classes: int) -> None:
    import torch

    hu, labels = phantom_slices(spec.size[0], seed=seed)
    x = torch.from_numpy(preprocess(hu, spec))
    y = torch.from_numpy(np.where(labels < num_classes, labels, 0))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: more threads only contend on a busy machine
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    model.eval()


def _quantize_int8(fp32: Path, out: Path, spec: PreprocessSpec) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    hu, _ = phantom_slices(spec.size[0], cases=1, slices=8, seed=1)
    batches = iter([{"image": preprocess(s, spec)} for s in hu])

    class PhantomReader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    quantize_static(str(fp32), str(out), PhantomReader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)


def make_bundle(out: str | Path, *, base: int = 8, depth: int = 2, size: int = 64, steps: int = 40,
                int8: bool = True, torchscript: bool = True, max_batch: int = 8, seed: int = 0,
                classes: int = len(LABELS)) -> Path:
    """Write a bundle to ``out`` and return its path (see the module docstring); ``classes``
    keeps the first phantom labels (2: background and liver, like the default liver model)."""
    import torch

    from edgeseg.models.registry import ModelConfig, build_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = {k: v for k, v in LABELS.items() if k < classes}
    config = ModelConfig(num_classes=classes, base=base, depth=depth)
    spec = PreprocessSpec(window=(-200.0, 300.0), size=(size, size))
    model = build_model(config)
    if steps:
        _train(model, spec, steps, seed, classes)
    example = torch.zeros(1, 1, size, size)
    files = [("model.onnx", "onnx", "fp32")]
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(out / "model.onnx"), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    if int8:
        _quantize_int8(out / "model.onnx", out / "model.int8.onnx", spec)
        files.append(("model.int8.onnx", "onnx", "int8"))
    if torchscript:
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(out / "model.ts"))
        files.append(("model.ts", "torchscript", "fp32"))
    artifacts = tuple(ArtifactEntry(file=name, format=fmt, precision=precision, sha256=sha256_file(out / name),
                                    bytes=(out / name).stat().st_size) for name, fmt, precision in files)
    manifest = Manifest(
        spec=spec, labels=labels, model=config.to_dict(), postprocess={"keep_largest": True},
        inputs=(TensorInfo("image", (-1, 1, size, size)),), outputs=(TensorInfo("logits", (-1, classes, size, size)),),
        artifacts=artifacts, max_batch=max_batch, edgeseg_version="0.1.0", source={"fixture": "tests/runtime"},
    )
    (out / "manifest.json").write_text(manifest.to_json())
    (out / "parity.json").write_text(json.dumps({"note": "test fixture; no parity gate"}) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--base", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--classes", type=int, default=2)
    args = parser.parse_args()
    print(make_bundle(args.out, base=args.base, depth=args.depth, size=args.size, steps=args.steps,
                      classes=args.classes, torchscript=False))
