"""Atomic writes: the temporary file ends like the target, so writers that pick a format by name write the right one."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctfm.atomic import write_atomically


def test_nibabel_writes_a_gzipped_nifti_through_it(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    target = tmp_path / "1.2.840.5.nii.gz"  # a SeriesInstanceUID name: dots before the format suffixes
    write_atomically(target, lambda tmp: nib.save(nib.Nifti1Image(data, np.eye(4)), tmp))
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the name says
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), data)
    assert [path.name for path in tmp_path.iterdir()] == [target.name]


def test_np_save_writes_exactly_the_target(tmp_path):
    target = tmp_path / "entry.npy"
    write_atomically(target, lambda tmp: np.save(tmp, np.ones((2, 3)), allow_pickle=False))
    assert [path.name for path in tmp_path.iterdir()] == ["entry.npy"]  # no entry.npy.npy, no temporary left
    np.testing.assert_array_equal(np.load(target), np.ones((2, 3)))


def test_pandas_infers_compression_from_the_target_name(tmp_path):
    target = tmp_path / "table.csv.gz"
    write_atomically(target, lambda tmp: pd.DataFrame({"a": [1, 2]}).to_csv(tmp, index=False))
    assert pd.read_csv(target)["a"].tolist() == [1, 2]
    assert target.read_bytes()[:2] == b"\x1f\x8b"


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    seen = []

    def fail(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(tmp_path / "x.nii.gz", fail)
    assert list(tmp_path.iterdir()) == []
    [tmp] = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".x.") and tmp.name.endswith(".tmp.nii.gz")
