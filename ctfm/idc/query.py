"""Run SQL selections against the IDC index with DuckDB, straight on the parquet files that idc-index-data bundles.

``IDCClient()`` loads the whole index into pandas before its first query (6-8 s and about 2 GB); DuckDB scans the
same parquet lazily and answers in a fraction of a second. idc-index is only needed for the tables its data wheel
does not ship (``ct_index``, ``volume_geometry_index``, ...): it downloads them once into its own cache, which is
read from then on.

SQL files bind their parameters (DuckDB ``$name``), so values are never pasted into SQL. A file declares its
parameters in its header comments, one per line, with an optional default::

    -- $collection_id: the IDC collection, e.g. 'nlst'
    -- $min_instances = 50: series with fewer instances are left out

Every connection also holds ``ct_series(min_instances)`` (:data:`CT_SERIES`), the CT series the shipped selections
start from, so the filters every selection shares are written once: ``SELECT * FROM ct_series($min_instances)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import duckdb
import idc_index_data
import pandas as pd

from ctfm.idc.errors import IDCError

#: idc-index-data's internal name of the main table; idc-index (and every SQL file) calls it ``index``.
_MAIN_TABLE = {"idc_index": "index"}
_PARAM_LINE = re.compile(r"^--\s*\$(?P<name>\w+)\s*(?:=\s*(?P<default>[^:]*?)\s*)?:\s*(?P<help>.*)$")
_MISSING_TABLE = re.compile(r"Table with name (\w+) does not exist")


#: ``ct_series(min_instances)``: a DuckDB table macro, i.e. a view with a parameter. CT Image Storage series of
#: Modality CT, original data (not an analysis result), with more than ``min_instances`` instances, and the columns
#: a selection carries (:data:`ctfm.idc.selection.REQUIRED_COLUMNS` and what users filter on).
CT_SERIES = """
CREATE OR REPLACE MACRO ct_series(min_instances) AS TABLE
SELECT
    SeriesInstanceUID,
    StudyInstanceUID,
    PatientID,
    collection_id,
    crdc_series_uuid,
    aws_bucket,
    instanceCount,
    series_size_MB,
    Modality,
    BodyPartExamined,
    license_short_name,
    series_init_idc_version
FROM "index"
WHERE Modality = 'CT'
    AND SOPClassUID = '1.2.840.10008.5.1.4.1.1.2'
    AND analysis_result_id IS NULL
    AND instanceCount > CAST(min_instances AS BIGINT)
