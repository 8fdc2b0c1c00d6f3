"""Read a CT scan (NIfTI, NRRD, MHA or a DICOM series folder) into a validated MONAI MetaTensor.

SimpleITK reads NRRD, MHA and DICOM. NIfTI goes through nibabel instead (as in MONAI's default reader), because
ITK's NIfTI reader silently zero-fills a truncated file and turns NaN and inf voxels into 0, hiding exactly the
damage that must be reported. The result follows MONAI's convention: channel first, array axes in the image's index
order, ``affine`` mapping voxel indices to RAS mm.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ctfm.errors import InvalidScanError

if TYPE_CHECKING:
    from monai.data import MetaTensor

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MODALITY_TAG = "0008|0060"
#: File endings of scan and label files, longest first (".nii.gz" before ".nii").
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: A CT whose lowest value stays above this has no air in it (air is about -1000 HU): cropped, skull-stripped or
#: an atlas with its background set to 0. Still HU, so it passes, with a warning.
AIR_CHECK_HU = -500.0
#: Above the densest tissue (cortical bone and enamel stay below about 2000 HU; a 12-bit CT stores 0..4095 with
#: intercept -1024). Non-negative values reaching above it are stored values without their intercept, not HU.
MAX_TISSUE_HU = 2500.0

logger = logging.getLogger(__name__)


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """Voxel-index -> RAS-mm affine of a 3D SimpleITK image (SimpleITK itself works in LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def read_image(path: Path) -> sitk.Image:
    """Read a file or a DICOM series folder with SimpleITK, turning its errors into one that names the path."""
    if not path.exists():
        raise InvalidScanError(path, "no such file or directory")
    if path.is_dir():
        from ctfm.io.dicom import read_dicom_series

        return read_dicom_series(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        from ctfm.io.dicom import sitk_error_reason

        raise InvalidScanError(
            path, f"cannot be read as an image (corrupt, truncated or unsupported): {sitk_error_reason(err)}"
        ) from err


def is_nifti(path: Path) -> bool:
    """NIfTI by name (.nii or .nii.gz), as nibabel and ITK decide too."""
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (float32, index order i, j, k) and RAS affine of a NIfTI file; damage becomes InvalidScanError."""
    try:
        image: Any = nib.load(path)  # a Nifti1Image or Nifti2Image
        array = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error... for a damaged file
        reason = " ".join(str(err).split())
        raise InvalidScanError(path, f"cannot be read as NIfTI (corrupt or truncated): {reason}") from err
    while array.ndim > 3 and array.shape[-1] == 1:  # (x, y, z, 1): a 3D scan stored as one time point
        array = array[..., 0]
    if array.ndim != 3:
        raise InvalidScanError(path, f"is {array.ndim}D (shape {array.shape}); CT-FM needs a 3D scan")
    return array, np.asarray(image.affine, dtype=np.float64)


def validate_ct_array(path: Path | str | None, array: np.ndarray, *, check_hu: bool = True) -> None:
    """Raise InvalidScanError for a volume no CT model should see: not 3D, non-finite, or clearly not in HU.

    "Clearly not HU" is values confined to [0, 1] (normalised already) or non-negative values reaching above
    :data:`MAX_TISSUE_HU` (stored values without their intercept). Plausible HU without any air passes with a
    warning: atlases, skull-stripped and cropped scans set their background to 0.
    """
    if array.ndim != 3 or min(array.shape) < 2:
        raise InvalidScanError(path, f"is not a 3D volume (shape {tuple(array.shape)}); CT-FM needs a 3D scan")
    finite = np.isfinite(array)
    if not finite.all():
        raise InvalidScanError(path, f"contains {int(array.size - finite.sum())} non-finite voxels (NaN or inf)")
    if not check_hu:
        return
    low, high = float(array.min()), float(array.max())
    override = " (pass check_hu=False to override)"
    if low >= 0.0 and high <= 1.0:
        raise InvalidScanError(
            path, f"intensities lie in [{low:g}, {high:g}]: normalised already, not Hounsfield units{override}"
        )
    if low >= 0.0 and high > MAX_TISSUE_HU:
        raise InvalidScanError(
            path,
            f"intensities run from {low:g} to {high:g} with nothing negative: stored values without their rescale "
            f"intercept (HU = stored - 1024 for most scanners), not Hounsfield units{override}",
        )
    if low > AIR_CHECK_HU:
        logger.warning(
            "%s: no air in the scan (lowest value %.1f HU); reading it as HU with its background cut", path, low
        )


def output_name(path: str | Path) -> str:
    """One scan's name without its suffix; outputs of a run over many scans use
    :func:`ctfm.io.naming.output_names`, which keeps same-named scans apart."""
    from ctfm.io.naming import image_stem

    return image_stem(path)


def read_ct(path: str | Path, *, check_hu: bool = True) -> MetaTensor:
    """Read and validate one CT scan: voxels in HU, the affine in RAS millimetres (MONAI's convention).

    Args:
        path: a NIfTI, NRRD or MHA file, or a folder holding one DICOM CT series.
        check_hu: refuse a volume whose values do not look like HU (e.g. already scaled to [0, 1]), naming the
            file; turn off for synthetic or unusual data.

    Returns:
        A float32 ``(1, I, J, K)`` MetaTensor in HU, in the file's voxel order, whose affine maps voxel indices
        to RAS mm.

    Raises:
        InvalidScanError: the file cannot be read, is not 3D, holds NaN or inf, or its values are clearly not HU.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> path = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> scan = ctfm.read_ct(path)
        >>> tuple(scan.shape), scan.dtype
        ((1, 64, 64, 24), torch.float32)
    """
    path = Path(path)
    array, ras = _read_volume(path, what="CT")
    validate_ct_array(path, array, check_hu=check_hu)
    return _as_meta_tensor(path, array.astype(np.float32, copy=False), ras)


def read_label_map(path: str | Path, *, like: MetaTensor | None = None) -> MetaTensor:
    """Read an integer label map (NIfTI, NRRD, MHA) as a ``(1, I, J, K)`` MetaTensor with its RAS affine.

    Values are kept as float32 (exact for any label count a CT has), which MONAI's resampling needs. With ``like``
    (the scan it belongs to) the map must lie on that scan's grid: same shape and affine.
    """
    path = Path(path)
    array, ras = _read_volume(path, what="label map")
    if array.ndim != 3:
        raise InvalidScanError(path, f"is not a 3D label map (shape {tuple(array.shape)})")
    if not np.isfinite(array).all() or (array < 0).any() or not np.array_equal(array, np.round(array)):
        raise InvalidScanError(path, "is not a label map: its values must be non-negative integers")
    labels = _as_meta_tensor(path, array.astype(np.float32, copy=False), ras)
    if like is not None:
        check_same_grid(like, labels, path)
    return labels


def check_same_grid(
    image: MetaTensor, other: MetaTensor, other_path: str | Path, *, tolerance_mm: float = 1e-3
) -> None:
    """Raise InvalidScanError naming ``other_path`` unless ``other`` has ``image``'s shape and affine."""
    if tuple(image.shape[1:]) != tuple(other.shape[1:]):
        raise InvalidScanError(
            other_path,
            f"has shape {tuple(other.shape[1:])} but its scan {image.meta.get('filename_or_obj', '')} has "
            f"{tuple(image.shape[1:])}: not on the scan's grid",
        )
    difference = float(np.abs(np.asarray(image.affine, dtype=np.float64) - np.asarray(other.affine)).max())
    if difference > tolerance_mm:
        raise InvalidScanError(
            other_path,
            f"its affine differs from its scan's {image.meta.get('filename_or_obj', '')} by up to {difference:.3g} mm: "
            "not on the scan's grid",
        )


def _read_volume(path: Path, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxels in index order (i, j, k) and the RAS affine, with SimpleITK's checks of a CT file or series."""
    if path.is_file() and is_nifti(path):
        return read_nifti(path)
    image = read_image(path)
    if image.GetDimension() != 3:
        raise InvalidScanError(path, f"is {image.GetDimension()}D; CT-FM needs a 3D {what}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise InvalidScanError(path, f"has {components} components per voxel; a {what} is scalar")
    if image.HasMetaDataKey(_MODALITY_TAG) and image.GetMetaData(_MODALITY_TAG).strip() not in ("CT", ""):
        raise InvalidScanError(path, f"modality is {image.GetMetaData(_MODALITY_TAG).strip()!r}, not CT")
    # SimpleITK arrays are (k, j, i); MONAI wants index order (i, j, k) to match the affine's columns.
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine_from_sitk(image)


def _as_meta_tensor(path: Path, array: np.ndarray, ras: np.ndarray) -> MetaTensor:
    import torch  # imported here so the checks above stay usable without torch (e.g. in conversion workers)
    from monai.data import MetaTensor

    affine = torch.as_tensor(ras, dtype=torch.float64)
    meta = {"filename_or_obj": str(path), "original_affine": affine.clone(), "spatial_shape": array.shape}
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=affine, meta=meta)
