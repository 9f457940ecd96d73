"""U-Net variants: shapes, size checks, tracing, parameter counts."""

import pytest
import torch

from edgeseg.errors import ModelConfigError
from edgeseg.models import MODELS, ModelConfig, build_model, count_parameters
from edgeseg.models.unet import UNet


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_output_shape_and_traced_output_equal_eager(name, size):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=3, base=4, depth=3)).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        eager = model(x)
        traced = torch.jit.trace(model, x)
        other = torch.randn(3, 1, *size)  # a different batch size through the traced graph
        torch.testing.assert_close(traced(x), eager)
        torch.testing.assert_close(traced(other), model(other))
    assert eager.shape == (2, 3, *size)


@pytest.mark.parametrize("size, suggestion", [((250, 256), "256x256"), ((100, 37), "112x48"), ((8, 16), "16x16")])
def test_size_not_divisible_names_the_padded_size(size, suggestion):
    model = UNet(base=4, depth=4).eval()
    with pytest.raises(ModelConfigError, match=f"divisible by 16.*pad it to {suggestion}"):
        model(torch.zeros(1, 1, *size))


def test_default_config_matches_the_ronneberger_widths():
    model = build_model(ModelConfig())
    assert model.stem[0][0].out_channels == 32
    assert model.down[-1][1][0].out_channels == 32 * 2**4
    # The classic U-Net at base 64 has ~31 M parameters; base 32 has a quarter of that.
    assert 7.0e6 < count_parameters(model) < 8.5e6


def test_residual_block_projects_when_widths_differ_and_starts_near_identity():
    from edgeseg.models.blocks import ResidualBlock

    block = ResidualBlock(4, 4).eval()
    x = torch.relu(torch.randn(1, 4, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)  # zero-initialised last BN: the shortcut alone
    assert isinstance(ResidualBlock(4, 8).shortcut, torch.nn.Sequential)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"num_classes": 1}, "num_classes"), ({"depth": 0}, "depth"), ({"base": 0}, "base"), ({"block": "dense"}, "block")],
)
def test_bad_config_raises_value_error_naming_the_field(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        UNet(**kwargs)
    with pytest.raises(ModelConfigError, match="unknown model"):
        build_model(ModelConfig(name="segformer"))