"""


@dataclass(frozen=True)
class SqlSelection:
    """One SQL statement with the parameters its header declares (name -> default, None when required)."""

    text: str
    source: str
    defaults: Mapping[str, str | None]
    descriptions: Mapping[str, str]


#: The selections installed with ctfm (``ctfm idc queries`` lists them; ``ctfm idc query NAME`` runs one).
QUERIES_DIR = Path(__file__).resolve().parent / "queries"


def shipped_queries() -> dict[str, str]:
    """Name of each shipped selection -> the first line of its header comment."""
    found = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "")
        found[path.stem] = first.removeprefix("--").strip()
    return found


def find_sql(name_or_path: str | Path) -> Path:
    """A ``.sql`` file by path, else the shipped selection of that name (``collection`` or ``collection.sql``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = QUERIES_DIR / (path.name if path.suffix == ".sql" else f"{path.name}.sql")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise IDCError(f"{path}: no such SQL file, and no shipped selection of that name ({', '.join(shipped_queries())})")


def load_sql(sql: str | Path) -> SqlSelection:
    """Read a ``.sql`` file or shipped selection (or take SQL text); parse its ``-- $name [= default]: ...`` lines."""
    if isinstance(sql, Path) or (sql.strip().endswith(".sql") and "\n" not in sql.strip()):
        path = find_sql(sql)
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        text, source = sql, "<sql>"
    defaults: dict[str, str | None] = {}
    descriptions: dict[str, str] = {}
    for line in text.splitlines():
        match = _PARAM_LINE.match(line.strip())
        if match:
            defaults[match["name"]] = _unquote(match["default"]) if match["default"] else None
            descriptions[match["name"]] = match["help"].strip()
    return SqlSelection(text=text, source=source, defaults=defaults, descriptions=descriptions)


def _unquote(value: str) -> str:
    """Header defaults may be written as SQL literals ('CC BY %'); the bound value is the text inside."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


def bundled_tables() -> dict[str, Path]:
    """Tables shipped inside the idc-index-data wheel: usable offline, no IDCClient needed."""
    tables = {}
    for name, meta in idc_index_data.INDEX_METADATA.items():
        if meta.get("parquet_filepath") is not None:
            tables[_MAIN_TABLE.get(name, name)] = Path(str(meta["parquet_filepath"]))
    return tables


def fetchable_table_names() -> set[str]:
    """Tables idc-index knows but downloads from the network on first use."""
    return {name for name, meta in idc_index_data.INDEX_METADATA.items() if meta.get("parquet_filepath") is None}


def idc_index_cache_dir() -> Path:
    """Where idc-index keeps the tables it fetched (``IDCClient.indices_data_dir``), computed without its start-up."""
    import platformdirs

    return Path(platformdirs.user_data_dir("idc_index_data", "IDC", version=version("idc-index-data")))


def cached_tables() -> dict[str, Path]:
    """Fetched tables already in idc-index's cache, so a second query needs neither network nor IDCClient."""
    cache = idc_index_cache_dir()
    return {
        name: cache / f"{name}.parquet" for name in fetchable_table_names() if (cache / f"{name}.parquet").is_file()
    }


def fetch_table(name: str) -> Path:
    """Download a table that idc-index-data does not bundle, through IDCClient (network, 6-8 s start-up)."""
    from idc_index import IDCClient

    client = IDCClient.client()
    try:
        client.fetch_index(name)
    except OSError as err:  # requests' errors are OSErrors; fetch_index lets them through
        raise IDCError(
            f"table {name} is not bundled with idc-index-data and fetching it failed ({err}); pass a copy as a "
            "parquet file (--table NAME=FILE), or use a query on the bundled tables only"
        ) from err
    entry = client.indices_overview.get(name) or {}
    if not entry.get("installed") or not entry.get("file_path"):
        raise IDCError(f"table {name} is not bundled with idc-index-data and idc-index could not fetch it")
    return Path(entry["file_path"])


def connect(tables: Mapping[str, str | Path] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per available table: bundled, cached by idc-index, then ``tables``."""
    connection = duckdb.connect()
    available = {**bundled_tables(), **cached_tables(), **{name: Path(path) for name, path in (tables or {}).items()}}
    for name, path in available.items():
        if not Path(path).is_file():
            raise IDCError(f"{path}: no such parquet file for table {name}")
        connection.read_parquet(str(path)).create_view(name, replace=True)
    add_views(connection)
    return connection


def add_views(connection: duckdb.DuckDBPyConnection) -> None:
    """Define ``ct_series`` on ``connection``, which must already have an ``index`` table (DuckDB checks it now)."""
    connection.execute(CT_SERIES)


def _bind(selection: SqlSelection, statement_params: set[str], params: Mapping[str, object] | None) -> dict:
    """Values for exactly the statement's parameters: given ones over header defaults; clear errors otherwise."""
    given = dict(params or {})
    unknown = sorted(set(given) - statement_params)
    if unknown:
        takes = ", ".join(sorted(statement_params)) or "no parameters"
        raise IDCError(f"{selection.source}: unknown parameter(s) {', '.join(unknown)}; it takes {takes}")
    values = {name: given.get(name, selection.defaults.get(name)) for name in statement_params}
    missing = sorted(name for name, value in values.items() if value is None)
    if missing:
        needs = "; ".join(f"{name} ({selection.descriptions.get(name, 'no description')})" for name in missing)
        raise IDCError(f"{selection.source}: missing value for parameter(s) {needs}; pass --param NAME=VALUE")
    return values


def query(
    sql: str | Path,
    params: Mapping[str, object] | None = None,
    *,
    tables: Mapping[str, str | Path] | None = None,
    fetch: bool = True,
) -> pd.DataFrame:
    """Run one SQL selection (a ``.sql`` path or SQL text) on the IDC index and return its rows.

    ``params`` bind the statement's ``$name`` parameters (header defaults fill the rest). ``tables`` adds or
    replaces tables by parquet path (e.g. a ``ct_index`` you keep elsewhere). A table idc-index-data does not
    bundle is fetched through idc-index when ``fetch`` is true; otherwise, or offline, the error names it.
    """
    selection = load_sql(sql)
    connection = connect(tables)
    try:
        statements = connection.extract_statements(selection.text)
        if len(statements) != 1:
            raise IDCError(f"{selection.source}: holds {len(statements)} SQL statements; a selection is exactly one")
        values = _bind(selection, set(statements[0].named_parameters), params)
        fetched: set[str] = set()
        while True:
            try:
                return connection.execute(selection.text, values).df()
            except duckdb.CatalogException as err:  # a table not bundled: fetch it once, then run again
                missing = _MISSING_TABLE.search(str(err))
                name = missing.group(1) if missing else None
                if name not in fetchable_table_names() or name in fetched:
                    raise IDCError(f"{selection.source}: {err}") from err
                if not fetch:
                    raise IDCError(
                        f"{selection.source}: needs table {name}, which idc-index-data does not bundle; allow fetching "
                        f"it (network), pass it as a parquet file, or use a query on the bundled tables only"
                    ) from err
                connection.read_parquet(str(fetch_table(name))).create_view(name, replace=True)
                fetched.add(name)
    except duckdb.Error as err:
        raise IDCError(f"{selection.source}: {err}") from err
    finally:
        connection.close()


@dataclass(frozen=True)
class SelectionSummary:
    """What a selection would download: counted before anything leaves the bucket."""

    series: int
    patients: int
    studies: int
    collections: int
    size_mb: float

    def __str__(self) -> str:
        return (
            f"{self.series:,} series, {self.studies:,} studies, {self.patients:,} patients, "
            f"{self.collections:,} collections, {format_size(self.size_mb)}"
        )


def format_size(size_mb: float) -> str:
    """IDC sizes are decimal megabytes; show them in the largest unit that keeps a leading digit."""
    for unit, factor in (("TB", 1e6), ("GB", 1e3)):
        if size_mb >= factor:
            return f"{size_mb / factor:.1f} {unit}"
    return f"{size_mb:.1f} MB"


def summarize(selection: pd.DataFrame) -> SelectionSummary:
    """Count series, studies, patients and collections, and add up ``series_size_MB`` (absent columns count 0)."""

    def distinct(column: str) -> int:
        return int(selection[column].nunique()) if column in selection else 0

    size = float(selection["series_size_MB"].sum()) if "series_size_MB" in selection else 0.0
    return SelectionSummary(
        series=distinct("SeriesInstanceUID"),
        patients=distinct("PatientID"),
        studies=distinct("StudyInstanceUID"),
        collections=distinct("collection_id"),
        size_mb=size,
    )
