"""Turn downloaded DICOM series into NIfTI volumes and the datalist CSV the pretraining recipe reads.

Each series folder is checked and read by :mod:`ctfm.io.dicom` (one series, CT, no localizers, no missing or
duplicated slices, uniform spacing; HU from the rescale tags, slices in position order) and written as
``<out>/<collection_id>/<SeriesInstanceUID>.nii.gz`` with a JSON sidecar of its key tags. A series that fails is
skipped with its reason in ``conversion_report.csv``; the others go on in a process pool. Files are written under
temporary names and renamed (the NIfTI last), so a volume that exists is complete and a re-run skips it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from ctfm.atomic import write_atomically
from ctfm.idc.errors import IDCError
from ctfm.idc.selection import SELECTION_FILE, read_selection, series_dir, split_valid, write_csv_atomically

# Imported here, not in the workers: forked workers inherit the pydicom/SimpleITK modules already loaded.
from ctfm.io.dicom import check_dicom_series, read_dicom_series
from ctfm.io.reader import validate_ct_array
from ctfm.reports import MAX_REASONS, ReportRow, RunReport

DATALIST_FILE = "datalist.csv"
REPORT_FILE = "conversion_report.csv"
#: Columns the datalist carries besides ``image``, the volume's path relative to the CSV.
DATALIST_COLUMNS = ("collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID")
_VOLUME_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class SeriesJob:
    """One series folder to convert, where its volume goes, and what the selection knows about it."""

    folder: Path
    volume: Path
    ids: dict[str, str]


@dataclass
class ConversionReport(RunReport):
    """What one ``convert`` call did; ``ok`` is false when a series failed or was never downloaded."""

    STATUSES = {
        "converted": "series converted",
        "already_converted": "already converted",
        "failed": "failed",
        "not_downloaded": "not (completely) downloaded",
    }
    PROBLEMS = frozenset({"failed", "not_downloaded"})
    ITEM_COLUMN = "series"

    out_dir: Path
    datalist: Path
    converted: list[str] = field(default_factory=list)
    already_converted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_downloaded: list[str] = field(default_factory=list)

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(folder, "converted") for folder in self.converted),
            *(ReportRow(folder, "already_converted") for folder in self.already_converted),
            *(ReportRow(folder, "failed", reason) for folder, reason in self.failed),
            *(ReportRow(uid, "not_downloaded", "no complete download folder") for uid in self.not_downloaded),
        ]

    def headline(self) -> str:
        return f"{super().headline()}; datalist: {self.datalist}"

    def summary(self, max_reasons: int = MAX_REASONS) -> str:
        details = f"\n  details in {self.out_dir / REPORT_FILE}" if not self.ok else ""
        return super().summary(max_reasons) + details


def _has_files(folder: Path) -> bool:
    return any(entry.is_file() for entry in os.scandir(folder))


def _walk_series(root: Path) -> Iterator[Path]:
    """Folders holding files, below ``root``, except unfinished downloads (``*.partial``)."""
    for current, dirs, _ in os.walk(root):
        dirs[:] = sorted(name for name in dirs if not name.endswith(".partial"))
        folder = Path(current)
        if folder != root and _has_files(folder):
            yield folder


def plan(download_dir: Path, out_dir: Path) -> tuple[list[SeriesJob], list[str], list[tuple[str, str]]]:
    """The series to convert, the selected ones with no complete download folder, and unusable selection rows.

    With the ``selection.csv`` that ``ctfm idc download`` keeps, its rows say which folders are series and give
    their collection, patient and study. Without it, every folder with files is taken as one series and mirrored
    under ``out_dir``; its IDs then come from the DICOM tags.
    """
    manifest = download_dir / SELECTION_FILE
    if not manifest.is_file():
        jobs = []
        for folder in _walk_series(download_dir):
            relative = folder.relative_to(download_dir)
            jobs.append(SeriesJob(folder, out_dir / relative.parent / (relative.name + _VOLUME_SUFFIX), {}))
        return jobs, [], []
    frame, invalid = split_valid(read_selection(manifest))
    jobs, missing = [], []
    for row in frame.itertuples(index=False):
        folder = series_dir(download_dir, row.collection_id, row.SeriesInstanceUID)
        if not folder.is_dir():
            missing.append(row.SeriesInstanceUID)
            continue
        ids = {column: str(getattr(row, column)) for column in DATALIST_COLUMNS}
        jobs.append(
            SeriesJob(folder, series_dir(out_dir, row.collection_id, row.SeriesInstanceUID + _VOLUME_SUFFIX), ids)
        )
    return jobs, missing, [(f"{manifest}: {uid}", reason) for uid, reason in invalid]


def sidecar_path(volume: Path) -> Path:
    return volume.with_name(volume.name[: -len(_VOLUME_SUFFIX)] + ".json")


def convert_series(job: SeriesJob) -> dict[str, str]:
    """Check, read and write one series; returns its datalist row (``image`` absolute). Raises InvalidScanError."""
    info = check_dicom_series(job.folder)
    image = read_dicom_series(job.folder, info)
    array = sitk.GetArrayViewFromImage(image)
    validate_ct_array(job.folder, array)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= -32768 and array.max() <= 32767:
        image = sitk.Cast(image, sitk.sitkInt16)  # HU fit int16: half the size of the float SimpleITK may return

    ids = {
        "collection_id": job.ids.get("collection_id", ""),
        "PatientID": job.ids.get("PatientID") or info.patient_id or "",
        "StudyInstanceUID": job.ids.get("StudyInstanceUID") or info.study_instance_uid or "",
        "SeriesInstanceUID": job.ids.get("SeriesInstanceUID") or info.series_instance_uid,
    }
    sidecar = {
        **ids,
        "source": str(job.folder),
        "volume": {
            "shape_xyz": list(image.GetSize()),
            "spacing_xyz_mm": list(image.GetSpacing()),
            "origin_lps_mm": list(image.GetOrigin()),
            "direction": list(image.GetDirection()),
            "pixel_type": image.GetPixelIDTypeAsString(),
            "units": "HU",
        },
        "dicom": info.as_dict(),
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    write_atomically(sidecar_path(job.volume), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    # Last: an existing volume means a finished conversion.
    write_atomically(job.volume, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
    return {"image": str(job.volume), **ids}


def _convert_or_reason(job: SeriesJob) -> tuple[SeriesJob, dict[str, str] | None, str]:
    """Run in a worker: a failure becomes a reason string, so one bad series never stops the others."""
    try:
        return job, convert_series(job), ""
    except Exception as err:  # any error of one series is that series' problem; the run goes on
        message = str(err)
        return job, None, message if message.startswith(str(job.folder)) else f"{job.folder}: {message}"


def _single_threaded() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _existing_row(job: SeriesJob) -> dict[str, str]:
    """Datalist row of a volume converted by an earlier run, from its sidecar."""
    try:
        sidecar = json.loads(sidecar_path(job.volume).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sidecar = {}
    return {
        "image": str(job.volume),
        **{column: str(sidecar.get(column, job.ids.get(column, ""))) for column in DATALIST_COLUMNS},
    }


def convert(
    download_dir: str | Path,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert every downloaded series of ``download_dir`` into ``out_dir`` and write ``out_dir/datalist.csv``.

    ``workers`` processes convert in parallel (default: the CPU count; 1 converts in this process). Rows of an
    existing datalist in ``out_dir`` are kept, so several download folders can feed one dataset.
    """
    download_dir, out_dir = Path(download_dir).resolve(), Path(out_dir).resolve()
    if not download_dir.is_dir():
        raise IDCError(f"{download_dir}: no such download folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, missing, invalid = plan(download_dir, out_dir)
    report = ConversionReport(out_dir=out_dir, datalist=out_dir / DATALIST_FILE, failed=invalid, not_downloaded=missing)
    rows = []
    todo = []
    for job in jobs:
        if job.volume.is_file():
            report.already_converted.append(str(job.folder))
            rows.append(_existing_row(job))
        else:
            todo.append(job)

    workers = max(1, workers or os.cpu_count() or 1)
    with tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), unit="series", desc="convert", disable=not progress
    ) as bar:
        if workers == 1 or len(todo) <= 1:
            results = (_convert_or_reason(job) for job in todo)
            _collect(results, report, rows, bar)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_single_threaded) as pool:
                futures = [pool.submit(_convert_or_reason, job) for job in todo]
                _collect((future.result() for future in as_completed(futures)), report, rows, bar)

    _write_datalist(report.datalist, rows)
    report.write_csv(out_dir / REPORT_FILE, problems_only=True)
    return report


def _collect(
    results: Iterable[tuple[SeriesJob, dict[str, str] | None, str]],
    report: ConversionReport,
    rows: list[dict[str, str]],
    bar: tqdm,
) -> None:
    for job, row, reason in results:
        if row is None:
            report.failed.append((str(job.folder), reason))
        else:
            report.converted.append(str(job.folder))
            rows.append(row)
        bar.update(1)


def _write_datalist(path: Path, rows: list[dict[str, str]]) -> None:
    """Merge ``rows`` into the datalist at ``path``: image paths relative to it, volumes that exist, one per image."""
    frame = pd.DataFrame(rows, columns=["image", *DATALIST_COLUMNS])
    frame["image"] = [Path(os.path.relpath(image, path.parent)).as_posix() for image in frame["image"]]
    if path.is_file():
        earlier = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame = pd.concat([earlier, frame], ignore_index=True).drop_duplicates("image", keep="last")
    exists = pd.Series([(path.parent / image).is_file() for image in frame["image"]], index=frame.index, dtype=bool)
    frame = frame[exists]  # a Series, not a list: an empty list would select no columns rather than no rows
    write_csv_atomically(frame.sort_values("image").reset_index(drop=True), path)
