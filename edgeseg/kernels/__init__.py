"""Pre- and post-processing kernels: C via Cython, with a numpy reference (``reference``).

``preprocess`` turns HU slices into model input and ``postprocess`` turns logits back into
label maps; both validate their arguments, run the C kernels (``csrc/``) without the GIL, and
take ``reference=True`` to run the numpy oracle in ``edgeseg.kernels.reference`` instead.
"""

from __future__ import annotations

from edgeseg.kernels.components import ComponentRule, checked_labels, filter_components
from edgeseg.kernels.postprocessing import largest_component, postprocess, resize_labels
from edgeseg.kernels.preprocessing import preprocess, preprocess_labels
from edgeseg.kernels.threads import build_info, get_num_threads, has_openmp, set_num_threads

__all__ = [
    "ComponentRule",
    "checked_labels",
    "filter_components",
    "build_info",
    "get_num_threads",
    "has_openmp",
    "largest_component",
    "postprocess",
    "preprocess",
    "preprocess_labels",
    "resize_labels",
    "set_num_threads",
]
