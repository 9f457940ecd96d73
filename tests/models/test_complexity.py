"""Parameter and FLOP counts: against a hand-computed small U-Net and a per-layer formula."""

import pytest
import torch

from edgeseg.models import MODELS, ModelConfig, build_model
from edgeseg.models.complexity import count_flops, describe


def test_flops_of_a_small_unet_match_the_hand_count():
    # U-Net base 2, depth 1, one input channel, two classes, 8x8 input; multiply-adds per layer:
    macs = (
        2 * 9 * 1 * 64 + 2 * 9 * 2 * 64  # stem: 3x3 1->2, 3x3 2->2 at 8x8
        + 4 * 9 * 2 * 16 + 4 * 9 * 4 * 16  # down: 3x3 2->4, 3x3 4->4 at 4x4
        + 4 * 2 * 4 * 16  # 2x2 stride-2 transposed conv 4->2 from 4x4
        + 2 * 9 * 4 * 64 + 2 * 9 * 2 * 64  # decode: 3x3 4->2, 3x3 2->2 at 8x8
        + 2 * 2 * 64  # 1x1 head 2->2
    )
    model = build_model(ModelConfig(name="unet", base=2, depth=1))
    assert count_flops(model, 1, 8, 8) == 2 * macs == 29184


def per_layer_macs(model, size) -> int:
    """Brute force from module hooks: each (transposed) conv's multiply-adds from its tensor shapes."""
    total = []

    def hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, torch.nn.ConvTranspose2d):
            total.append(inputs[0].numel() * module.out_channels // module.groups * k)
        else:
            total.append(output.numel() * module.in_channels // module.groups * k)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_flops_equal_twice_the_per_layer_multiply_adds(name):
    model = build_model(ModelConfig(name=name, base=8, depth=3))
    assert count_flops(model, 1, 32, 32) == 2 * per_layer_macs(model, 32)


def test_describe_reports_params_and_gflop_and_refuses_unusable_sizes():
    info = describe(ModelConfig(name="unet"), 256)
    assert info["params"] == sum(p.numel() for p in build_model(ModelConfig()).parameters())
    assert 23.5 < info["gflop"] < 24.5  # the default U-Net: ~24 GFLOP per 256x256 slice
    with pytest.raises(ValueError, match="pad it to 256x256"):
        describe(ModelConfig(name="unet"), 250)


def test_models_command_lists_every_architecture_with_its_cost():
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["models", "--size", "64", "--base", "8", "--depth", "3"])
    assert result.exit_code == 0, result.output
    lines = {ln.split()[0]: ln.split() for ln in result.output.splitlines()[2:]}
    assert sorted(lines) == sorted(MODELS)
    for name, cells in lines.items():
        info = describe(ModelConfig(name=name, base=8, depth=3), 64)
        assert cells[1] == f"{info['params'] / 1e6:.2f}" and cells[2] == f"{info['gflop']:.2f}"
    bad = GuardedCliRunner().invoke(cli, ["models", "--size", "60", "--depth", "3"])
    assert bad.exit_code == 2 and "pad it to 64x64" in bad.output


def test_train_selects_an_architecture_by_model_or_arch():
    from edgeseg.cli.train import command

    assert command.make_context("train", ["--arch", "mobile_unet"]).params["model"] == "mobile_unet"
    assert command.make_context("train", ["--model", "strided_resunet"]).params["model"] == "strided_resunet"


@pytest.mark.parametrize("name, base, depth, size", [("unet", 4, 2, 64), ("unet", 16, 3, 128), ("mobile_unet", 8, 3, 96)])
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_activation_estimate_is_close_to_what_autograd_saves(name, base, depth, size, amp):
    """The estimate against an oracle: the bytes of every tensor autograd keeps for the backward
    pass of a real training-mode forward pass (storages counted once), in float32 and under
    bfloat16 autocast (2 bytes a value)."""
    import contextlib

    from edgeseg.models.complexity import activation_bytes
    from edgeseg.models.registry import ModelConfig, build_model

    config = ModelConfig(name=name, num_classes=3, base=base, depth=depth)
    model = build_model(config).train()
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    autocast = torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(torch.randn(1, 1, size, size))
    ratio = activation_bytes(config, size, 4 if amp is None else 2) / sum(saved.values())
    assert 1.0 <= ratio < 1.6, ratio  # the leaf outputs: never under what is kept, at most about half over
