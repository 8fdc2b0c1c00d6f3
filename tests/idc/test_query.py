"""SQL selections on the real bundled IDC index (idc-index-data), run with DuckDB: filters, parameters, summary."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import idc_index_data
import numpy as np
import pandas as pd
import pytest

from ctfm.cli import main
from ctfm.idc import IDCError, query, summarize
from ctfm.idc.query import CT_SERIES, SelectionSummary, load_sql
from ctfm.idc.selection import REQUIRED_COLUMNS

QUERIES = Path(__file__).resolve().parents[2] / "data_queries"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_each_step_is_its_function_after_importing_its_module_and_a_query_imports_no_torch():
    code = """
import json, sys, types
import ctfm.idc, ctfm.idc.query, ctfm.idc.download
seen = {"after_query": {n: getattr(ctfm.idc, n).__module__ for n in ("query", "download")}}
seen["torch"] = "torch" in sys.modules
seen["convert"] = ctfm.idc.convert.__module__  # lazy: imported now
import ctfm.idc.convert
seen["after_convert"] = [isinstance(getattr(ctfm.idc, n), types.FunctionType) for n in ("query", "download", "convert")]
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == {
        "after_query": {"query": "ctfm.idc.query", "download": "ctfm.idc.download"},
        "torch": False,
        "convert": "ctfm.idc.convert",
        "after_convert": [True, True, True],
    }


@pytest.mark.parametrize("path", sorted(QUERIES.glob("*.sql")), ids=lambda path: path.name)
def test_every_query_declares_exactly_its_parameters_and_selects_the_required_columns(path):
    selection = load_sql(path)
    statement = duckdb.connect().extract_statements(selection.text)
    assert len(statement) == 1
    assert set(selection.defaults) == set(statement[0].named_parameters)
    assert all(selection.descriptions[name] for name in selection.defaults)
    code = "\n".join(line for line in selection.text.splitlines() if not line.lstrip().startswith("--"))
    assert "FROM ct_series($min_instances)" in code  # the shared filters and columns, written once


def test_ct_series_carries_the_required_columns():
    columns = CT_SERIES.split("SELECT", 1)[1].split("FROM", 1)[0]
    assert set(REQUIRED_COLUMNS) <= {column.strip() for column in columns.split(",")}


#: The selections as they were written before ct_series, each filter spelled out: every shipped file must still
#: return exactly these rows, in this order.
_OLD_COLUMNS = """SeriesInstanceUID, StudyInstanceUID, PatientID, collection_id, crdc_series_uuid, aws_bucket,
    instanceCount, series_size_MB, Modality, BodyPartExamined, license_short_name, series_init_idc_version"""
_OLD_BASE = """WHERE Modality = 'CT' AND SOPClassUID = '1.2.840.10008.5.1.4.1.1.2' AND analysis_result_id IS NULL
    AND instanceCount > $min_instances::BIGINT"""
