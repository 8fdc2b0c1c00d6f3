"""Download from a real S3-compatible server on 127.0.0.1 through s5cmd: layout, counting, retries, resuming."""

from __future__ import annotations

import pandas as pd
import pydicom
import pytest
from s3_server import LocalS3, selection_row

from ctfm.cli import main
from ctfm.data.sample import generate_ct, write_dicom_series
from ctfm.idc import IDCError, download
from ctfm.idc.selection import SELECTION_FILE, read_selection

SLICES = 8


@pytest.fixture(scope="module")
def s3():
    with LocalS3() as server:
        yield server


@pytest.fixture(scope="module")
def bucket_series(s3, tmp_path_factory) -> dict[str, dict]:
    """A complete series, and one whose selection row claims one more instance than the bucket holds."""
    rows = {}
    for name, seed, claim_extra in (("complete", 1, 0), ("short", 2, 1)):
        folder = write_dicom_series(
            generate_ct((SLICES, 16, 16), (2.5, 1.0, 1.0), seed=seed), tmp_path_factory.mktemp(name)
        )
        series_uuid, uploaded = s3.put_series(folder)
        rows[name] = selection_row(series_uuid, folder, instance_count=uploaded + claim_extra)
    return rows


def test_complete_series_lands_in_its_final_folder_and_short_one_stays_partial(s3, bucket_series, tmp_path):
    selection = pd.DataFrame([bucket_series["complete"], bucket_series["short"]])
    report = download(selection, tmp_path, endpoint_url=s3.endpoint_url, workers=4, retries=3, progress=False)

    complete, short = bucket_series["complete"], bucket_series["short"]
    final = tmp_path / complete["collection_id"] / complete["SeriesInstanceUID"]
    files = sorted(final.glob("*.dcm"))
    assert len(files) == SLICES
    assert {str(pydicom.dcmread(path).SeriesInstanceUID) for path in files} == {complete["SeriesInstanceUID"]}
    assert report.downloaded == [complete["SeriesInstanceUID"]]

    short_final = tmp_path / short["collection_id"] / short["SeriesInstanceUID"]
    assert not short_final.exists()
    assert len(list(short_final.with_name(short_final.name + ".partial").glob("*.dcm"))) == SLICES
    [incomplete] = report.incomplete
    assert (incomplete.series_uid, incomplete.found, incomplete.expected) == (
        short["SeriesInstanceUID"],
        SLICES,
        SLICES + 1,
    )
    assert not report.ok
    assert report.rounds == 2  # the second round brought no new file, so the remaining retries were not spent

    written = pd.read_csv(tmp_path / "download_report.csv", dtype=str)
    assert written[["SeriesInstanceUID", "status"]].values.tolist() == [[short["SeriesInstanceUID"], "incomplete"]]
    kept = read_selection(tmp_path / SELECTION_FILE)
    assert set(kept["SeriesInstanceUID"]) == {complete["SeriesInstanceUID"], short["SeriesInstanceUID"]}
    assert kept["PatientID"].tolist() == selection["PatientID"].tolist()


def test_rerun_skips_complete_series_and_finishes_a_killed_one(s3, bucket_series, tmp_path):
    row = bucket_series["complete"]
    first = download(pd.DataFrame([row]), tmp_path, endpoint_url=s3.endpoint_url, workers=2, progress=False)
    assert first.ok and first.downloaded == [row["SeriesInstanceUID"]]

    again = download(pd.DataFrame([row]), tmp_path, endpoint_url=s3.endpoint_url, workers=2, progress=False)
    assert again.ok and again.already_complete == [row["SeriesInstanceUID"]] and again.downloaded == []
    assert again.rounds == 0

    # What a killed run leaves: a .partial folder with some files and an s5cmd temporary.
    final = tmp_path / row["collection_id"] / row["SeriesInstanceUID"]
    names = sorted(path.name for path in final.glob("*.dcm"))
    partial = final.with_name(final.name + ".partial")
    final.rename(partial)
    for name in names[:3]:
        (partial / name).unlink()
    (partial / f"{names[0]}123456").write_bytes(b"half a file")

    resumed = download(pd.DataFrame([row]), tmp_path, endpoint_url=s3.endpoint_url, workers=2, progress=False)
    assert resumed.ok and resumed.downloaded == [row["SeriesInstanceUID"]]
    assert not partial.exists()
    assert sorted(path.name for path in final.iterdir()) == names  # every file back, the temporary gone


def test_rows_that_could_escape_the_folder_are_skipped_and_reported(s3, bucket_series, tmp_path):
    evil = dict(bucket_series["complete"], SeriesInstanceUID="../../outside", collection_id="..")
    good = bucket_series["complete"]
    report = download(pd.DataFrame([evil, good]), tmp_path / "out", endpoint_url=s3.endpoint_url, progress=False)
    assert report.invalid == [("../../outside", "invalid SeriesInstanceUID '../../outside'")]
    assert report.downloaded == [good["SeriesInstanceUID"]]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_selection_without_required_columns_is_refused(tmp_path):
    path = tmp_path / "selection.csv"
    pd.DataFrame({"SeriesInstanceUID": ["1.2.3"]}).to_csv(path, index=False)
    with pytest.raises(IDCError, match=r"selection.csv: missing column\(s\) crdc_series_uuid, aws_bucket"):
        download(path, tmp_path / "out", progress=False)


def test_cli_downloads_and_exits_nonzero_when_a_series_is_incomplete(s3, bucket_series, tmp_path, capsys):
    csv = tmp_path / "selection.csv"
    pd.DataFrame([bucket_series["complete"], bucket_series["short"]]).to_csv(csv, index=False)
    code = main(
        [
            "idc",
            "download",
            str(csv),
            "--out",
            str(tmp_path / "dicom"),
            "--endpoint-url",
            s3.endpoint_url,
            "--workers",
            "2",
            "--retries",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 3  # done, one series incomplete
    assert "2 series" in out  # the summary printed before downloading
    assert "1 series downloaded, 0 already complete, 1 incomplete" in out
    assert f"incomplete {bucket_series['short']['SeriesInstanceUID']}: {SLICES}/{SLICES + 1} files" in out
