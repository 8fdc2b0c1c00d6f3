"""Write a label map as a DICOM Segmentation object (highdicom) that references the CT series it was computed on.

PACS, 3D Slicer, OHIF and the Imaging Data Commons exchange segmentations as DICOM SEG, not NIfTI. The object holds
one segment per class present (its name, a SNOMED CT code where the class list has one, the algorithm) and one binary
frame per segment and source slice it covers, each frame pointing at its source slice's SOP Instance UID and carrying
that slice's position.

Where this breaks is the index mapping, so nothing is assumed about it: the label map comes with its RAS affine,
the source slices' own positions and orientation define the series grid, and the map must lie on that grid up to a
permutation and flips of its axes (checked to float noise), which are then undone exactly. A map on any other grid
(resampled, cropped, tilted) is refused with one line naming the series folder.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.io.dicom import SeriesInfo, check_dicom_series

if TYPE_CHECKING:
    import highdicom as hd

logger = logging.getLogger(__name__)

#: What the batch commands' ``--output-type`` writes per input: a NIfTI label map, or a DICOM SEG of the series.
OutputType = Literal["nifti", "dicom-seg"]
OUTPUT_TYPES: tuple[OutputType, ...] = ("nifti", "dicom-seg")

#: Where the SNOMED CT codes of the TotalSegmentator classes live (source cited in the file's header).
SNOMED_TABLE = "totalsegmentator_snomed.csv"
#: Category and type of a class without a coded anatomy (DICOM's and TotalSegmentator's usual fallback).
GENERIC_TISSUE = Code("85756007", "SCT", "Tissue")
#: The label map's axes must map onto the series' axes to this fraction of a voxel.
GRID_TOLERANCE_VOXELS = 1e-3
#: Each slice must sit where the series' first slice and slice step put it, to this fraction of the step.
SLICE_TOLERANCE = 0.01
#: DICOM LO (long string) values hold at most 64 characters.
_LO = 64
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

AlgorithmType = Literal["AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"]


def check_output_type(output_type: str) -> None:
    """Refuse an output type other than :data:`OUTPUT_TYPES` before any work."""
    if output_type not in OUTPUT_TYPES:
        raise CTFMError(f"output type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")


def model_name(model: object) -> str:
    """How a SEG names the model: a registry name or repo id as given, a local folder by its own name, else its
    network's class (a :class:`~ctfm.segmentation.Segmenter` or module passed in Python)."""
    if isinstance(model, (str, Path)):
        return Path(model).name if Path(model).exists() else str(model)
    return type(getattr(model, "network", model)).__name__


def require_dicom_series(path: str | Path) -> None:
    """A DICOM SEG references its source slices, so only a DICOM series folder can have one."""
    if not Path(path).is_dir():
        raise InvalidScanError(path, "is not a DICOM series folder: --output-type dicom-seg needs DICOM input")


@dataclass(frozen=True)
class AnatomyCode:
    """The coded meaning of one class: what it is (category, type, laterality), and where for a lesion."""

    category: Code
    type: Code
    type_modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None


def _sct(code: str, meaning: str) -> Code | None:
    return Code(code, "SCT", meaning) if code else None


@lru_cache(maxsize=1)
def snomed_codes() -> dict[str, AnatomyCode]:
    """Class name -> SNOMED CT codes for the 117 TotalSegmentator "total" classes (shipped as ``ctfm/io/data``)."""
    text = (files("ctfm.io") / "data" / SNOMED_TABLE).read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    table: dict[str, AnatomyCode] = {}
    for row in rows:
        table[row["name"]] = AnatomyCode(
            Code(row["category_code"], "SCT", row["category_meaning"]),
            Code(row["type_code"], "SCT", row["type_meaning"]),
            _sct(row["type_modifier_code"], row["type_modifier_meaning"]),
            _sct(row["region_code"], row["region_meaning"]),
            _sct(row["region_modifier_code"], row["region_modifier_meaning"]),
        )
    return table


