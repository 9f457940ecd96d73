"""Region models: the scores head's argmax against a brute-force numpy copy of nnU-Net's decoding
(random and adversarial logits, ties at 0 included), under each argmax the runtime uses (numpy,
torch, the C post-processing kernel); the head's inverse; the regions' checks; the model config."""

import itertools

import numpy as np
import pytest
import torch
from scipy.special import expit

from edgeseg.errors import ModelConfigError
from edgeseg.kernels import postprocess
from edgeseg.models import ModelConfig, build_model
from edgeseg.models.region_order import check_regions, parse_regions
from edgeseg.models.regions import region_logits, region_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nnunet_decode(r: np.ndarray, regions_class_order: list[int]) -> np.ndarray:
    """nnU-Net v2's region decoding, written out: sigmoid in float64, then for each region in
    order the pixels above 0.5 take its class (a later region overwrites an earlier one)."""
    probs = expit(r.astype(np.float64))
    seg = np.zeros((r.shape[0], *r.shape[2:]), dtype=np.uint8)
    for k, cls in enumerate(regions_class_order):
        seg[probs[:, k] > 0.5] = cls
    return seg


def head_labels(r: np.ndarray) -> dict[str, np.ndarray]:
    """The label of every pixel from the head's scores, by each argmax the project runs."""
    scores = region_scores(torch.from_numpy(r)).numpy()
    assert scores.dtype == np.float32 and scores.shape == (r.shape[0], r.shape[1] + 1, *r.shape[2:])
    return {"numpy": np.argmax(scores, axis=1).astype(np.uint8),
            "torch": torch.from_numpy(scores).argmax(dim=1).numpy().astype(np.uint8),
            "C kernel": postprocess(scores, scores.shape[2:], resize="labels"),
            "numpy reference kernel": postprocess(scores, scores.shape[2:], resize="labels", reference=True),
            "C kernel, logits resize": postprocess(scores, scores.shape[2:], resize="logits")}


def assert_decodes_as_nnunet(r: np.ndarray) -> None:
    want = nnunet_decode(r, list(range(1, r.shape[1] + 1)))
    for how, got in head_labels(r).items():
        wrong = np.argwhere(got != want)
        assert not len(wrong), (f"{how}: {len(wrong)} pixel(s) differ, first at {wrong[0].tolist()}: logits "
                                f"{r[wrong[0][0], :, wrong[0][1], wrong[0][2]].tolist()} gave {got[tuple(wrong[0])]}, "
                                f"nnU-Net {want[tuple(wrong[0])]}")


@pytest.mark.parametrize("regions", [1, 2, 3, 5])
def test_random_logits_decode_as_nnunet(regions):
    r = (np.random.default_rng(regions).normal(size=(3, regions, 24, 20)) * 4).astype(np.float32)
    assert_decodes_as_nnunet(r)


@pytest.mark.parametrize("regions", [1, 2, 3])
def test_every_combination_of_adversarial_logits_decodes_as_nnunet(regions):
    """Exact zeros of both signs (sigmoid exactly 0.5: not in the region, so a tie the earlier
    class must win), values that make later scores tie earlier ones, and large ones; all binary
    fractions, so the head's sums are exact."""
    values = [-1e4, -3.0, -0.5, -0.0, 0.0, 0.25, 0.5, 3.0, 1e4]
    combos = np.array(list(itertools.product(values, repeat=regions)), dtype=np.float32)  # (pixels, K)
    r = np.ascontiguousarray(combos.T.reshape(1, regions, 1, -1))
    assert_decodes_as_nnunet(r)


def test_the_argmax_ties_go_to_the_lowest_class_everywhere():
    """The head relies on it: a score equal to an earlier one (r_k = 0) must not win."""
    scores = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, -1.0, 0.0], [2.0, 2.0, 1.0]], np.float32)
    batch = np.ascontiguousarray(scores.T.reshape(1, 3, 1, 4))
    want = [0, 1, 0, 0]
    assert np.argmax(batch, axis=1)[0, 0].tolist() == want
    assert torch.from_numpy(batch).argmax(dim=1)[0, 0].tolist() == want
    assert postprocess(batch, (1, 4), resize="labels")[0, 0].tolist() == want
    assert postprocess(batch, (1, 4), resize="labels", reference=True)[0, 0].tolist() == want


