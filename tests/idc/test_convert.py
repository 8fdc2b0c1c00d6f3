"""DICOM series -> NIfTI volumes + sidecars + datalist, and the whole chain query -> download (local S3) -> convert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from recipe_runner import fit_tiny
from s3_server import LocalS3, selection_row

from ctfm.cli import main
from ctfm.data.datalist import read_datalist
from ctfm.data.sample import generate_ct, write_dicom_series
from ctfm.hub.checkpoint import read_checkpoint
from ctfm.idc.convert import DATALIST_FILE, REPORT_FILE, convert
from ctfm.idc.selection import SELECTION_FILE
from ctfm.io.reader import read_ct

SHAPE, SPACING = (8, 16, 16), (2.5, 1.0, 1.0)
#: Big enough for a tiny pretraining patch after resampling and cropping to the body.
E2E_SHAPE = (12, 48, 48)
COLLECTION = "test_collection"
QUERIES = Path(__file__).resolve().parents[2] / "data_queries"


def _series(root: Path, seed: int, **kwargs) -> tuple[Path, object]:
    sample = generate_ct(SHAPE, SPACING, seed=seed)
    folder = root / f"seed{seed}"
    write_dicom_series(sample, folder, **kwargs)
    return folder, sample


@pytest.fixture
def download_dir(tmp_path) -> tuple[Path, dict]:
    """A download folder as `ctfm idc download` leaves it: good, bad and missing series plus selection.csv."""
    staging, root = tmp_path / "staging", tmp_path / "dicom"
    made = {
        "good": _series(staging, 1),
        "signed": _series(staging, 2, signed=True),
        "scout": _series(staging, 3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        "mr": _series(staging, 4, modality="MR"),
        "gap": _series(staging, 5),
        "missing": _series(staging, 6),
    }
    sorted(made["gap"][0].glob("*.dcm"))[3].unlink()  # a slice lost in the middle
    (root / COLLECTION).mkdir(parents=True)
    rows = {}
    for name, (folder, _) in made.items():
        rows[name] = selection_row(f"uuid-{name}", folder, instance_count=SHAPE[0])
        suffix = ".partial" if name == "missing" else ""  # "missing" never finished downloading
        folder.rename(root / COLLECTION / (rows[name]["SeriesInstanceUID"] + suffix))
    pd.DataFrame(rows.values()).to_csv(root / SELECTION_FILE, index=False)
    return root, {name: (rows[name], made[name][1]) for name in made}


def test_converts_good_series_and_reports_the_others(download_dir, tmp_path):
    root, series = download_dir
    out = tmp_path / "volumes"
    report = convert(root, out, workers=2, progress=False)

    assert len(report.converted) == 2 and not report.ok
    failed = {Path(folder).name: reason for folder, reason in report.failed}
    assert "LOCALIZER" in failed[series["scout"][0]["SeriesInstanceUID"]]
    assert "modality is 'MR', not CT" in failed[series["mr"][0]["SeriesInstanceUID"]]
    assert "non-uniform slice spacing" in failed[series["gap"][0]["SeriesInstanceUID"]]
    assert all(reason.startswith(str(root)) for reason in failed.values())
    assert report.not_downloaded == [series["missing"][0]["SeriesInstanceUID"]]
    written = pd.read_csv(out / REPORT_FILE, dtype=str)
    assert sorted(written["status"]) == ["failed"] * 3 + ["not_downloaded"]

    for name in ("good", "signed"):
        row, sample = series[name]
        volume = out / COLLECTION / f"{row['SeriesInstanceUID']}.nii.gz"
        image = sitk.ReadImage(str(volume))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sample.hu)  # HU exact, slices in order
        assert image.GetPixelID() == sitk.sitkInt16
        np.testing.assert_allclose(image.GetSpacing(), SPACING[::-1])
        np.testing.assert_allclose(image.GetOrigin(), sample.origin)
        ct = read_ct(volume)
        np.testing.assert_allclose(ct.affine.numpy(), sample.affine[:, [2, 1, 0, 3]], atol=1e-6)
        sidecar = json.loads(volume.with_name(volume.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["SeriesInstanceUID"] == row["SeriesInstanceUID"] and sidecar["collection_id"] == COLLECTION
        assert sidecar["dicom"]["modality"] == "CT" and sidecar["dicom"]["n_slices"] == SHAPE[0]
        assert sidecar["dicom"]["spacing"] == pytest.approx(list(SPACING))

    datalist = pd.read_csv(out / DATALIST_FILE, dtype=str)
    assert list(datalist.columns) == ["image", "collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
    assert sorted(datalist["SeriesInstanceUID"]) == sorted(
        series[n][0]["SeriesInstanceUID"] for n in ("good", "signed")
    )
    assert not any(Path(image).is_absolute() for image in datalist["image"])
    assert all(Path(path).is_file() for path in read_datalist(out / DATALIST_FILE)["image"])


def test_rerun_skips_converted_series_and_ignores_leftovers(download_dir, tmp_path):
    root, series = download_dir
    out = tmp_path / "volumes"
    first = convert(root, out, workers=1, progress=False)
    good = out / COLLECTION / f"{series['good'][0]['SeriesInstanceUID']}.nii.gz"
    stamp = good.stat().st_mtime_ns
    (good.parent / f".{good.name}.abc123.nii.gz").write_bytes(b"what a killed conversion leaves")

    again = convert(root, out, workers=1, progress=False)
    assert sorted(again.already_converted) == sorted(first.converted) and again.converted == []
    assert good.stat().st_mtime_ns == stamp
    datalist = pd.read_csv(out / DATALIST_FILE, dtype=str)
    assert len(datalist) == 2 and not any(".abc123" in image for image in datalist["image"])


def test_a_selection_row_pointing_outside_the_folder_is_refused(download_dir, tmp_path):
    root, series = download_dir
    selection = pd.read_csv(root / SELECTION_FILE, dtype=str)
    evil = dict(series["good"][0], SeriesInstanceUID="../../../etc", collection_id=COLLECTION)
    pd.concat([selection, pd.DataFrame([evil])]).to_csv(root / SELECTION_FILE, index=False)
    report = convert(root, tmp_path / "volumes", workers=1, progress=False)
    assert (f"{root / SELECTION_FILE}: ../../../etc", "invalid SeriesInstanceUID '../../../etc'") in report.failed
    assert len(report.converted) == 2


def test_folder_without_selection_is_read_from_the_dicom_tags(tmp_path):
    folder, sample = _series(tmp_path / "mine" / "patient_a", 7, patient_id="PAT-7")
    report = convert(tmp_path / "mine", tmp_path / "out", workers=1, progress=False)
    assert report.ok and len(report.converted) == 1
    datalist = pd.read_csv(tmp_path / "out" / DATALIST_FILE, dtype=str, keep_default_na=False)
    assert datalist["image"].tolist() == ["patient_a/seed7.nii.gz"]
    assert datalist.loc[0, "PatientID"] == "PAT-7" and datalist.loc[0, "collection_id"] == ""
    assert read_ct(tmp_path / "out" / "patient_a" / "seed7.nii.gz").shape == (1, 16, 16, 8)


def test_cli_convert_exits_nonzero_and_names_the_failures(download_dir, tmp_path, capsys):
    root, series = download_dir
    code = main(["idc", "convert", str(root), "--out", str(tmp_path / "volumes"), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 3  # two converted, the others named
    assert "2 series converted, 0 already converted, 3 failed, 1 not (completely) downloaded" in out
    assert f"failed {root / COLLECTION / series['mr'][0]['SeriesInstanceUID']}:" in out


def test_cli_convert_of_only_bad_series_says_so_in_one_line_and_writes_both_tables(download_dir, tmp_path, capsys):
    root, series = download_dir
    selection = pd.read_csv(root / SELECTION_FILE, dtype=str)
    for name in ("good", "signed"):  # leave only series that fail their checks, and one never downloaded
        uid = series[name][0]["SeriesInstanceUID"]
        shutil.rmtree(root / COLLECTION / uid)
        selection = selection[selection["SeriesInstanceUID"] != uid]
    selection.to_csv(root / SELECTION_FILE, index=False)
    out = tmp_path / "volumes"
    code = main(["idc", "convert", str(root), "--out", str(out), "--workers", "1"])
    captured = capsys.readouterr()
    messages = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    messages = [line for line in messages if not line.startswith("convert:")]  # tqdm's progress bar
    assert code == 1
    assert len(messages) == 1 and "Traceback" not in captured.err
    assert messages[0].startswith(f"ctfm idc: error: {root}: none of the 4 series could be converted (first: ")
    assert messages[0].endswith(f"every reason is in {out / REPORT_FILE}")
    assert (out / DATALIST_FILE).read_text().splitlines() == [
        "image,collection_id,PatientID,StudyInstanceUID,SeriesInstanceUID"
    ]
    written = pd.read_csv(out / REPORT_FILE, dtype=str)
    assert sorted(written["status"]) == ["failed"] * 3 + ["not_downloaded"]


@pytest.mark.slow
def test_query_download_convert_end_to_end(tmp_path, capsys):
    """Real index -> two selected series served by a local S3 (synthetic pixels, real UIDs) -> datalist."""
    selection_csv = tmp_path / "selection.csv"
    assert (
        main(
            [
                "idc",
                "query",
                str(QUERIES / "random_subset.sql"),
                "--param",
                "n=2",
                "--param",
                "seed=3",
                "--out",
                str(selection_csv),
            ]
        )
        == 0
    )
    selection = pd.read_csv(selection_csv, dtype=str)
    with LocalS3() as s3:
        for index, row in selection.iterrows():
            folder = write_dicom_series(
                generate_ct(E2E_SHAPE, SPACING, seed=10 + index),
                tmp_path / f"series{index}",
                series_uid=row["SeriesInstanceUID"],
                study_uid=row["StudyInstanceUID"],
                patient_id=row["PatientID"],
            )
            _, count = s3.put_series(folder, series_uuid=row["crdc_series_uuid"])
            selection.loc[index, "instanceCount"] = str(count)  # the bucket holds our small stand-in
        selection.to_csv(selection_csv, index=False)
        assert (
            main(
                [
                    "idc",
                    "download",
                    str(selection_csv),
                    "--out",
                    str(tmp_path / "dicom"),
                    "--endpoint-url",
                    s3.endpoint_url,
                    "--workers",
                    "4",
                ]
            )
            == 0
        )
    assert main(["idc", "convert", str(tmp_path / "dicom"), "--out", str(tmp_path / "volumes")]) == 0
    printed = capsys.readouterr().out
    assert "2 series, 2 studies" in printed and "2 series converted" in printed

    datalist = read_datalist(tmp_path / "volumes" / DATALIST_FILE)
    assert sorted(datalist["SeriesInstanceUID"]) == sorted(selection["SeriesInstanceUID"])
    assert sorted(datalist["collection_id"]) == sorted(selection["collection_id"])
    for path in datalist["image"]:
        assert read_ct(path).shape == (1, E2E_SHAPE[2], E2E_SHAPE[1], E2E_SHAPE[0])

    # The datalist is what the pretraining recipe reads: one optimisation step on it.
    (tmp_path / "run").mkdir()
    fit_tiny(tmp_path / "run", tmp_path / "volumes" / DATALIST_FILE, "vars::steps_per_epoch=1")
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 1
