"""Read one DICOM CT series folder into a SimpleITK image, after checking that it really is one usable volume.

SimpleITK reads whatever files it is given and at best warns about gaps, so a folder holding two series, a scout,
duplicated or missing slices would silently become a distorted volume. Headers are checked first with pydicom
(``stop_before_pixels``, fast), every problem is reported as :class:`~ctfm.errors.InvalidScanError` naming the
folder, and only then are the pixels read, in the order of the slice positions along the slice normal.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from ctfm.errors import InvalidScanError

#: Two slice gaps are equal if they differ by less than this many mm or this fraction of the typical gap.
GAP_TOLERANCE_MM = 0.01
GAP_TOLERANCE_FRACTION = 0.01
#: In-plane geometry (pixel spacing, orientation) may differ by float noise only.
GEOMETRY_TOLERANCE = 1e-4
_MAX_LISTED = 5
_ITK_PREFIX = re.compile(r"^(ITK ERROR: \w+\(0x[0-9a-f]+\): |sitk::ERROR: )")


@dataclass(frozen=True)
class SeriesInfo:
    """What a series is (for a JSON sidecar) and the order its slices go in (for the reader).

    ``spacing`` is (z, y, x) in mm, z measured from slice positions (``slice_thickness`` is the nominal tag, which
    can differ from the spacing). ``files`` are sorted along the slice normal; :meth:`as_dict` leaves them out.
    """

    folder: str
    modality: str
    patient_id: str | None
    study_instance_uid: str | None
    series_instance_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str | None
    n_slices: int
    rows: int
    columns: int
    spacing: tuple[float, float, float]
    slice_thickness: float | None
    orientation: tuple[float, ...]
    first_position: tuple[float, float, float]
    image_type: tuple[str, ...]
    manufacturer: str | None
    manufacturer_model_name: str | None
    convolution_kernel: str | None
    kvp: float | None
    body_part_examined: str | None
    series_description: str | None
    study_date: str | None
    files: tuple[str, ...] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable header summary, without the file list."""
        info = asdict(self)
        del info["files"]
        return info


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(item) for item in value)
    return str(value)


