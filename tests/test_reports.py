"""The one report base: counts, reasons, ``ok``, the (item, status, reason) table, and the four reports built on it."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from ctfm.reports import ReportRow, RunReport


@dataclass
class CopyReport(RunReport):
    STATUSES = {"copied": "copied", "lost": "lost"}
    PROBLEMS = frozenset({"lost"})
    ITEM_COLUMN = "file"

    copied: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[ReportRow]:
        return [ReportRow(f, "copied") for f in self.copied] + [ReportRow(f, "lost", r) for f, r in self.lost.items()]


def test_first_line_counts_every_status_then_the_reasons_are_listed_and_truncated():
    report = CopyReport(copied=["a", "b"], lost={f"f{i}": f"reason {i}" for i in range(13)})
    lines = report.summary(max_reasons=10).splitlines()
    assert lines[0] == "2 copied, 13 lost"
    assert lines[1:11] == [f"  lost f{i}: reason {i}" for i in range(10)]
    assert lines[11:] == ["  ... and 3 more"]
    assert not report.ok and [row.item for row in report.done] == ["a", "b"]
    assert report.counts() == {"copied": 2, "lost": 13}


def test_a_clean_run_is_ok_and_counts_zeros_too():
    report = CopyReport(copied=["a"])
    assert report.ok and report.summary() == "1 copied, 0 lost" and report.problems == []


def test_the_table_is_written_atomically_as_csv(tmp_path):
    report = CopyReport(copied=["a"], lost={"b": "disk full, then gone"})
    path = report.write_csv(tmp_path / "out" / "report.csv")
    assert path.read_text().splitlines() == ["file,status,reason", "a,copied,", 'b,lost,"disk full, then gone"']
    assert [p.name for p in path.parent.iterdir()] == ["report.csv"]
    report.write_csv(path, problems_only=True)
    assert pd.read_csv(path).values.tolist() == [["b", "lost", "disk full, then gone"]]


def test_importing_the_base_imports_nothing_heavy():
    code = "import sys, ctfm.reports; print(sorted({'torch', 'monai', 'pandas', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def _prepare():
    from ctfm.data.cache import PrepareReport

    return PrepareReport(prepared=["a.nii.gz"], cached=["b.nii.gz"], skipped={"c.nii.gz": "cannot be read"})


def _embedding():
    from ctfm.embedding_table import EmbeddingReport

    return EmbeddingReport(out=Path("t.parquet"), embedded_paths=["a.nii.gz"], skipped=[("c.nii.gz", "not CT")])


def _download():
    from ctfm.idc.download import DownloadReport, IncompleteSeries

    return DownloadReport(
        out_dir=Path("dl"),
        downloaded=["1.1"],
        already_complete=["1.2"],
        incomplete=[IncompleteSeries("1.3", 7, 8, "timeout")],
        invalid=[("..", "invalid SeriesInstanceUID '..'")],
        rounds=2,
    )


def _conversion():
    from ctfm.idc.convert import ConversionReport

    return ConversionReport(
        out_dir=Path("v"),
        datalist=Path("v/dl.csv"),
        converted=["dl/c/1.1"],
        failed=[("dl/c/1.4", "dl/c/1.4: modality is 'MR', not CT")],
        not_downloaded=["1.3"],
    )


@pytest.mark.parametrize(
    "make, headline, column, problems",
    [
        (_prepare, "1 prepared, 1 already cached, 1 skipped", "image", [("c.nii.gz", "skipped", "cannot be read")]),
        (
            _embedding,
            "1 embedded, 0 already in the table, 1 skipped; table: t.parquet",
            "path",
            [("c.nii.gz", "skipped", "not CT")],
        ),
        (
            _download,
            "1 series downloaded, 1 already complete, 1 incomplete, 1 invalid rows skipped (2 s5cmd rounds)",
            "SeriesInstanceUID",
            [("1.3", "incomplete", "7/8 files (timeout)"), ("..", "invalid", "invalid SeriesInstanceUID '..'")],
        ),
        (
            _conversion,
            "1 series converted, 0 already converted, 1 failed, 1 not (completely) downloaded; datalist: v/dl.csv",
            "series",
            [
                ("dl/c/1.4", "failed", "dl/c/1.4: modality is 'MR', not CT"),
                ("1.3", "not_downloaded", "no complete download folder"),
            ],
        ),
    ],
    ids=["prepare", "embedding", "download", "conversion"],
)
def test_every_run_report_shares_the_base(make, headline, column, problems):
    report = make()
    assert isinstance(report, RunReport) and not report.ok
    summary = report.summary().splitlines()
    assert summary[0] == headline
    assert summary[1 : 1 + len(problems)] == [f"  {status} {item}: {reason}" for item, status, reason in problems]
    table = report.to_frame(problems_only=True)
    assert list(table.columns) == [column, "status", "reason"]
    assert [tuple(row) for row in table.values.tolist()] == problems
    assert len(report.to_frame()) == len(report.rows()) == sum(report.counts().values())


def test_exit_code_all_done_some_skipped_none_done():
    from ctfm.reports import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL

    assert (EXIT_OK, EXIT_FAILED, EXIT_PARTIAL) == (0, 1, 3)
    assert CopyReport(copied=["a"]).exit_code == 0
    assert CopyReport(copied=["a"], lost={"b": "gone"}).exit_code == 3
    assert CopyReport(lost={"b": "gone"}).exit_code == 1
    assert CopyReport().exit_code == 1  # an empty run did nothing
