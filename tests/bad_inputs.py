"""Bad inputs as real files on disk, each built next to a good scan: the corpus every integrity matrix runs.

Each builder takes a folder and a good scan and returns the path of one bad input: a damaged NIfTI, a degenerate
volume, a header with a wrong spacing, a missing path, an empty folder, an odd but valid name.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def _nifti(path: Path, array: np.ndarray, spacing: float = 1.0) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([spacing, spacing, spacing, 1.0])), path)
    return path


def _body(shape: tuple[int, ...]) -> np.ndarray:
    """A block of soft tissue (40 HU) in air: plausible HU for every check but the one under test."""
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[tuple(slice(n // 4, n - n // 4) for n in shape)] = 40.0
    return array


def corrupt(folder: Path, good: Path) -> Path:
    path = folder / "corrupt.nii.gz"
    path.write_bytes(b"this is not a scan" * 20)
    return path


def truncated_gzip(folder: Path, good: Path) -> Path:
    path = folder / "truncated.nii.gz"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def image_2d(folder: Path, good: Path) -> Path:
    return _nifti(folder / "flat.nii.gz", _body((64, 64)))


def image_4d(folder: Path, good: Path) -> Path:
    return _nifti(folder / "series.nii.gz", np.stack([_body((32, 32, 16))] * 3, axis=-1))


def nan_voxels(folder: Path, good: Path) -> Path:
    array = _body((48, 48, 16))
    array[10, 10, 5] = np.nan
    return _nifti(folder / "nan.nii.gz", array)


def all_air(folder: Path, good: Path) -> Path:
    return _nifti(folder / "air.nii.gz", np.full((48, 48, 16), -1024.0, dtype=np.float32))


def tiny_volume(folder: Path, good: Path) -> Path:
    array = np.full((3, 3, 3), 40.0, dtype=np.float32)
    array[0, 0, 0] = -1000.0
    return _nifti(folder / "tiny.nii.gz", array)


def fine_spacing(folder: Path, good: Path) -> Path:
    return _nifti(folder / "fine.nii.gz", _body((48, 48, 16)), spacing=0.01)


def huge_resample(folder: Path, good: Path) -> Path:
    """A header spacing of 200 mm: resampling to 3 x 1 x 1 mm would need hundreds of GB."""
    return _nifti(folder / "huge.nii.gz", _body((48, 48, 16)), spacing=200.0)


def missing(folder: Path, good: Path) -> Path:
    return folder / "missing.nii.gz"


def empty_folder(folder: Path, good: Path) -> Path:
    path = folder / "empty_series"
    path.mkdir()
    return path


def unreadable(folder: Path, good: Path) -> Path:
    path = folder / "locked.nii.gz"
    path.write_bytes(good.read_bytes())
    path.chmod(0)
    return path


def odd_name(folder: Path, good: Path) -> Path:
    path = folder / "scan with spaces ü 日本.nii.gz"
    path.write_bytes(good.read_bytes())
    return path


#: (make the input, words of its one-line problem; None: the input is good and must be embedded too)
