"""libedgeseg reads manifest.json as strictly as the Python runtime: what one refuses the other
refuses (ES_EBUNDLE / BundleError, one line), and where both accept they read the same labels.
The cases are the bytes a hand-edited or hostile manifest may hold: label keys strtol would take
(" 1", "+1", "01" beside "1"), a NUL escape that a C string would cut at, a NUL byte after the
JSON, text that is not UTF-8 (an invalid byte, an overlong form, an encoded surrogate), raw control
characters in a string or between tokens, numbers beyond JSON's grammar, a manifest padded past the size limit."""

from __future__ import annotations

import json
import shutil

import pytest

from edgeseg.errors import BundleError
from edgeseg.runtime.manifest import read_manifest

ES_OK, ES_EBUNDLE = 0, 16
PLACE = '"@LABELS@"'


def _bundle_with(bundle, tmp_path, labels: bytes, *, text=lambda t: t, tail: bytes = b"") -> object:
    """A copy of ``bundle`` whose manifest's labels are the raw JSON ``labels``; ``text`` edits
    the rest of the manifest's text, ``tail`` is appended after the JSON."""
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["labels"] = "@LABELS@"
    raw = text(json.dumps(manifest, indent=1)).encode()
    assert raw.count(PLACE.encode()) == 1
    (copy / "manifest.json").write_bytes(raw.replace(PLACE.encode(), labels) + tail)
    return copy


def _once(old: str, new: str):
    """An edit of the manifest's text that replaces ``old``, which must be there."""
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


