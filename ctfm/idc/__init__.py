"""From an SQL selection on the NCI Imaging Data Commons index to a pretraining datalist, in three steps.

``query`` runs a selection (``data_queries/*.sql``) on the bundled idc-index tables with DuckDB, ``download``
fetches its series with s5cmd and verifies them, ``convert`` turns each DICOM series into a NIfTI volume and writes
the datalist CSV the pretraining recipe reads. The ``ctfm idc query|download|convert`` commands wrap them.
"""

from __future__ import annotations

from ctfm.idc.errors import IDCError
from ctfm.idc.index import SelectionSummary, query, summarize
from ctfm.idc.selection import REQUIRED_COLUMNS, read_selection
from ctfm.idc.transfer import DownloadReport, IncompleteSeries, download

__all__ = [
    "ConversionReport",
    "DownloadReport",
    "IDCError",
    "IncompleteSeries",
    "REQUIRED_COLUMNS",
    "SelectionSummary",
    "convert",
    "download",
    "query",
    "read_selection",
    "summarize",
]


def __getattr__(name: str) -> object:
    """``convert`` needs the DICOM reader (and with it torch); import it only when asked for, not for a query."""
    if name in ("convert", "ConversionReport"):
        from ctfm.idc import volumes

        return getattr(volumes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
