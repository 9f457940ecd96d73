"""What a sweep point records with its latencies: the machine and the software they were measured with."""

from __future__ import annotations

import platform
from importlib import metadata

import numpy as np

MEASURE = dict(batches=[1], slice_size=32, runs=1, warmup=0, volume_slices=2, threads=1)


def test_a_point_records_the_library_versions_beside_the_machine(exported_bundle):
    """The sweep recorded the machine but not the library versions, which move a latency as much."""
    from edgeseg import __version__
    from edgeseg.runtime.machine import machine_signature
    from edgeseg.sweep.run import measure_latency

    measured = measure_latency(exported_bundle, MEASURE)

    assert measured["machine"] == machine_signature()
    versions = measured["versions"]
    assert versions["onnxruntime"] == metadata.version("onnxruntime")
    assert versions["openvino"] == metadata.version("openvino")
    assert (versions["numpy"], versions["python"], versions["edgeseg"]) == (np.__version__, platform.python_version(),
                                                                             __version__)
