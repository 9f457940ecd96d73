"""The pairing of a series' volumes with the SEGs made of it before (dicom_volume_match.py), on
cases worked out by hand: the volumes' numbers shift, two volumes become one, SEGs whose images
are not known, another bundle. (Before, a late image of a series of several volumes paired no
volume with any SEG: each got a SEG series of its own.)"""

from __future__ import annotations

import logging

from edgeseg.serve.dicom_segmented import SegReference
from edgeseg.serve.dicom_volume_match import VolumePlan, plan_volumes


def _seg(n: int, images: str, bundle: str = "b") -> SegReference:
    return SegReference(f"9.{n}", f"8.{n}", 1, f"1.2.vol{n}.seg.dcm", len(images), bundle, tuple(images))


def test_a_volume_added_ahead_of_the_others_shifts_no_seg():
    """A stack sorted first arrives late: volume 1 is new, volumes 2 and 3 are the earlier 1 and 2,
    of which only the earlier 2 gained an image."""
    first, second = _seg(1, "ab"), _seg(2, "cd")
    plans = plan_volumes("1.2", (first, second), [frozenset("xy"), frozenset("ab"), frozenset("cde")], {"x", "y", "e"},
                         "b")
    assert plans == [VolumePlan(True, None), VolumePlan(False, first), VolumePlan(True, second)]


def test_an_image_sent_again_makes_its_volume_again():
    """The same SOP instance sent again may be a corrected image: its volume is segmented again."""
    first, second = _seg(1, "ab"), _seg(2, "cd")
    plans = plan_volumes("1.2", (first, second), [frozenset("ab"), frozenset("cd")], {"c"}, "b")
    assert plans == [VolumePlan(False, first), VolumePlan(True, second)]


def test_two_volumes_that_become_one_replace_the_seg_sharing_most_images(caplog):
    first, second = _seg(1, "ab"), _seg(2, "cde")
    with caplog.at_level(logging.WARNING, "edgeseg.listen"):
        plans = plan_volumes("1.2", (first, second), [frozenset("abcdef")], {"f"}, "b")
    assert plans == [VolumePlan(True, second)]
    assert "1.2.vol1.seg.dcm (2 slices) is replaced by no SEG" in caplog.text


def test_when_which_images_came_late_is_not_known_each_volume_is_made_again():
    first, second = _seg(1, "ab"), _seg(2, "cd")
    plans = plan_volumes("1.2", (first, second), [frozenset("ab"), frozenset("cd")], None, "b")
    assert plans == [VolumePlan(True, first), VolumePlan(True, second)]


def test_a_seg_whose_images_are_not_known_is_replaced_in_a_series_of_one_volume_only():
    unknown = SegReference("9.1", "8.1", 1, "1.2.seg.dcm", 2)
    assert plan_volumes("1.2", (unknown,), [frozenset("abc")], {"c"}, "b") == [VolumePlan(True, unknown)]
    assert plan_volumes("1.2", (unknown,), [frozenset("ab"), frozenset("c")], {"c"}, "b") == [
        VolumePlan(True, None), VolumePlan(True, None)]


def test_a_seg_another_bundle_made_is_replaced_by_a_seg_series_of_its_own():
    first, second = _seg(1, "ab", "other"), _seg(2, "cd", "other")
    plans = plan_volumes("1.2", (first, second), [frozenset("abx"), frozenset("cd")], {"x"}, "b")
    assert plans == [VolumePlan(True, None), VolumePlan(False, second)]
