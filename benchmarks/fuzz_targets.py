"""Seeds and targets of the input fuzzing campaign (``fuzz_inputs``): one Target per format.

Seeds are the samples in ``tests/data`` and files derived from them (a cropped NIfTI, the same
pixels as ``.npy`` and PNG, the CT series cut to 64 x 64 pixels), plus a tiny checkpoint and
bundle made here. A Target knows its seed, its header-field mutators, how a case is laid out
on disk, and the public entry point that reads it (the CLI for data sources, the readers
``predict`` uses, ``read_label_file``, ``Segmenter.load`` and ``load_model``).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fuzz_mutations as fm

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
FILE_FORMATS = ("dicom", "nifti", "nrrd", "npy", "png", "jpeg", "dicom-seg", "manifest", "checkpoint")


@dataclass
class Target:
    """One format: its seed bytes, its field mutators, and how a case is laid out and run."""

    name: str
    seed: bytes
    field_mutators: tuple
    write: callable  # (case folder, mutated bytes, rng) -> the path the entry point takes
    run: callable  # (path) -> None, raising on failure; runs in the forked child
    field_share: float = 0.5


# ---------------------------------------------------------------- seeds and targets

def _import_cli() -> None:
    """Import what ``edgeseg data info`` runs in the parent, so forked children start warm."""
    import edgeseg.cli.data  # noqa: F401
    import edgeseg.cli.main  # noqa: F401
    import edgeseg.data.open  # noqa: F401


def _cli(*args) -> None:
    """Run the edgeseg CLI in this process; exit 2 with one error line is a clean error."""
    from edgeseg.cli.main import cli

    cli.main(list(map(str, args)), prog_name="edgeseg", standalone_mode=True)


def _derived_seeds(work: Path) -> dict[str, Path]:
    """Small seeds made from tests/data: a cropped NIfTI, the same pixels as .npy and PNG."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    source = nib.load(DATA / "totalseg_example_ct" / "example_ct_sm.nii.gz")
    crop = np.asarray(source.dataobj)[:24, :20, :6].astype(np.int16)
    nifti = work / "seed.nii"
    nib.save(nib.Nifti1Image(crop, source.affine), nifti)
    npy = work / "seed.npy"
    np.save(npy, crop.transpose(2, 1, 0).astype(np.float32))
    png = work / "seed.png"
    with Image.open(sorted((DATA / "msd_liver_slices" / "images").iterdir())[0]) as jpeg:
        jpeg.convert("L").resize((48, 48)).save(png)
    return {"nifti": nifti, "npy": npy, "png": png}


def _cropped_series(source: Path, out: Path) -> Path:
    """The tests/data CT series cut to its central 64 x 64 pixels: the same headers, a faster case."""
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        top, left = (rows - 64) // 2, (columns - 64) // 2
        dataset.PixelData = dataset.pixel_array[top:top + 64, left:left + 64].copy().tobytes()
        dataset.Rows, dataset.Columns = 64, 64
        dataset.save_as(out / path.name)
    return out


def _reference_series():
    from edgeseg.data.dicom import read_dicom_series_with_refs

    return read_dicom_series_with_refs(DATA / "dcmqi_ct_liver" / "ct-3slice")