_OLD_ORDER = "ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID"
OLD_SQL = {
    "body_part.sql": f"""SELECT {_OLD_COLUMNS} FROM "index" {_OLD_BASE}
        AND upper(BodyPartExamined) = upper($body_part) {_OLD_ORDER}""",
    "collection.sql": f"""SELECT {_OLD_COLUMNS} FROM "index" {_OLD_BASE}
        AND collection_id = lower($collection_id) ORDER BY PatientID, StudyInstanceUID, SeriesInstanceUID""",
    "ctfm_pretraining_offline.sql": f"""SELECT {_OLD_COLUMNS} FROM "index" {_OLD_BASE}
        AND series_init_idc_version <= $max_idc_version::BIGINT {_OLD_ORDER}""",
    "license.sql": f"""SELECT {_OLD_COLUMNS} FROM "index" {_OLD_BASE}
        AND license_short_name LIKE $license {_OLD_ORDER}""",
    "random_subset.sql": f"""SELECT {_OLD_COLUMNS} FROM "index" {_OLD_BASE}
        AND series_init_idc_version <= $max_idc_version::BIGINT
        ORDER BY md5(SeriesInstanceUID || ':' || $seed::VARCHAR) LIMIT $n::BIGINT""",
    "ctfm_pretraining.sql": """SELECT i.SeriesInstanceUID, i.StudyInstanceUID, i.PatientID, i.collection_id,
        i.crdc_series_uuid, i.aws_bucket, i.instanceCount, i.series_size_MB, i.Modality, i.BodyPartExamined,
        i.license_short_name, i.series_init_idc_version, ct.SliceThickness, g.slice_spacing_mm
    FROM "index" AS i
    JOIN ct_index AS ct ON ct.SeriesInstanceUID = i.SeriesInstanceUID
    JOIN volume_geometry_index AS g ON g.SeriesInstanceUID = i.SeriesInstanceUID
    WHERE i.Modality = 'CT' AND i.SOPClassUID = '1.2.840.10008.5.1.4.1.1.2' AND i.analysis_result_id IS NULL
        AND i.instanceCount > $min_instances::BIGINT AND i.series_init_idc_version <= $max_idc_version::BIGINT
        AND ct.SliceThickness BETWEEN $min_thickness_mm::DOUBLE AND $max_thickness_mm::DOUBLE
        AND g.unique_slice_positions AND NOT coalesce(list_contains(ct.ImageType, 'LOCALIZER'), false)
    ORDER BY i.collection_id, i.PatientID, i.StudyInstanceUID, i.SeriesInstanceUID""",
}
OFFLINE = {"min_instances": 50, "max_idc_version": 14}
PARAMETER_SETS = [
    ("body_part.sql", {"body_part": "abdomen", "min_instances": 50}),
    ("body_part.sql", {"body_part": "Chest", "min_instances": 200}),
    ("collection.sql", {"collection_id": "LIDC_IDRI", "min_instances": 50}),
    ("collection.sql", {"collection_id": "nlst", "min_instances": 120}),
    ("ctfm_pretraining_offline.sql", OFFLINE),
    ("ctfm_pretraining_offline.sql", {"min_instances": 10, "max_idc_version": 20}),
    ("license.sql", {"license": "CC BY %", "min_instances": 50}),
    ("license.sql", {"license": "CC BY-NC %", "min_instances": 300}),
    ("random_subset.sql", {"n": 200, "seed": 5, **OFFLINE}),
]


@pytest.mark.parametrize("name, params", PARAMETER_SETS, ids=lambda v: v if isinstance(v, str) else "")
def test_each_bundled_selection_returns_the_rows_it_returned_before_ct_series(name, params):
    before = query(OLD_SQL[name], params)
    after = query(QUERIES / name, params)
    assert len(after) > 0 and set(REQUIRED_COLUMNS) <= set(after.columns)
    pd.testing.assert_frame_equal(after, before)


def test_the_exact_selection_returns_the_rows_it_returned_before_ct_series(tmp_path):
    candidates = query(
        QUERIES / "random_subset.sql", {"n": 400, "seed": 11, "min_instances": 10, "max_idc_version": 30}
    )
    uids = candidates["SeriesInstanceUID"].tolist()
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "SeriesInstanceUID": uids,
            "SliceThickness": rng.choice([0.5, 1.0, 2.5, 5.0, 7.5], len(uids)),
            "ImageType": [["ORIGINAL", "PRIMARY", rng.choice(["AXIAL", "LOCALIZER"], p=[0.8, 0.2])] for _ in uids],
        }
    ).to_parquet(tmp_path / "ct_index.parquet")
    pd.DataFrame(
        {"SeriesInstanceUID": uids, "unique_slice_positions": rng.random(len(uids)) < 0.8, "slice_spacing_mm": 1.0}
    ).to_parquet(tmp_path / "volume_geometry_index.parquet")
    tables = {name: tmp_path / f"{name}.parquet" for name in ("ct_index", "volume_geometry_index")}
    for params in (
        {"min_thickness_mm": 1, "max_thickness_mm": 5, **OFFLINE},
        {"min_thickness_mm": 0.5, "max_thickness_mm": 2.5, "min_instances": 100, "max_idc_version": 20},
    ):
        before = query(OLD_SQL["ctfm_pretraining.sql"], params, tables=tables, fetch=False)
        after = query(QUERIES / "ctfm_pretraining.sql", params, tables=tables, fetch=False)
        assert 0 < len(after) < len(uids)
        pd.testing.assert_frame_equal(after, before)