def segment_description(
    number: int,
    name: str,
    *,
    algorithm_type: AlgorithmType,
    algorithm: hd.AlgorithmIdentificationSequence,
) -> tuple[hd.seg.SegmentDescription, bool]:
    """The description of segment ``number`` for class ``name``, and whether the class has a coded anatomy."""
    import highdicom as hd

    anatomy = snomed_codes().get(name)
    code = anatomy or AnatomyCode(GENERIC_TISSUE, GENERIC_TISSUE)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:_LO],
        segmented_property_category=code.category,
        segmented_property_type=code.type,
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        anatomic_regions=[code.region] if code.region is not None else None,
    )
    # highdicom has no arguments for the modifiers; DICOM nests them inside the item they modify.
    if code.type_modifier is not None:
        modifier = hd.sr.CodedConcept.from_code(code.type_modifier)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    if code.region_modifier is not None:
        modifier = hd.sr.CodedConcept.from_code(code.region_modifier)
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [modifier]
    return description, anatomy is not None


def series_grid(info: SeriesInfo, headers: Sequence[pydicom.Dataset]) -> np.ndarray:
    """Voxel (column, row, slice in ``info.files`` order) -> LPS mm affine of the series, checked slice by slice."""
    first = headers[0]
    row_cosine = np.array([float(x) for x in first.ImageOrientationPatient[:3]])
    column_cosine = np.array([float(x) for x in first.ImageOrientationPatient[3:]])
    row_spacing, column_spacing = (float(x) for x in first.PixelSpacing)
    positions = np.array([[float(x) for x in ds.ImagePositionPatient] for ds in headers])
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine = np.eye(4)
    affine[:3, 0] = row_cosine * column_spacing  # along a row: the column index grows
    affine[:3, 1] = column_cosine * row_spacing  # down a column: the row index grows
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    off = np.linalg.norm(positions - expected, axis=1)
    if off.max() > SLICE_TOLERANCE * np.linalg.norm(step):
        worst = int(off.argmax())
        raise InvalidScanError(
            info.folder,
            f"slice {Path(info.files[worst]).name} lies {off[worst]:.3g} mm off the line of the other slices "
            "(gantry tilt or a sheared series): a DICOM SEG frame could not sit on it",
        )
    return affine


def frames_on_series(label_map: np.ndarray, affine: np.ndarray, info: SeriesInfo, grid: np.ndarray) -> np.ndarray:
    """The label map as ``(slices, rows, columns)``, frame ``k`` on source slice ``info.files[k]``.

    ``affine`` maps the label map's indices to RAS mm (as :func:`ctfm.io.read_ct` gives it). Its axes must be the
    series' axes, permuted and flipped, with the same extent; anything else raises naming the series folder.
    """
    if label_map.ndim != 3:
        raise InvalidScanError(info.folder, f"the label map is {label_map.ndim}D (shape {label_map.shape}), not 3D")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InvalidScanError(info.folder, f"the label map's affine has shape {affine.shape}, not 4x4")
    index_map = np.linalg.solve(grid, _LPS_FROM_RAS @ affine)
    linear, offset = index_map[:3, :3], index_map[:3, 3]
    permutation = np.rint(linear)
    signs = permutation.sum(axis=1)
    shape = (info.columns, info.rows, info.n_slices)
    is_permutation = np.array_equal(np.abs(permutation).sum(axis=0), [1, 1, 1]) and np.array_equal(
        np.abs(permutation).sum(axis=1), [1, 1, 1]
    )
    if not is_permutation or np.abs(linear - permutation).max() > GRID_TOLERANCE_VOXELS:
        raise InvalidScanError(
            info.folder, "the label map's voxel axes are not the series' axes (resampled or rotated): no SEG written"
        )
    source_axis_of = [int(np.flatnonzero(permutation[:, axis])[0]) for axis in range(3)]
    moved = np.transpose(label_map, np.argsort(source_axis_of))  # axis b of ``moved`` runs along source axis b
    expected_offset = np.where(signs < 0, np.array(shape) - 1, 0)
    if moved.shape != shape or np.abs(offset - expected_offset).max() > GRID_TOLERANCE_VOXELS:
        raise InvalidScanError(
            info.folder,
            f"the label map (shape {label_map.shape}) does not cover the series' grid "
            f"({info.n_slices} slices of {info.rows}x{info.columns}) voxel for voxel: no SEG written",
        )
    moved = np.flip(moved, axis=tuple(int(b) for b in np.flatnonzero(signs < 0)))
    return np.ascontiguousarray(np.transpose(moved, (2, 1, 0)))


