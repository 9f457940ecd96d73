"""How many held-out slices the parity gate can hold in memory at the model's size.

The gate keeps every held-out slice's logits at model resolution at once: the FP32 reference
and one artifact's logits (float32), and while comparing them a float64 copy, the float64
differences, the copy ``np.percentile`` sorts and a sorted float32 copy of the reference. That
is about :data:`BYTES_PER_LOGIT` bytes for each of ``classes x rows x cols`` values of a slice,
plus the slice itself and its labels: 4.7 MB a slice at 256 x 256 with two classes (64 slices:
0.3 GB), but 1.2 GB a slice at 4096 x 4096, where the default 64 slices would need 77 GB.

So the gate takes at most as many slices as fit :data:`DEFAULT_GATE_MAX_BYTES` (8 GiB; the
environment variable ``EDGESEG_GATE_MAX_BYTES`` sets another figure), and says so; a spec whose
single slice does not fit is refused before any work.
"""

from __future__ import annotations


from edgeseg.errors import DataError
from edgeseg.limits import env_int
from edgeseg.spec import PreprocessSpec

DEFAULT_GATE_MAX_BYTES = 8 << 30
GATE_BYTES_ENV = "EDGESEG_GATE_MAX_BYTES"
# float32 reference + float32 artifact + float64 copy + float64 |d| + float64 percentile copy
# + float32 sorted reference
BYTES_PER_LOGIT = 4 + 4 + 8 + 8 + 8 + 4
# the float32 input slice and its uint8 labels, per pixel
BYTES_PER_PIXEL = 4 + 1


def gate_max_bytes() -> int:
    """The gate's memory budget: ``EDGESEG_GATE_MAX_BYTES`` when set, else 8 GiB."""
    return env_int(GATE_BYTES_ENV, DEFAULT_GATE_MAX_BYTES)


def gate_slice_bytes(spec: PreprocessSpec, num_classes: int) -> int:
    """Bytes the gate holds for one held-out slice of ``spec``'s size with ``num_classes`` logits."""
    rows, cols = spec.size
    return rows * cols * (BYTES_PER_LOGIT * int(num_classes) + BYTES_PER_PIXEL)


def gate_slice_limit(spec: PreprocessSpec, num_classes: int, wanted: int) -> int:
    """How many of ``wanted`` held-out slices the gate takes: all that fit :func:`gate_max_bytes`.
    DataError when not even one does (the gate cannot check such an export here)."""
    per_slice, budget = gate_slice_bytes(spec, num_classes), gate_max_bytes()
    fits = budget // per_slice
    if fits < 1:
        raise DataError(f"one held-out slice at the spec size {spec.size[0]}x{spec.size[1]} with {num_classes} classes "
                        f"takes {size_text(per_slice)} in the parity gate, above its limit of {size_text(budget)} "
                        f"({GATE_BYTES_ENV} raises it)")
    return int(min(wanted, fits))


def size_text(count: int) -> str:
    """``count`` bytes for people: bytes below a MiB, MiB below a GiB, else GiB."""
    if count < 1 << 20:
        return f"{count} bytes"
    return f"{count / (1 << 20):.0f} MiB" if count < 1 << 30 else f"{count / (1 << 30):.2f} GiB"