REFUSED = {
    "key-with-space": (b'{"0": "background", " 1": "liver"}', {}, "labels must map class numbers to names"),
    "key-with-plus": (b'{"0": "background", "+1": "liver"}', {}, "labels must map class numbers to names"),
    "key-1-and-01": (b'{"0": "background", "1": "liver", "01": "again"}', {}, "name a class twice"),
    "file-with-nul": (b'{"0": "background", "1": "liver"}',
                      {"text": _once('"model.onnx"', '"model.onnx\\u0000evil"')}, "NUL character"),
    "label-with-nul": (b'{"0": "background", "1": "liv\\u0000er"}', {}, "NUL character"),
    "nul-byte-after-json": (b'{"0": "background", "1": "liver"}', {"tail": b"\0garbage"}, "not readable JSON"),
    "invalid-utf8": (b'{"0": "background", "1": "liv\xffer"}', {}, "not readable JSON"),
    "overlong-utf8": (b'{"0": "background", "1": "liv\xc0\xafer"}', {}, "not readable JSON"),
    "encoded-surrogate": (b'{"0": "background", "1": "liv\xed\xa0\x80er"}', {}, "not readable JSON"),
    "escaped-lone-surrogate": (b'{"0": "background", "1": "liv\\ud800er"}', {}, "not readable JSON"),
    "raw-tab-in-string": (b'{"0": "background", "1": "liv\ter"}', {}, "not readable JSON"),
    "leading-zero-number": (b'{"0": "background", "1": "liver"}',
                            {"text": _once('"max_batch": 8', '"max_batch": 08')}, "not readable JSON"),
    "number-ending-in-dot": (b'{"0": "background", "1": "liver"}',
                             {"text": _once('"max_batch": 8', '"max_batch": 8.')}, "not readable JSON"),
    # cJSON skips any byte up to 0x20 between tokens, JSON only space, tab, CR and LF
    "control-character-between-tokens": (b'{"0": "background",\x1a"1": "liver"}', {}, "not readable JSON"),
    "form-feed-after-json": (b'{"0": "background", "1": "liver"}', {"tail": b"\x0c"}, "not readable JSON"),
    # Python's json module reads these words as floats; they are not JSON
    "nan-in-calibration": (b'{"0": "background", "1": "liver"}',
                           {"text": _once('"calibration": {', '"calibration": {"x": NaN, ')}, "not readable JSON"),
    "infinity-in-calibration": (b'{"0": "background", "1": "liver"}',
                                {"text": _once('"calibration": {', '"calibration": {"x": -Infinity, ')},
                                "not readable JSON"),
    # model.regions switches both runtimes' mirroring to region sigmoids: only a well-formed value may
    **{f"regions-{name}": (b'{"0": "background", "1": "liver"}',
                           {"text": _once('"model": {', '"model": {"regions": ' + value + ', ')},
                           "model.regions must be null or one list of classes 1..1 per foreground class")
       for name, value in {"number": "5", "class-out-of-range": "[[2]]", "empty-region": "[[]]",
                           "float-class": "[[1.0]]", "bool-class": "[[true]]", "one-region-too-many": "[[1], [1]]",
                           "string": '"[[1]]"'}.items()},
    # valid JSON padded with whitespace past libedgeseg's 64 MiB: Python read a 2 GiB one whole
    "padded-past-64-mib": (b'{"0": "background", "1": "liver"}', {"tail": b" " * ((64 << 20) + 1)},
                           "not a regular file of at most 67108864 bytes"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_c_refuses_what_python_refuses(case, bundle, tmp_path, run_checks):
    labels, options, words = REFUSED[case]
    copy = _bundle_with(bundle, tmp_path, labels, **options)
    with pytest.raises(BundleError) as caught:
        read_manifest(copy)
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == ES_EBUNDLE, message
    assert words in message and words in str(caught.value), (message, str(caught.value))
    assert "\n" not in str(caught.value)


ACCEPTED = {
    "utf8-name": ('{"0": "background", "1": "Leber ü ✓"}'.encode(), "Leber ü ✓"),
    "escaped-name": (b'{"0": "background", "1": "Leber \\u00fc \\ud83d\\ude00"}', "Leber ü \U0001F600"),
    "backslash-then-u0000": (b'{"0": "background", "1": "a\\\\u0000"}', "a\\u0000"),
    "same-key-twice": (b'{"0": "background", "1": "first", "1": "liver"}', "liver"),  # the last, as JSON readers do
    "leading-zero-key": (b'{"0": "background", "0001": "liver"}', "liver"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_where_both_accept_they_read_the_same_labels(case, bundle, tmp_path, run_checks):
    labels, name = ACCEPTED[case]
    copy = _bundle_with(bundle, tmp_path, labels)
    assert read_manifest(copy).labels == {0: "background", 1: name}
    code, message, lines = run_checks("open", copy, "fp32")
    assert (code, message) == (ES_OK, "opened")
    assert [line.split("\t")[1:] for line in lines if line.startswith("label\t")] == [["0", "background"], ["1", name]]


@pytest.mark.parametrize("regions", ["null", "[[1]]"])
def test_a_well_formed_regions_entry_is_read_by_both(regions, bundle, tmp_path, run_checks):
    copy = _bundle_with(bundle, tmp_path, b'{"0": "background", "1": "liver"}',
                        text=_once('"model": {', '"model": {"regions": ' + regions + ', '))
    assert read_manifest(copy).regions is (regions != "null")
    assert run_checks("open", copy, "fp32")[:2] == (ES_OK, "opened")


REPEATED_KEYS = {
    "window-twice": _once('"window": [', '"window": [-1000, 3000], "window": ['),
    "size-twice": _once('"size": [', '"size": [8, 8], "size": ['),
    "max-batch-twice": _once('"max_batch": ', '"max_batch": 0, "max_batch": '),
}


@pytest.mark.parametrize("case", list(REPEATED_KEYS))
def test_a_key_named_twice_means_its_last_value_in_both(case, bundle, phantom_hu, programs, run_raw, tmp_path):
    """Python's json keeps the last value of a repeated key; libedgeseg read the first, so a
    manifest naming "window" twice gave the two runtimes different windows and different masks
    (or C refused what Python opened)."""
    import numpy as np

    from edgeseg.runtime import Segmenter

    copy = _bundle_with(bundle, tmp_path, b'{"0": "background", "1": "liver"}', text=REPEATED_KEYS[case])
    with Segmenter.load(copy, backend="openvino:fp32") as seg:
        expected = seg.predict_volume(phantom_hu)
    assert expected.any()
    got = run_raw(programs["c"], copy, "fp32", phantom_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0


NULLS = {
    "spec-fit": (lambda m: m["spec"].update(fit=None), "fit"),
    "spec-interpolation": (lambda m: m["spec"].update(interpolation=None), "interpolation"),
    "spec-orientation": (lambda m: m["spec"].update(orientation=None), "orientation"),
    "spec-dtype": (lambda m: m["spec"].update(dtype=None), "spec"),
    "input-dtype": (lambda m: m["inputs"][0].update(dtype=None), "dtype"),
    "postprocess-resize": (lambda m: m["postprocess"].update(resize=None), "postprocess.resize"),
}


@pytest.mark.parametrize("case", list(NULLS))
def test_a_null_where_a_string_belongs_is_refused_by_both(case, bundle, tmp_path, run_checks):
    """`"fit": null` is no spec field Python reads (BundleError); libedgeseg took it for an
    absent key and opened the bundle with the default."""
    from edgeseg.runtime import Segmenter

    edit, word = NULLS[case]
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as caught:
        Segmenter.load(copy, backend="openvino:fp32")
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == ES_EBUNDLE and word in message and word in str(caught.value), (message, str(caught.value))


def _with_training_fov(bundle, tmp_path, raw: bytes):
    """A copy of ``bundle`` whose manifest's ``training_fov`` is the raw JSON ``raw``."""
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["training_fov"] is not None  # the test bundle records it: the edit replaces a real record
    manifest["training_fov"] = "@FOV@"
    (copy / "manifest.json").write_bytes(json.dumps(manifest, indent=1).encode().replace(b'"@FOV@"', raw))
    return copy


GOOD_FOV = '"spacing_mm": [0.6, 0.9], "cases": 4'
BAD_FOVS = {
    "number": "192", "list": "[150, 450]", "string": '"150-450 mm"', "empty-object": "{}",
    "low-above-high": '{"fov_mm": [450, 150], ' + GOOD_FOV + '}',
    "zero-low": '{"fov_mm": [0, 450], ' + GOOD_FOV + '}',
    "negative-spacing": '{"fov_mm": [150, 450], "spacing_mm": [-0.6, 0.9], "cases": 4}',
    "three-numbers": '{"fov_mm": [150, 300, 450], ' + GOOD_FOV + '}',
    "text-number": '{"fov_mm": ["150", 450], ' + GOOD_FOV + '}',
    "bool-number": '{"fov_mm": [true, 450], ' + GOOD_FOV + '}',
    "overflowing-number": '{"fov_mm": [150, 1e400], ' + GOOD_FOV + '}',
    "overflowing-integer": '{"fov_mm": [150, 1' + "0" * 400 + '], ' + GOOD_FOV + '}',
    "no-spacing": '{"fov_mm": [150, 450], "cases": 4}',
    "no-cases": '{"fov_mm": [150, 450], "spacing_mm": [0.6, 0.9]}',
    "zero-cases": '{"fov_mm": [150, 450], "spacing_mm": [0.6, 0.9], "cases": 0}',
    "fractional-cases": '{"fov_mm": [150, 450], "spacing_mm": [0.6, 0.9], "cases": 4.0}',
    "bool-cases": '{"fov_mm": [150, 450], "spacing_mm": [0.6, 0.9], "cases": true}',
}


@pytest.mark.parametrize("case", list(BAD_FOVS))
def test_a_malformed_training_fov_is_refused_alike_by_both(case, bundle, tmp_path, run_checks):
    """training_fov (the training data's field of view) is optional; a malformed one is no record
    either runtime may guess from: both refuse the bundle with the same words."""
    copy = _with_training_fov(bundle, tmp_path, BAD_FOVS[case].encode())
    with pytest.raises(BundleError) as caught:
        read_manifest(copy)
    code, message, _ = run_checks("open", copy, "fp32")
    words = "manifest training_fov must be null or"
    assert code == ES_EBUNDLE and words in message and words in str(caught.value), (message, str(caught.value))
    assert message.split("manifest ", 1)[1] == str(caught.value).split("manifest ", 1)[1]


@pytest.mark.parametrize("raw", ["null", '{"fov_mm": [150, 450], "spacing_mm": [0.6, 0.9], "cases": 4, "later": 1}'])
def test_a_null_or_extended_training_fov_is_read_by_both(raw, bundle, tmp_path, run_checks):
    """null is no record (a run on slices without spacing); keys a later edgeseg adds are ignored."""
    copy = _with_training_fov(bundle, tmp_path, raw.encode())
    fov = read_manifest(copy).training_fov
    assert (None if fov is None else (fov.fov_mm, fov.cases)) == (None if raw == "null" else ((150.0, 450.0), 4))
    assert run_checks("open", copy, "fp32")[:2] == (ES_OK, "opened")
