"""From an SQL selection on the NCI Imaging Data Commons index to a pretraining datalist, in three steps.

``query`` runs a selection (``data_queries/*.sql``) on the bundled idc-index tables with DuckDB, ``download``
fetches its series with s5cmd and verifies them, ``convert`` turns each DICOM series into a NIfTI volume and writes
the datalist CSV the pretraining recipe reads. The ``ctfm idc query|download|convert`` commands wrap them.
"""

from __future__ import annotations

from ctfm.idc.transfer import DownloadReport, IncompleteSeries, download
from ctfm.idc.errors import IDCError
from ctfm.idc.index import SelectionSummary, query, summarize
from ctfm.idc.selection import REQUIRED_COLUMNS, read_selection

__all__ = [
    "DownloadReport",
    "IDCError",
    "IncompleteSeries",
    "REQUIRED_COLUMNS",
    "SelectionSummary",
    "download",
    "query",
    "read_selection",
    "summarize",
]
