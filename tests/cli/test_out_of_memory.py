"""A volume larger than the memory left to the process ends in one line saying so, exit status 2,
and no output, not a traceback.

The failure is real: the command runs under RLIMIT_AS, so numpy's allocation of the volume fails
as it fails on a small box without swap (where the kernel's OOM killer does not step in first).
The input is a sparse .nii file: 1,400 slices of 512 x 512 int16 (700 MB) that take no disk.
"""

import resource
import subprocess
import sys

import nibabel as nib
import numpy as np

ADDRESS_SPACE = 1536 << 20  # the interpreter, numpy and nibabel, and the file mapped; not its float32 HU


def _sparse_nifti(path, slices: int) -> None:
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    header = nib.Nifti1Image(np.zeros((512, 512, slices), dtype=np.int16)[:, :, :1], affine).header
    header.set_data_shape((512, 512, slices))
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    with open(path, "wb") as handle:
        header.write_to(handle)
        offset = int(header["vox_offset"])
        handle.write(b"\0" * (offset - handle.tell()))
        handle.truncate(offset + 512 * 512 * slices * 2)


def test_a_volume_beyond_the_memory_left_is_one_line(tmp_path, exported_bundle, assert_one_line_error):
    source, out = tmp_path / "long.nii", tmp_path / "labels.nii.gz"
    _sparse_nifti(source, 1400)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(exported_bundle), str(source), "--out",
                           str(out), "--quiet"], capture_output=True, text=True, timeout=300, preexec_fn=limit_memory)

    assert_one_line_error(proc, "out of memory: Unable to allocate 1.37 GiB")
    assert list(tmp_path.iterdir()) == [source]
