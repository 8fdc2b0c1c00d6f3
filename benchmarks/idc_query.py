"""A selection on the IDC index: ``ctfm.idc.query`` (DuckDB on the bundled parquet) against ``IDCClient().sql_query``.

    python benchmarks/idc_query.py [--sql data_queries/ctfm_pretraining_offline.sql] [--repeats 3]

Each side runs in a fresh Python process, so its peak memory is its own: the time to the first answer includes
importing the library and (for idc-index) loading the index into pandas; then the same query runs once more warm.
IDCClient.sql_query takes no parameters, so the header defaults of the SQL file are written into its copy, and
the ``ct_series`` view the selections read from is defined on its DuckDB connection.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(method: str, sql_path: str) -> None:
    """Run in a subprocess: time the first and a second answer, report rows and peak RSS as one JSON line."""
    from _common import peak_rss_mib

    start = time.perf_counter()
    if method == "duckdb":
        from ctfm.idc import query

        def run() -> int:
            return len(query(sql_path))
    else:
        from idc_index import IDCClient

        from ctfm.idc.query import add_views, load_sql

        selection = load_sql(sql_path)
        text = selection.text
        for name, default in selection.defaults.items():
            text = text.replace(f"${name}", f"'{default}'")
        client = IDCClient()
        # ct_series, on the connection sql_query uses (IDCClient has no public hook); DuckDB binds it to `index` now.
        client._duckdb_conn.register("index", client.index)
        add_views(client._duckdb_conn)

        def run() -> int:
            return len(client.sql_query(text))

    rows = run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    warm = time.perf_counter() - start
    print(json.dumps({"rows": rows, "first_s": first, "warm_s": warm, "peak_mib": peak_rss_mib()}))


def measure(method: str, sql_path: str, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        output = subprocess.run(
            [sys.executable, __file__, "--child", method, "--sql", sql_path],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sql", default=str(ROOT / "data_queries" / "ctfm_pretraining_offline.sql"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["duckdb", "idcclient"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sql)
        return

    ours = measure("duckdb", args.sql, args.repeats)
    theirs = measure("idcclient", args.sql, args.repeats)
    assert ours["rows"] == theirs["rows"], (ours["rows"], theirs["rows"])
    print(f"query: {Path(args.sql).name}, {ours['rows']:,} rows, median of {args.repeats} fresh processes each")
    print(f"{'':28s}{'first answer':>14s}{'warm query':>12s}{'peak RSS':>12s}")
    for name, result in (("IDCClient().sql_query", theirs), ("ctfm.idc.query (DuckDB)", ours)):
        print(f"{name:28s}{result['first_s']:13.2f}s{result['warm_s']:11.2f}s{result['peak_mib']:8.0f} MiB")
    print(
        f"ratio (IDCClient / ctfm): first answer {theirs['first_s'] / ours['first_s']:.1f}x, "
        f"warm query {theirs['warm_s'] / ours['warm_s']:.1f}x, peak memory {theirs['peak_mib'] / ours['peak_mib']:.1f}x"
    )


if __name__ == "__main__":
    main()