#: Patient and study attributes a SEG must carry, empty if unknown; anonymised series often drop them altogether.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")  # fmt: skip


def _with_type2_attributes(header: pydicom.Dataset) -> pydicom.Dataset:
    """``header`` (read here, never written back) with the attributes highdicom copies present, empty if absent."""
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def write_dicom_seg(
    label_map: np.ndarray,
    source_series_dir: str | Path,
    classes: Sequence[str],
    out_path: str | Path,
    *,
    affine: np.ndarray,
    algorithm_name: str,
    algorithm_type: AlgorithmType = "AUTOMATIC",
    algorithm_version: str | None = None,
    parameters: Mapping[str, str] | None = None,
    series_description: str | None = None,
    series_number: int = 9001,
    segmentation_type: Literal["BINARY", "LABELMAP"] = "BINARY",
) -> Path:
    """Write ``label_map`` (integer values indexing ``classes``, background 0) as a DICOM SEG of the series.

    One segment per class present, named after it and coded from :func:`snomed_codes` (a class without a code is
    coded as generic "Tissue", and a warning says which). Provenance goes into the object: Manufacturer "ctfm",
    SoftwareVersions and AlgorithmVersion ctfm's version (unless ``algorithm_version``), ManufacturerModelName and
    AlgorithmName the model, AlgorithmParameters ``parameters``. Raises :class:`InvalidScanError` naming the series
    folder if the map is empty, has values without a class, or is not on the series' grid.

    ``segmentation_type``: ``"BINARY"`` is the Segmentation Storage class every SEG reader opens (one bit-packed,
    uncompressed frame per class and slice it covers: large); ``"LABELMAP"`` is the Label Map Segmentation class
    (DICOM 2024: one frame of segment numbers per slice, JPEG-LS lossless; far smaller, newer readers only).
    """
    import highdicom as hd  # imported on use: it takes seconds, and NIfTI outputs never need it

    from ctfm import __version__

    info = check_dicom_series(source_series_dir)
    headers = [_with_type2_attributes(pydicom.dcmread(path, stop_before_pixels=True)) for path in info.files]
    frames = frames_on_series(np.asarray(label_map), affine, info, series_grid(info, headers))
    values = np.unique(frames)
    values = values[values != 0]
    if values.size == 0:
        raise InvalidScanError(info.folder, "the label map is empty: a DICOM SEG needs at least one segment")
    if values.min() < 0 or values.max() >= len(classes):
        raise InvalidScanError(
            info.folder, f"the label map holds value {int(values.max())} but only {len(classes)} classes are named"
        )

    version = algorithm_version or __version__
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:_LO],
        family=codes.cid7162.ArtificialIntelligence,
        version=version[:_LO],
        parameters=dict(parameters) if parameters else None,
    )
    descriptions, uncoded = [], []
    for number, value in enumerate(values.tolist(), start=1):
        description, coded = segment_description(
            number, classes[value], algorithm_type=algorithm_type, algorithm=algorithm
        )
        descriptions.append(description)
        if not coded:
            uncoded.append(classes[value])
    if uncoded:
        logger.warning(
            "%s: no SNOMED CT code for %d class(es), coded as generic Tissue: %s",
            info.folder,
            len(uncoded),
            ", ".join(uncoded),
        )
    # Segment numbers run 1..n over the classes present (DICOM requires consecutive numbers from 1).
    lookup = np.zeros(int(values.max()) + 1, dtype=np.uint16 if values.size > 255 else np.uint8)
    lookup[values] = np.arange(1, values.size + 1)
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=lookup[frames],
        segmentation_type=segmentation_type,
        transfer_syntax_uid=JPEGLSLossless if segmentation_type == "LABELMAP" else ExplicitVRLittleEndian,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ctfm",
        manufacturer_model_name=algorithm_name[:_LO],
        software_versions=f"ctfm {__version__}",
        device_serial_number="1",
        content_label="CTFM",
        content_description=f"{algorithm_name} segmentation by ctfm {__version__}"[:_LO],
        content_creator_name="ctfm^",  # a one-component person name needs its caret
        series_description=(series_description or f"{algorithm_name} segmentation")[:_LO],
    )
    return write_atomically(out_path, lambda tmp: seg.save_as(tmp))