def test_offline_pretraining_selection_applies_the_ctfm_filters():
    selection = query(QUERIES / "ctfm_pretraining_offline.sql")
    assert set(REQUIRED_COLUMNS) <= set(selection.columns)
    assert selection["SeriesInstanceUID"].is_unique
    assert (selection["instanceCount"] > 50).all()
    assert (selection["series_init_idc_version"] <= 14).all()
    assert set(selection["Modality"]) == {"CT"}
    if idc_index_data.__version__ == "25.0.5":  # IDC v25, as measured with idc-index's own IDCClient
        assert summarize(selection) == SelectionSummary(154_840, 33_176, 82_252, 66, pytest.approx(14_109_693.5, 1e-6))
    else:
        assert len(selection) > 100_000


def test_parameters_are_bound_not_pasted():
    lidc = query(QUERIES / "collection.sql", {"collection_id": "LIDC_IDRI"})
    assert len(lidc) > 1000 and set(lidc["collection_id"]) == {"lidc_idri"}
    injected = query(QUERIES / "collection.sql", {"collection_id": "lidc_idri' OR '1'='1"})
    assert injected.empty


def test_header_defaults_apply_and_given_values_override_them():
    fewer = query(QUERIES / "collection.sql", {"collection_id": "lidc_idri", "min_instances": "300"})
    default = query(QUERIES / "collection.sql", {"collection_id": "lidc_idri"})
    assert 0 < len(fewer) < len(default)
    assert (fewer["instanceCount"] > 300).all()
    licensed = query(QUERIES / "license.sql")
    assert set(licensed["license_short_name"]) <= {"CC BY 3.0", "CC BY 4.0"}


def test_random_subset_is_reproducible_and_grows_by_extension():
    three = query(QUERIES / "random_subset.sql", {"n": 3, "seed": 7})["SeriesInstanceUID"].tolist()
    five = query(QUERIES / "random_subset.sql", {"n": "5", "seed": "7"})["SeriesInstanceUID"].tolist()
    other = query(QUERIES / "random_subset.sql", {"n": 5, "seed": 8})["SeriesInstanceUID"].tolist()
    assert len(set(five)) == 5 and five[:3] == three
    assert set(other) != set(five)


def test_missing_and_unknown_parameters_name_the_file_and_the_parameter():
    with pytest.raises(IDCError, match=r"collection.sql: missing value for parameter\(s\) collection_id \(the IDC"):
        query(QUERIES / "collection.sql")
    with pytest.raises(IDCError, match=r"unknown parameter\(s\) colection_id; it takes collection_id, min_instances"):
        query(QUERIES / "collection.sql", {"colection_id": "nlst"})
    with pytest.raises(IDCError, match="no such SQL file"):
        query(QUERIES / "no_such_query.sql")


def test_exact_pretraining_selection_on_ct_and_geometry_tables(tmp_path):
    """The exact query, run on small stand-ins of ct_index and volume_geometry_index for four real series."""
    uids = query(QUERIES / "random_subset.sql", {"n": 4})["SeriesInstanceUID"].tolist()
    ct_index = pd.DataFrame(
        {
            "SeriesInstanceUID": uids,
            "SliceThickness": [2.5, 0.625, 2.5, 2.5],
            "ImageType": [
                ["ORIGINAL", "PRIMARY", "AXIAL"],
                ["ORIGINAL", "PRIMARY", "AXIAL"],
                ["ORIGINAL", "PRIMARY", "LOCALIZER"],
                ["ORIGINAL", "PRIMARY", "AXIAL"],
            ],
        }
    )
    geometry = pd.DataFrame(
        {
            "SeriesInstanceUID": uids,
            "unique_slice_positions": [True, True, True, False],
            "slice_spacing_mm": [2.5, 0.5, 2.5, 2.5],
        }
    )
    ct_index.to_parquet(tmp_path / "ct_index.parquet")
    geometry.to_parquet(tmp_path / "volume_geometry_index.parquet")
    tables = {
        "ct_index": tmp_path / "ct_index.parquet",
        "volume_geometry_index": tmp_path / "volume_geometry_index.parquet",
    }

    exact = query(QUERIES / "ctfm_pretraining.sql", tables=tables, fetch=False)
    assert exact["SeriesInstanceUID"].tolist() == [uids[0]]  # too thin, a localizer, duplicated positions: out
    assert exact.loc[0, "SliceThickness"] == 2.5
    thin = query(QUERIES / "ctfm_pretraining.sql", {"min_thickness_mm": 0.5}, tables=tables, fetch=False)
    assert sorted(thin["SeriesInstanceUID"]) == sorted(uids[:2])