def _number(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _read_headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """Headers of the DICOM files directly in ``folder``; other files (sidecars, DICOMDIR) are skipped."""
    headers: list[tuple[Path, pydicom.Dataset]] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        except Exception as err:  # pydicom raises many types for a damaged header
            raise InvalidScanError(folder, f"DICOM file {path.name} has a damaged header: {err}") from err
        if "DirectoryRecordSequence" in ds:  # a DICOMDIR index, not an image
            continue
        headers.append((path, ds))
    return headers


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def _require(folder: Path, headers: list[tuple[Path, pydicom.Dataset]], keyword: str) -> None:
    """Every file must carry ``keyword``; a damaged header or a non-image object does not."""
    missing = [path.name for path, ds in headers if keyword not in ds]
    if missing:
        examples = ", ".join(missing[:_MAX_LISTED])
        raise InvalidScanError(
            folder, f"{_files(len(missing))} without {keyword} (damaged, or not image slices): {examples}"
        )


def _only_one(folder: Path, headers: list[tuple[Path, pydicom.Dataset]], keyword: str, what: str) -> Any:
    """The single value of a tag shared by all files, else an error listing the values and their file counts."""
    counts = Counter(_text(ds.get(keyword)) for _, ds in headers)
    if len(counts) > 1:
        listed = ", ".join(f"{value} ({_files(count)})" for value, count in counts.most_common(_MAX_LISTED))
        raise InvalidScanError(folder, f"mixes {len(counts)} {what}: {listed}")
    return headers[0][1].get(keyword)


def _same_geometry(folder: Path, headers: list[tuple[Path, pydicom.Dataset]], keyword: str, what: str) -> np.ndarray:
    """The numeric vector tag shared (within float noise) by all files, else an error listing the variants."""
    _require(folder, headers, keyword)
    values = np.array([[float(x) for x in ds.get(keyword)] for _, ds in headers])
    if np.abs(values - values[0]).max() > GEOMETRY_TOLERANCE:
        variants = Counter(tuple(np.round(row, 4)) for row in values)
        listed = ", ".join(f"{list(value)} ({_files(count)})" for value, count in variants.most_common(_MAX_LISTED))
        raise InvalidScanError(folder, f"mixes {len(variants)} {what}: {listed}")
    return values[0]


def _describe_gaps(positions: np.ndarray, gaps: np.ndarray, typical: float, irregular: np.ndarray) -> str:
    missing = int(np.sum(np.maximum(np.rint(gaps[irregular] / typical) - 1, 0)))
    listed = "; ".join(
        f"{gaps[i]:.4g} mm between {positions[i]:.2f} and {positions[i + 1]:.2f} mm"
        for i in np.flatnonzero(irregular)[:_MAX_LISTED]
    )
    more = f" and {int(irregular.sum()) - _MAX_LISTED} more" if irregular.sum() > _MAX_LISTED else ""
    estimate = f"; about {missing} missing slice{'s' if missing > 1 else ''}" if missing else ""
    return (
        f"has non-uniform slice spacing along the slice normal (typical gap {typical:.4g} mm): {listed}{more}{estimate}"
    )


def check_dicom_series(folder: str | Path) -> SeriesInfo:
    """Check that ``folder`` holds exactly one complete, regular CT volume and summarise it.

    Raises :class:`InvalidScanError` (naming the folder and the problem) for: no DICOM files, several series, a
    modality other than CT, localizer (scout) images, fewer than two slices, mixed rows/columns, pixel spacing or
    orientation, duplicated slice positions, and missing slices or otherwise non-uniform spacing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidScanError(folder, "is not a folder of DICOM files" if folder.exists() else "no such folder")
    headers = _read_headers(folder)
    if not headers:
        subfolders = sum(1 for p in folder.iterdir() if p.is_dir())
        hint = f" (it has {subfolders} sub-folders: pass one series folder)" if subfolders else ""
        raise InvalidScanError(folder, f"contains no DICOM files{hint}")

    _require(folder, headers, "SeriesInstanceUID")
    _only_one(folder, headers, "SeriesInstanceUID", "series (put each series in its own folder)")
    modality = _text(_only_one(folder, headers, "Modality", "modalities")) or "unknown"
    if modality != "CT":
        raise InvalidScanError(folder, f"modality is {modality!r}, not CT")
    scouts = [path.name for path, ds in headers if "LOCALIZER" in (str(x).upper() for x in ds.get("ImageType", []))]
    if scouts:
        raise InvalidScanError(
            folder, f"{len(scouts)} of {len(headers)} files are LOCALIZER (scout) images, not slices of a volume"
        )
    multiframe = [path.name for path, ds in headers if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multiframe:
        raise InvalidScanError(folder, f"holds multi-frame (enhanced) DICOM ({multiframe[0]}), which is not supported")
    if len(headers) < 2:
        raise InvalidScanError(folder, f"has {len(headers)} slice; a 3D volume needs at least 2")
    for keyword in ("Rows", "Columns"):
        _require(folder, headers, keyword)
    rows = int(_only_one(folder, headers, "Rows", "image heights (Rows)"))
    columns = int(_only_one(folder, headers, "Columns", "image widths (Columns)"))
    pixel_spacing = _same_geometry(folder, headers, "PixelSpacing", "pixel spacings")
    orientation = _same_geometry(folder, headers, "ImageOrientationPatient", "slice orientations")
    _require(folder, headers, "ImagePositionPatient")

    normal = np.cross(orientation[:3], orientation[3:])
    points = np.array([[float(x) for x in ds.ImagePositionPatient] for _, ds in headers])
    order = np.argsort(points @ normal, kind="stable")
    headers = [headers[i] for i in order]
    positions = (points @ normal)[order]
    gaps = np.diff(positions)

    duplicated = np.flatnonzero(gaps < GAP_TOLERANCE_MM)
    if duplicated.size:
        examples = "; ".join(
            f"{positions[i]:.2f} mm ({headers[i][0].name}, {headers[i + 1][0].name})" for i in duplicated[:_MAX_LISTED]
        )
        plural = "s" if duplicated.size > 1 else ""
        raise InvalidScanError(folder, f"has {duplicated.size} duplicated slice position{plural}: {examples}")
    typical = float(np.median(gaps))
    irregular = np.abs(gaps - typical) > max(GAP_TOLERANCE_MM, GAP_TOLERANCE_FRACTION * typical)
    if irregular.any():
        raise InvalidScanError(folder, _describe_gaps(positions, gaps, typical, irregular))

    first = headers[0][1]
    return SeriesInfo(
        folder=str(folder),
        modality=modality,
        patient_id=_text(first.get("PatientID")),
        study_instance_uid=_text(first.get("StudyInstanceUID")),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=_text(first.get("FrameOfReferenceUID")),
        sop_class_uid=_text(first.get("SOPClassUID")),
        n_slices=len(headers),
        rows=rows,
        columns=columns,
        spacing=(float(np.mean(gaps)), float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_thickness=_number(first.get("SliceThickness")),
        orientation=tuple(float(x) for x in orientation),
        first_position=tuple(float(x) for x in points[order[0]]),  # type: ignore[arg-type]
        image_type=tuple(str(x) for x in first.get("ImageType", [])),
        manufacturer=_text(first.get("Manufacturer")),
        manufacturer_model_name=_text(first.get("ManufacturerModelName")),
        convolution_kernel=_text(first.get("ConvolutionKernel")),
        kvp=_number(first.get("KVP")),
        body_part_examined=_text(first.get("BodyPartExamined")),
        series_description=_text(first.get("SeriesDescription")),
        study_date=_text(first.get("StudyDate")),
        files=tuple(str(path) for path, _ in headers),
    )


def sitk_error_reason(err: RuntimeError) -> str:
    """The informative line of a SimpleITK exception (the first only names SimpleITK's source file)."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    lines = [line for line in lines if not line.startswith("Reason:")] or lines  # errno noise after ITK's message
    return _ITK_PREFIX.sub("", lines[-1]) if lines else str(err).strip() or "unknown reason"


def read_dicom_series(folder: str | Path, info: SeriesInfo | None = None) -> sitk.Image:
    """Check the series (see :func:`check_dicom_series`) and read it in HU, slices in position order.

    SimpleITK applies each file's RescaleSlope/RescaleIntercept, so the voxels are Hounsfield units. Pass the
    ``info`` a caller already got from :func:`check_dicom_series` to avoid parsing every header twice.
    """
    info = check_dicom_series(folder) if info is None else info
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    try:
        return reader.Execute()
    except RuntimeError as err:
        problem = f"pixel data cannot be read (truncated file or unsupported encoding): {sitk_error_reason(err)}"
        for path in info.files:  # the series reader does not say which file failed; find it
            try:
                sitk.ReadImage(path)
            except RuntimeError as file_err:
                problem = f"{Path(path).name} cannot be read (truncated or unsupported): {sitk_error_reason(file_err)}"
                break
        raise InvalidScanError(folder, problem) from err