def build_target(name: str, work: Path) -> Target:
    """The Target of format ``name``, with seeds under ``work``; heavy set-up happens here, once."""
    dicom_dir = DATA / "dcmqi_ct_liver" / "ct-3slice"
    _import_cli()
    if name == "dicom":
        small = _cropped_series(dicom_dir, work / "dicom-seed")
        seed = (small / "03.dcm").read_bytes()

        def write(case, data, rng):
            series = case / "series"
            series.mkdir()
            for other in ("01.dcm", "02.dcm"):
                os.link(small / other, series / other)
            (series / "03.dcm").write_bytes(data)
            return series

        return Target(name, seed, (fm.dicom_field,), write, lambda path: _cli("data", "info", path, "--quiet"), 0.6)
    if name in ("nifti", "npy", "png", "jpeg"):
        derived = _derived_seeds(work) if name != "jpeg" else {}
        source = derived.get(name) or sorted((DATA / "msd_liver_slices" / "images").iterdir())[0]
        mutators = {"nifti": (fm.nifti_field,), "npy": (fm.npy_field,), "png": (fm.png_field,), "jpeg": (fm.jpeg_field,)}
        suffix = {"nifti": ".nii", "npy": ".npy", "png": ".png", "jpeg": ".jpg"}[name]

        def write(case, data, rng):
            if name == "nifti" and rng.random() < 0.3:
                path = case / "case.nii.gz"
                path.write_bytes(gzip.compress(data, compresslevel=1))
            else:
                path = case / f"case{suffix}"
                path.write_bytes(data)
            return path

        if name == "nifti":
            run = lambda path: _cli("data", "info", path, "--quiet")  # noqa: E731
        else:
            from edgeseg.runtime.readers import read_input

            run = lambda path: read_input(path)  # noqa: E731
        return Target(name, source.read_bytes(), mutators[name], write, run)
    if name in ("nrrd", "dicom-seg"):
        from edgeseg.data.labels import read_label_file

        volume, refs = _reference_series()
        seed_path = DATA / "dcmqi_ct_liver" / ("liver_seg.nrrd" if name == "nrrd" else "liver.dcm")
        suffix = ".nrrd" if name == "nrrd" else ".dcm"

        def write(case, data, rng):
            (case / f"label{suffix}").write_bytes(data)
            return case / f"label{suffix}"

        mutators = (fm.nrrd_field,) if name == "nrrd" else (fm.dicom_field,)
        return Target(name, seed_path.read_bytes(), mutators, write, lambda path: read_label_file(path, volume, refs))
    if name == "manifest":
        bundle = make_fuzz_bundle(work)

        def write(case, data, rng):
            copy = case / "bundle"
            copy.mkdir()
            for item in bundle.iterdir():
                if item.name != "manifest.json":
                    os.link(item, copy / item.name)
            (copy / "manifest.json").write_bytes(data)
            return copy

        def run(path):
            from edgeseg.runtime.segmenter import Segmenter

            Segmenter.load(path, backend="onnxruntime", threads=1).close()

        return Target(name, (bundle / "manifest.json").read_bytes(), (fm.json_field,), write, run, 0.7)
    if name == "checkpoint":
        return _checkpoint_target(work)
    raise ValueError(f"unknown file format {name!r}; known: {', '.join(FILE_FORMATS)}")


def _checkpoint_target(work: Path) -> Target:
    """Checkpoints: byte damage of the torch archive, and payload edits saved as valid archives."""
    import io

    import torch

    from edgeseg.models import ModelConfig, build_model
    from edgeseg.spec import PreprocessSpec
    from edgeseg.models.checkpoint import load_model, save_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig(num_classes=2, base=4, depth=2)
    path = work / "seed.pt"
    save_checkpoint(path, build_model(config), config, PreprocessSpec(window=(-200.0, 300.0), size=(64, 64)),
                    ["background", "liver"], epoch=1)
    payload = torch.load(path, weights_only=True)

    def payload_edit(data, rng):
        edited = dict(payload)
        key = rng.choice(sorted(edited))
        if rng.random() < 0.2:
            del edited[key]
        elif key == "state_dict":
            state = dict(edited[key])
            name = rng.choice(sorted(state))
            action = rng.randrange(4)
            if action == 0:
                del state[name]
            elif action == 1:
                state[name] = torch.zeros(rng.choice(((1,), (3, 3), (0,), (2, 2, 2, 2, 2))))
            elif action == 2:
                state[name] = state[name].to(rng.choice((torch.float16, torch.int64, torch.bool, torch.complex64)))
            else:
                state[name + ".extra"] = torch.zeros(2)
            edited[key] = state
        elif isinstance(edited[key], dict):
            edited[key] = fm.edit_json(edited[key], rng)
        else:
            edited[key] = rng.choice(fm.JSON_VALUES)
        out = io.BytesIO()
        torch.save(edited, out)
        return out.getvalue()

    def write(case, data, rng):
        (case / "model.pt").write_bytes(data)
        return case / "model.pt"

    return Target("checkpoint", path.read_bytes(), (payload_edit,), write, lambda p: load_model(p), 0.6)


def make_fuzz_bundle(work: Path) -> Path:
    """A tiny real bundle (untrained U-Net base 4, 64x64, ONNX FP32) written by edgeseg.export, in a subprocess."""
    out = work / "bundle"
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "random_bundle.py"), str(out), "--base", "4",
                        "--depth", "2", "--size", "64", "--max-batch", "4"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return out
