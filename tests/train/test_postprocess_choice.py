"""Component filters are chosen per class on validation Dice, not assumed."""

import numpy as np

from edgeseg.data.slice_set import SliceSet
from edgeseg.metrics import dice
from edgeseg.runtime.postprocess_options import ClassPostprocess, PostprocessOptions
from edgeseg.train.validate import choose_postprocess


def val_set(truth: np.ndarray, case_index=None) -> SliceSet:
    n = truth.shape[0]
    index = np.zeros(n, np.int32) if case_index is None else np.asarray(case_index, np.int32)
    return SliceSet(np.zeros((n, 1, *truth.shape[1:]), np.float32), truth, index,
                    [str(i) for i in range(int(index.max()) + 1)])


def chosen(choice, num_classes) -> dict[int, ClassPostprocess]:
    return PostprocessOptions.from_dict(choice, num_classes).classes


def test_stray_false_positive_makes_the_filter_win():
    truth = np.zeros((1, 16, 16), np.uint8)
    truth[0, 2:10, 2:10] = 1
    pred = truth.copy()
    pred[0, 13:15, 13:15] = 1  # an island away from the organ
    choice = choose_postprocess(pred, val_set(truth), 2)
    assert chosen(choice, 2) == {1: ClassPostprocess(keep_largest=True)}
    assert choice["val_dice_post"] == 1.0
    assert choice["val_dice"] == 2 * 64 / (64 + 68)


def test_organ_in_two_islands_keeps_the_filter_off():
    truth = np.zeros((1, 16, 16), np.uint8)
    truth[0, 1:7, 1:7] = 1
    truth[0, 10:14, 10:14] = 1
    choice = choose_postprocess(truth.copy(), val_set(truth), 2)
    assert chosen(choice, 2) == {}
    assert choice["val_dice"] == choice["val_dice_post"] == 1.0


def test_organ_and_multifocal_lesions_get_their_own_choice():
    truth = np.zeros((1, 40, 40), np.uint8)
    truth[0, 2:30, 2:30] = 1                   # the organ
    for y, x in ((5, 5), (5, 15), (15, 5), (20, 20)):
        truth[0, y:y + 3, x:x + 3] = 2         # four lesions inside it
    pred = truth.copy()
    pred[0, 35:37, 35:37] = 1                  # an organ island outside
    pred[0, 33, 2] = 2                         # a one-pixel lesion speck
    choice = choose_postprocess(pred, val_set(truth), 3)
    classes = chosen(choice, 3)
    assert classes[1].keep_largest and not classes[2].keep_largest
    assert 1 < classes[2].min_pixels <= 9      # the speck goes, every 3x3 lesion stays
    assert choice["val_dice_post_per_class"] == [1.0, 1.0]


def test_largest_3d_component_removes_organ_free_slices():
    truth = np.zeros((6, 16, 16), np.uint8)
    truth[1:5, 4:12, 4:12] = 1                  # the organ in slices 1..4 only
    pred = truth.copy()
    pred[5, 0:4, :] = 1                         # an organ-sized (64 px) false positive on an organ-free slice
    choice = choose_postprocess(pred, val_set(truth), 2)
    option = chosen(choice, 2)[1]
    assert option.keep_largest_3d
    assert choice["val_dice"] == dice(pred == 1, truth == 1)
    assert choice["val_dice_post"] == 1.0


def test_3d_filter_by_volume_uses_the_voxel_size():
    truth = np.zeros((4, 16, 16), np.uint8)
    truth[:, 2:6, 2:6] = 1                      # two organs of 64 voxels
    truth[:, 10:14, 10:14] = 1
    pred = truth.copy()
    pred[0, 10:14, 2:6] = 1                     # a false positive as wide as an organ, in one slice
    choice = choose_postprocess(pred, val_set(truth), 2, voxel_ml=[0.02])
    option = chosen(choice, 2)[1]
    assert not option.keep_largest_3d and 16 * 0.02 < option.min_ml <= 64 * 0.02
    assert choice["val_dice_post"] == 1.0


def test_voxel_ml_at_model_size_and_none_for_slice_folders():
    from dataclasses import replace

    from edgeseg.data.phantom import synth_phantom
    from edgeseg.spec import PreprocessSpec
    from edgeseg.train.validate import validation_voxel_ml

    vol = synth_phantom("case_000", 1, shape=(4, 128, 96), spacing=(2.5, 1.5, 1.5))
    spec = PreprocessSpec(window=(0, 255), size=(64, 64))
    # a model voxel covers 2 x 1.5 source voxels in-plane: 2.5 mm x 3 mm x 2.25 mm
    assert validation_voxel_ml([vol], spec) == [2.5 * 3.0 * 2.25 / 1000]
    assert validation_voxel_ml([vol, replace(vol, contiguous=False)], spec) is None


def test_removed_islands_go_to_the_class_that_gains_them():
    """A consolidation island inside ground-glass: the filter removes it and gives it to class 1,
    which raises class 1's Dice; an island on background stays removed to background."""
    truth = np.zeros((1, 32, 32), np.uint8)
    truth[0, 2:14, 2:14] = 1
    truth[0, 18:30, 18:30] = 2
    pred = truth.copy()
    pred[0, 5:7, 5:7] = 2  # class 2 predicted inside class 1
    choice = choose_postprocess(pred, val_set(truth), 3)
    assert chosen(choice, 3) == {2: ClassPostprocess(keep_largest=True, removed_to=1)}
    assert choice["val_dice_post"] == 1.0
    assert choice["classes"]["2"]["removed_to"] == 1
    # The same island on background: giving it to class 1 would add a false positive there.
    pred = truth.copy()
    pred[0, 0:2, 30:32] = 2
    choice = choose_postprocess(pred, val_set(truth), 3)
    assert chosen(choice, 3) == {2: ClassPostprocess(keep_largest=True)}
    assert "removed_to" not in choice["classes"]["2"] and choice["val_dice_post"] == 1.0