def test_a_table_that_is_not_bundled_is_named_when_fetching_is_off(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.import_module("ctfm.idc.query"), "idc_index_cache_dir", lambda: tmp_path)
    with pytest.raises(IDCError, match="needs table (ct_index|volume_geometry_index), which idc-index-data does not"):
        query(QUERIES / "ctfm_pretraining.sql", fetch=False)


def test_summary_counts_and_sizes():
    frame = pd.DataFrame(
        {
            "SeriesInstanceUID": ["1", "2", "3"],
            "PatientID": ["a", "a", "b"],
            "StudyInstanceUID": ["s", "t", "t"],
            "collection_id": ["c"] * 3,
            "series_size_MB": [1000.0, 1500.0, 500.0],
        }
    )
    summary = summarize(frame)
    assert summary == SelectionSummary(series=3, patients=2, studies=2, collections=1, size_mb=3000.0)
    assert str(summary) == "3 series, 2 studies, 2 patients, 1 collections, 3.0 GB"


def test_cli_query_prints_the_summary_and_writes_the_selection(tmp_path, capsys):
    out = tmp_path / "selection.csv"
    code = main(
        [
            "idc",
            "query",
            str(QUERIES / "collection.sql"),
            "--param",
            "collection_id=lidc_idri",
            "--param",
            "min_instances=400",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    written = pd.read_csv(out, dtype=str)
    assert f"{len(written):,} series" in printed and "patients" in printed
    assert set(REQUIRED_COLUMNS) <= set(written.columns)
    assert (written["instanceCount"].astype(int) > 400).all()
    again = ["idc", "query", str(QUERIES / "collection.sql"), "--param", "collection_id=nlst", "--out", str(out)]
    assert main(again) == 1 and "selection.csv: exists already" in capsys.readouterr().err
    assert pd.read_csv(out, dtype=str).equals(written)


def test_cli_query_reports_a_bad_parameter_cleanly(capsys):
    code = main(["idc", "query", str(QUERIES / "collection.sql")])
    assert code == 1
    assert "missing value for parameter(s) collection_id" in capsys.readouterr().err


def test_shipped_selections_are_package_data_and_run_by_name(capsys):
    """`ctfm idc query NAME` works from an installed wheel: the selections live in ctfm/idc/queries/."""
    import tomllib

    import ctfm
    from ctfm.cli import main
    from ctfm.idc.query import QUERIES_DIR, find_sql, shipped_queries

    assert QUERIES_DIR.parent == Path(ctfm.__file__).resolve().parent / "idc"
    package_data = tomllib.loads((Path(ctfm.__file__).parents[1] / "pyproject.toml").read_text())
    assert "idc/queries/*.sql" in package_data["tool"]["setuptools"]["package-data"]["ctfm"]
    assert set(shipped_queries()) == {path.stem for path in QUERIES.glob("*.sql")} and "collection" in shipped_queries()
    assert find_sql("collection") == find_sql("collection.sql") == QUERIES_DIR / "collection.sql"
    assert main(["idc", "queries"]) == 0
    assert "random_subset" in capsys.readouterr().out
    assert main(["idc", "query", "collection", "--param", "collection_id=lidc_idri", "--no-fetch"]) == 0
    assert "collection" in capsys.readouterr().out
    with pytest.raises(IDCError, match="no shipped selection of that name"):
        find_sql("colection")
