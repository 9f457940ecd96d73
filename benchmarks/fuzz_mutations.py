"""Mutations for the input fuzzing campaign: byte-level damage and format-aware header lies.

Every mutator takes the seed's bytes and a ``random.Random`` and returns new bytes, so a case
is reproduced exactly from (format, campaign seed, case index). Byte mutators know nothing of
the format (flips, interesting integers, truncation, chunk deletion / duplication / insertion);
field mutators parse the seed's header and rewrite one field with a value chosen to hurt:
sizes far over any limit, zero, negative, NaN, the wrong type, a length that lies.
"""

from __future__ import annotations

import copy
import io
import json
import random
import re
import struct
import zlib

INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 8, 16, 127, 128, 255, 256, 4095, 4096, 4097, 32767, 32768, 65535, 65536,
                    2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1, 30000, 100000, 1000000, 10**15)
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-45, 1e38, -1e38, 3.4e38, float("nan"), float("inf"), float("-inf"))
INTERESTING_TEXT = ("", " ", "0", "-1", "ab", "nan", "inf", "-inf", "1e400", "1e-400", "0x10", "1,5", "\\", "\x00",
                    "9" * 40, "1\\2\\3", "-0", "   7   ", "é")


# ---------------------------------------------------------------- byte mutators

def flip_bits(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def interesting_integer(data: bytes, rng: random.Random) -> bytes:
    size = rng.choice((1, 2, 4, 8))
    value = rng.choice(INTERESTING_INTS) % (1 << (8 * size))
    if len(data) < size:
        return data
    at = rng.randrange(len(data) - size + 1)
    return data[:at] + value.to_bytes(size, rng.choice(("little", "big"))) + data[at + size:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.choice((0, 1, rng.randrange(len(data) + 1), len(data) // 2, max(len(data) - 1, 0)))]


def delete_chunk(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 512):]


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    at, size = rng.randrange(len(data)), rng.randint(1, 512)
    return data[:at] + data[at:at + size] * rng.randint(2, 4) + data[at + size:]


def insert_random(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


BYTE_MUTATORS = (flip_bits, interesting_integer, truncate, delete_chunk, duplicate_chunk, insert_random)


def mutate_bytes(data: bytes, rng: random.Random, field_mutators=(), field_share: float = 0.5) -> bytes:
    """One to three mutations, each a header-field lie (with ``field_share``) or byte damage."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if field_mutators and rng.random() < field_share:
            data = rng.choice(field_mutators)(data, rng)
        else:
            data = rng.choice(BYTE_MUTATORS)(data, rng)
    return data


# ---------------------------------------------------------------- NIfTI-1 header fields

# (offset, struct format, values) of the NIfTI-1 header fields a reader trusts.
_NIFTI_FIELDS = (
    (0, "<i", (348, 0, -1, 540, 2**31 - 1)),  # sizeof_hdr
    (40, "<h", (0, 1, 2, 3, 4, 5, 7, 8, -1)),  # dim[0]
    (42, "<h", (0, 1, -1, 30000, 32767, 4096, 4097, 2)),  # dim[1]
    (44, "<h", (0, 1, -1, 30000, 32767, 4096, 4097, 2)),  # dim[2]
    (46, "<h", (0, 1, -1, 30000, 32767, 1000)),  # dim[3]
    (48, "<h", (0, 1, 2, 3, -1, 30000)),  # dim[4]
    (70, "<h", (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 999)),  # datatype
    (72, "<h", (0, 1, 8, 16, 32, 64, 128, 7)),  # bitpix
    (76, "<f", INTERESTING_FLOATS),  # pixdim[0] (qfac)
    (80, "<f", INTERESTING_FLOATS),  # pixdim[1]
    (84, "<f", INTERESTING_FLOATS),  # pixdim[2]
    (88, "<f", INTERESTING_FLOATS),  # pixdim[3]
    (108, "<f", (0.0, 352.0, 348.0, 1e9, -1.0, float("nan"), 4.0, 353.0)),  # vox_offset
    (112, "<f", INTERESTING_FLOATS),  # scl_slope
    (116, "<f", INTERESTING_FLOATS),  # scl_inter
    (252, "<h", (0, 1, 2, 3, 4, 5, -1)),  # qform_code
    (254, "<h", (0, 1, 2, 3, 4, 5, -1)),  # sform_code
    (256, "<f", INTERESTING_FLOATS),  # quatern_b
    (280, "<f", INTERESTING_FLOATS),  # srow_x[0]
    (300, "<f", INTERESTING_FLOATS),  # srow_y[1]
    (320, "<f", INTERESTING_FLOATS),  # srow_z[2]
)


def nifti_field(data: bytes, rng: random.Random) -> bytes:
    offset, fmt, values = rng.choice(_NIFTI_FIELDS)
    size = struct.calcsize(fmt)
    if len(data) < offset + size:
        return data
    return data[:offset] + struct.pack(fmt, rng.choice(values)) + data[offset + size:]


# ---------------------------------------------------------------- .npy header

_NPY_DESCRS = ("<f4", "<f8", "<i2", ">i2", "|u1", "|b1", "<c8", "<c16", "|O", "<U4", "|V8", "<f2", "<M8[s]", "x",
               "[('a', '<f4')]", "<i8")


def npy_field(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the header dict of an .npy file (shape, descr or fortran_order), keeping the framing."""
    if len(data) < 10 or not data.startswith(b"\x93NUMPY"):
        return data
    major = data[6]
    length_size = 2 if major == 1 else 4
    header_len = int.from_bytes(data[8:8 + length_size], "little")
    start = 8 + length_size
    header, body = data[start:start + header_len].decode("latin1"), data[start + header_len:]
    choice = rng.randrange(4)
    if choice == 0:
        dims = [rng.choice(INTERESTING_INTS + (1, 2, 64)) * rng.choice((1, 1, -1)) for _ in range(rng.randint(0, 5))]
        shape = "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"
        header = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", header)
    elif choice == 1:
        descr = rng.choice(_NPY_DESCRS)
        header = re.sub(r"'descr': [^,]*,", f"'descr': {descr if descr.startswith('[') else repr(descr)},", header)
    elif choice == 2:
        header = header.replace("False", "True") if "False" in header else header.replace("True", "False")
    else:
        header = header[: rng.randrange(len(header) + 1)] + rng.choice(("{", "}", "'", "(", "\n", "1e999", ""))
    encoded = header.encode("latin1", "replace")
    if rng.random() < 0.8:  # keep the stated header length honest most of the time
        header_len = len(encoded)
    return data[:8] + header_len.to_bytes(length_size, "little")[:length_size] + encoded + body


# ---------------------------------------------------------------- PNG / JPEG dimensions

def _png_chunks(data: bytes):
    at = 8
    while at + 8 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        yield at, length, data[at + 4:at + 8]
        at += 12 + length


def png_field(data: bytes, rng: random.Random) -> bytes:
    """Lie in IHDR (width, height, bit depth, colour type), usually with a correct CRC."""
    for at, length, kind in _png_chunks(data):
        if kind != b"IHDR" or length != 13:
            continue
        ihdr = bytearray(data[at + 8:at + 21])
        if len(ihdr) < 13:  # the chunk was cut by an earlier mutation
            return data
        field = rng.randrange(4)
        if field < 2:
            ihdr[4 * field:4 * field + 4] = rng.choice((0, 1, 20000, 13000, 4097, 65535, 2**31 - 1, 2**32 - 1)).to_bytes(4, "big")
        elif field == 2:
            ihdr[8] = rng.choice((1, 2, 4, 8, 16, 3, 32))
        else:
            ihdr[9] = rng.choice((0, 2, 3, 4, 6, 1, 7))
        crc = zlib.crc32(b"IHDR" + bytes(ihdr)).to_bytes(4, "big") if rng.random() < 0.8 else data[at + 21:at + 25]
        return data[:at + 8] + bytes(ihdr) + crc + data[at + 25:]
    return data


def jpeg_field(data: bytes, rng: random.Random) -> bytes:
    """Lie in the start-of-frame segment: height, width, or component count."""
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at >= 0 and at + 10 <= len(data):
            field = rng.randrange(3)
            if field == 2:
                return data[:at + 9] + bytes([rng.choice((0, 1, 2, 3, 4, 255))]) + data[at + 10:]
            value = rng.choice((0, 1, 20000, 13000, 4097, 65535)).to_bytes(2, "big")
            where = at + 5 + 2 * field
            return data[:where] + value + data[where + 2:]
    return data


# ---------------------------------------------------------------- NRRD header lines

_NRRD_EDITS = {
    "sizes": lambda rng: " ".join(str(rng.choice((0, 1, -1, 3, 512, 100000, 2**31, "a"))) for _ in range(rng.randint(1, 4))),
    "type": lambda rng: rng.choice(("short", "float", "double", "uchar", "int64", "block", "complex", "nonsense")),
    "dimension": lambda rng: str(rng.choice((0, 1, 2, 3, 4, 100, -1, "x"))),
    "encoding": lambda rng: rng.choice(("raw", "gzip", "bzip2", "ascii", "hex", "zip", "none")),
    "endian": lambda rng: rng.choice(("little", "big", "middle")),
    "space": lambda rng: rng.choice(("left-posterior-superior", "RAS", "scanner-xyz", "3D-right-handed", "")),
    "space directions": lambda rng: " ".join(rng.choice(("(0,0,0)", "(nan,0,0)", "(1,0,0)", "none", "(inf,1,1)", "(1,1)"))
                                             for _ in range(rng.randint(1, 4))),
    "space origin": lambda rng: rng.choice(("(nan,0,0)", "(0,0)", "(1e400,0,0)", "x", "(0,0,0,0)")),
    "kinds": lambda rng: " ".join(rng.choice(("domain", "space", "vector", "RGB-color", "none")) for _ in range(rng.randint(1, 4))),
}


def nrrd_field(data: bytes, rng: random.Random) -> bytes:
    """Replace, drop or duplicate one header line of an NRRD file."""
    end = data.find(b"\n\n")
    if end < 0:
        return data
    lines = data[:end].decode("latin1").split("\n")
    key = rng.choice(list(_NRRD_EDITS))
    index = next((i for i, line in enumerate(lines) if line.startswith(key + ":")), None)
    choice = rng.randrange(4)
    if index is None or choice == 0:
        lines.append(f"{key}: {_NRRD_EDITS[key](rng)}")
    elif choice == 1:
        del lines[index]
    else:
        lines[index] = f"{key}: {_NRRD_EDITS[key](rng)}"
    return "\n".join(lines).encode("latin1") + data[end:]


# ---------------------------------------------------------------- JSON documents (manifest, KServe bodies)

JSON_VALUES = (None, True, 0, -1, 1, 2**31, 10**30, 1e308, -1e308, 0.5, "", "x", "x" * 5000, [], {}, [0], [-1, 1],
                [2**31, 2**31], [1, 1, 100000, 100000], {"a": 1}, "FP64", "BYTES", "../../etc/passwd", "NaN")


def _json_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, prefix + (key,))
    elif isinstance(node, list) and len(node) <= 16:
        for index, value in enumerate(node):
            yield from _json_paths(value, prefix + (index,))


def edit_json(document, rng: random.Random):
    """A deep copy of ``document`` with one node replaced, removed or duplicated."""
    document = copy.deepcopy(document)
    paths = [p for p in _json_paths(document) if p]
    if not paths:
        return rng.choice(JSON_VALUES)
    path = rng.choice(paths)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = rng.randrange(5)
    if action == 0 and isinstance(parent, dict):
        del parent[last]
    elif action == 1 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif action == 2 and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        parent[last] = rng.choice((parent[last] * 1000, -parent[last], float("nan"), float("inf"), str(parent[last])))
    else:
        parent[last] = copy.deepcopy(rng.choice(JSON_VALUES))
    return document


def json_field(data: bytes, rng: random.Random) -> bytes:
    """Structured JSON edit on a JSON file's bytes (NaN and Infinity written as Python does)."""
    try:
        document = json.loads(data)
    except ValueError:
        return data
    return json.dumps(edit_json(document, rng)).encode()


# ---------------------------------------------------------------- DICOM elements (CT slices and SEG)

_DICOM_EDITS = {
    "Rows": ("US", (0, 1, 65535, 4097, 20000)),
    "Columns": ("US", (0, 1, 65535, 4097, 20000)),
    "BitsAllocated": ("US", (0, 1, 8, 12, 32, 64, 65535)),
    "BitsStored": ("US", (0, 1, 8, 12, 16, 33)),
    "HighBit": ("US", (0, 15, 31, 200)),
    "PixelRepresentation": ("US", (0, 1, 2)),
    "SamplesPerPixel": ("US", (0, 1, 3, 4)),
    "PlanarConfiguration": ("US", (0, 1, 7)),
    "NumberOfFrames": ("IS", ("0", "1", "2", "3", "ab", "", "1000000", "-1", "99999999")),
    "RescaleSlope": ("DS", INTERESTING_TEXT),
    "RescaleIntercept": ("DS", INTERESTING_TEXT),
    "PixelSpacing": ("DS", ("0\\0", "a\\b", "1", "-1\\1", "nan\\1", "1\\1\\1", "1e400\\1", "")),
    "SliceThickness": ("DS", ("0", "-1", "ab", "nan", "")),
    "ImagePositionPatient": ("DS", ("nan\\0\\0", "0\\0", "a\\b\\c", "1e308\\1e308\\1e308", "", "0\\0\\0")),
    "ImageOrientationPatient": ("DS", ("0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "nan\\0\\0\\0\\1\\0", "1\\0\\0", "x")),
    "PhotometricInterpretation": ("CS", ("MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "")),
    "Modality": ("CS", ("MR", "SEG", "", "CT")),
    "SeriesInstanceUID": ("UI", ("1.2.3", "", "1.2.840.10008.5.1.4.1.1.66.4")),
    "SOPClassUID": ("UI", ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.1.3.10", "")),
    "SegmentationType": ("CS", ("FRACTIONAL", "LABELMAP", "BINARY", "")),
    "MaximumFractionalValue": ("US", (0, 1, 255)),
}


def dicom_field(data: bytes, rng: random.Random) -> bytes:
    """Set one DICOM element (size, rescale, geometry, identity) to a hostile value, or delete it,
    or cut PixelData; written back with validation off, as a careless or hostile writer would."""
    import pydicom
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.datadict import tag_for_keyword

    try:
        with pydicom.config.disable_value_validation():
            dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001 - the seed may already be damaged by an earlier mutation
        return data
    choice = rng.randrange(10)
    if choice == 0 and "PixelData" in dataset:
        pixels = dataset.PixelData
        dataset.PixelData = pixels[: rng.randrange(len(pixels) + 1)] if rng.random() < 0.7 else pixels * 2
    elif choice == 1:
        keyword = rng.choice(list(_DICOM_EDITS))
        if keyword in dataset:
            del dataset[keyword]
    else:
        keyword = rng.choice(list(_DICOM_EDITS))
        vr, values = _DICOM_EDITS[keyword]
        tag, value = tag_for_keyword(keyword), rng.choice(values)
        # Text goes in as raw bytes, so values pydicom would refuse to encode reach the reader
        # as a hostile writer would store them.
        if isinstance(value, str):
            encoded = value.encode("utf-8")
            encoded += b" " * (len(encoded) % 2)
            dataset._dict[tag] = RawDataElement(tag, vr, len(encoded), encoded, 0, False, True)
        else:
            dataset[tag] = DataElement(tag, vr, value)
    out = io.BytesIO()
    try:
        with pydicom.config.disable_value_validation():
            dataset.save_as(out, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - some hostile values cannot even be encoded; keep the input as is
        return data
    return out.getvalue()
