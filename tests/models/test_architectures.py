"""The shared tester: every registered architecture, parametrised from the registry.

Shapes, clear rejection of unusable sizes, traced == eager, ONNX (ONNX Runtime) == eager, and an
INT8 bundle made by the real export pipeline that passes the parity gate on phantom CT.
"""

import numpy as np
import pytest
import torch

from edgeseg.errors import ModelConfigError
from edgeseg.models import MODELS, ModelConfig, build_model
from edgeseg.spec import PreprocessSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = sorted(MODELS)
TRAIN_DATA = "phantom:cases=4,size=64,slices=16"
GATE_TRAIN_DATA = "phantom:cases=8,size=64,slices=16"
CALIB_DATA = "phantom:cases=3,size=64,slices=16,seed=5"


# Softmax outputs, and region-based ones (one sigmoid logit per region under the scores head).
HEADS = {"softmax": None, "regions": ((1, 2), (2,))}


def tiny(name: str, depth: int = 3, classes: int = 3, regions=None):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=classes, base=4, depth=depth, regions=regions)).eval()
    # Non-trivial batch-norm statistics, so eval-mode outputs differ between layers' paths.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_output_shape_and_traced_equals_eager(name, size, head):
    model = tiny(name, regions=HEADS[head])
    x = torch.randn(2, 1, *size)
    other = torch.randn(3, 1, *size)  # a different batch size through the traced graph
    with torch.no_grad():
        eager = model(x)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), eager)
        torch.testing.assert_close(traced(other), model(other))
    assert eager.shape == (2, 3, *size)
    assert torch.isfinite(eager).all() and eager.std() > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size, suggestion", [((250, 256), "256x256"), ((100, 37), "112x48"), ((8, 16), "16x16")])
def test_unusable_size_is_one_line_error_naming_the_padded_size(name, size, suggestion):
    model = tiny(name, depth=4)
    with pytest.raises(ModelConfigError, match=f"divisible by 16.*pad it to {suggestion}") as info:
        model(torch.zeros(1, 1, *size))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", NAMES)
def test_onnx_equals_eager(name, tmp_path, head):
    from edgeseg.export.onnx_export import export_onnx, run_onnx

    model = tiny(name, regions=HEADS[head])
    x = torch.randn(2, 1, 48, 64)
    export_onnx(model, x, PreprocessSpec(size=(48, 64)), {0: "background", 1: "a", 2: "b"}, tmp_path / "m.onnx")
    batch = np.random.default_rng(1).standard_normal((3, 1, 48, 64)).astype(np.float32)
    with torch.no_grad():
        eager = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", batch), eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bad_widths_are_refused_naming_the_field(name):
    for kwargs, fragment in [({"num_classes": 1}, "num_classes"), ({"depth": 0}, "depth"), ({"base": 0}, "base")]:
        with pytest.raises(ModelConfigError, match=fragment):
            build_model(ModelConfig(name=name, **kwargs))


# Every architecture with softmax outputs, and the recipe's with the region head (the same module
# on every architecture, traced and exported above). One region (the liver's sigmoid): on this
# phantom, in 15 epochs, two regions (liver + spine, spine) stay near 0 Dice where softmax
# reaches 0.9 (docs/recipes.md), and a half-trained model makes the gate a coin toss.
GATE_CASES = [pytest.param(name, None, id=name) for name in NAMES] + [pytest.param("mobile_unet", [[1]], id="mobile_unet-regions")]


@pytest.mark.parametrize("name, regions", GATE_CASES)
def test_int8_export_passes_the_gate_on_phantom(name, regions, tmp_path):
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    cfg = TrainConfig(data=GATE_TRAIN_DATA, out=str(tmp_path / "run"), model=name, size=64, base=8, depth=2,
                      regions=regions, epochs=15, batch_size=8, lr=5e-3, augment=False, seed=0)
    result = train(cfg, progress=False)
    # A model that has learned the phantom (val Dice 0.96-0.98 by architecture). A half-trained
    # one (val Dice 0.4-0.9 after five epochs) puts many pixels near its decision boundary, and
    # whether INT8 moves 1% of its mask then depends on the batch order it happened to see.
    assert result["best"]["val_dice"] > 0.9
    settings = ExportSettings(formats=("onnx",), int8=True, calib_slices=16, verify_slices=16, max_batch=2)
    bundle = export_bundle(tmp_path / "run" / "best.pt", tmp_path / "bundle", settings, calib=CALIB_DATA,
                           cache_dir=tmp_path / "cache", progress=False, echo=lambda text: None)
    assert bundle["parity"]["passed"]
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.model["name"] == name and manifest.model.get("regions") == regions
    assert manifest.regions == (regions is not None)
    assert ("onnx", "int8") in {(a.format, a.precision) for a in manifest.artifacts}