def test_a_region_below_the_running_maximum_s_resolution_reads_as_not_in_it():
    """The documented float32 limit: r_2 under half an ulp of s_1 is lost in the sum (its sigmoid
    is 0.5 to within 1e-4 of an ulp at 0.5 there); one ulp is enough to decode."""
    big = np.float32(1000.0)
    ulp = np.spacing(big)
    r = np.array([[big, ulp / 2], [big, ulp]], np.float32).T.reshape(1, 2, 1, 2).copy()
    assert head_labels(r)["numpy"][0, 0].tolist() == [1, 2]


def test_the_region_logits_come_back_from_the_scores():
    r = (np.random.default_rng(7).normal(size=(2, 4, 8, 8)) * 5).astype(np.float32)
    back = region_logits(region_scores(torch.from_numpy(r))).numpy()
    np.testing.assert_allclose(back, r, rtol=0, atol=4e-6)
    exact = np.array([-2.0, 0.0, 0.5, 3.0], np.float32).reshape(1, 4, 1, 1)
    np.testing.assert_array_equal(region_logits(region_scores(torch.from_numpy(exact))).numpy(), exact)


@pytest.mark.parametrize("regions, classes, fragment", [
    ([[1, 2], [3]], 3, "names class 3, not a foreground class 1..2"),
    ([[1, 2], []], 3, "region 1 of .* is empty"),
    ([[1, 1], [2]], 3, "names a class twice"),
    ([[1, 2]], 3, "1 for 2 foreground class.*one region per class"),
    ([[1]], 3, "class 2 is in no region, so no region decodes to it"),
    ([[2], [1, 2]], 3, "region 0 of .* decodes to no class"),
    ([[1, 2], [1]], 3, "region 0 of .* decodes to class 2 .*region k must decode to class k \\+ 1"),
    ([[1, 2, 3], [3], [2]], 4, "region 1 of .* decodes to class 3"),
    ([[1, 2, 3], [2, 3], [2, 3]], 4, "region 1 of .* decodes to no class"),
    ([[1], [2], [3], [3]], 4, "4 for 3 foreground"),
    ("1+2,2", 3, "must be a list of lists"),
    ([[1.0], [2]], 3, "must be a list of lists of class numbers"),
])
def test_bad_regions_are_one_line_errors(regions, classes, fragment):
    with pytest.raises(ModelConfigError, match=fragment) as info:
        check_regions(regions, classes)
    assert "\n" not in str(info.value)


def test_decodable_regions_pass_sorted():
    assert check_regions([[2, 1], [2]], 3) == ((1, 2), (2,))
    assert check_regions([[1], [2]], 3) == ((1,), (2,))  # disjoint regions: plain multi-label sigmoids
    assert check_regions([[1, 2, 3], [2, 3], [3]], 4) == ((1, 2, 3), (2, 3), (3,))
    assert check_regions([[1, 2, 3], [2], [3]], 4) == ((1, 2, 3), (2,), (3,))
    assert parse_regions("1+2,2") == [[1, 2], [2]]
    with pytest.raises(ModelConfigError, match="must look like '1\\+2,2'"):
        parse_regions("1+2,,2")


def test_the_model_config_records_regions_only_when_set():
    plain = ModelConfig(name="mobile_unet", num_classes=3, base=4, depth=2)
    assert "regions" not in plain.to_dict()  # softmax checkpoints and manifests stay as they were
    config = ModelConfig(name="mobile_unet", num_classes=3, base=4, depth=2, regions=[[1, 2], [2]])
    assert config.to_dict()["regions"] == [[1, 2], [2]]
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.differences(plain) == ["regions=[[1, 2], [2]] vs None"]
    model = build_model(config).eval()
    assert model.net.head.out_channels == 2 and model.regions == ((1, 2), (2,))
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ModelConfigError, match="region 0 of .* decodes to class 2"):
        ModelConfig(num_classes=3, regions=[[1, 2], [1]])
