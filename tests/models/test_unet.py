"""The U-Net specifically: its widths, the residual block, and loading its old checkpoints."""

import pytest
import torch

from edgeseg.errors import ModelConfigError
from edgeseg.models import ModelConfig, build_model, count_parameters
from edgeseg.models.unet import UNet


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


def test_unknown_block_and_unknown_model_are_refused():
    with pytest.raises(ModelConfigError, match="block"):
        UNet(block="dense")
    with pytest.raises(ModelConfigError, match="unknown model 'segformer'; available: .*mobile_unet"):
        build_model(ModelConfig(name="segformer"))


# State-dict keys of the U-Net and residual U-Net as checkpoints before the registry stored them
# (base 2, depth 1): a checkpoint written then must keep loading.
OLD_KEYS = {
    "unet": ["stem.0.0.weight", "stem.1.0.weight", "down.0.0.0.weight", "down.0.1.0.weight", "up.0.weight",
             "up.0.bias", "decode.0.0.0.weight", "decode.0.1.0.weight", "head.weight", "head.bias"],
    "resunet": ["stem.conv1.0.weight", "stem.conv2.weight", "stem.bn2.weight", "stem.shortcut.0.weight",
                "stem.shortcut.1.weight", "down.0.conv1.0.weight", "down.0.shortcut.0.weight", "up.0.weight",
                "decode.0.conv1.0.weight", "decode.0.shortcut.1.running_mean", "head.weight"],
}


@pytest.mark.parametrize("name", sorted(OLD_KEYS))
def test_old_checkpoints_keep_loading(name, tmp_path):
    from edgeseg.models.checkpoint import load_model, save_checkpoint
    from edgeseg.spec import PreprocessSpec

    config = ModelConfig.from_dict({"name": name, "in_channels": 1, "num_classes": 2, "base": 2, "depth": 1})
    model = build_model(config)
    assert set(OLD_KEYS[name]) <= set(model.state_dict())
    save_checkpoint(tmp_path / "old.pt", model, config, PreprocessSpec(size=(16, 16)), ["background", "liver"])
    loaded, payload = load_model(tmp_path / "old.pt")
    assert payload["model"] == {"name": name, "in_channels": 1, "num_classes": 2, "base": 2, "depth": 1}
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_depthwise_conv_block_equals_a_per_channel_scipy_correlation():
    import numpy as np
    from scipy.signal import correlate2d

    from edgeseg.models.blocks import ConvBNReLU

    torch.manual_seed(0)
    block = ConvBNReLU(3, 3, groups=3).eval()  # fresh batch norm in eval mode: the identity
    x = torch.randn(1, 3, 9, 7)
    with torch.no_grad():
        out = block(x).numpy()[0]
    w = block[0].weight.detach().numpy()
    expected = [np.maximum(correlate2d(x[0, c].numpy(), w[c, 0], mode="same"), 0) for c in range(3)]
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-4, atol=1e-5)


def test_strided_depthwise_block_trains_in_float32_under_cpu_bf16_autocast():
    from edgeseg.models.blocks import ConvBNReLU

    torch.manual_seed(0)
    strided = ConvBNReLU(4, 4, stride=2, groups=4).train()
    plain = ConvBNReLU(4, 4, stride=1, groups=4).train()
    x = torch.randn(2, 4, 8, 8).bfloat16()
    # Reference: the same block in float32 without autocast, on the same (bf16-valued) input.
    reference = strided(x.float())
    reference.square().sum().backward()
    grad_reference = strided[0].weight.grad.clone()
    strided.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = strided(x)
        assert plain(x.float()).dtype == torch.bfloat16  # only the strided depthwise block leaves bf16
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    out.square().sum().backward()
    assert strided[0].weight.grad.dtype == torch.float32
    torch.testing.assert_close(strided[0].weight.grad, grad_reference, rtol=1e-6, atol=1e-6)
