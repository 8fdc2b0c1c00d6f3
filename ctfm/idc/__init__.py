"""From an SQL selection on the NCI Imaging Data Commons index to a pretraining datalist, in three steps.

``query`` runs a selection (a shipped ``ctfm/idc/queries/*.sql`` by name, or a file) on the bundled idc-index
tables with DuckDB, ``download`` fetches its series with s5cmd and verifies them, ``convert`` turns each DICOM
series into a NIfTI volume and writes the datalist CSV the pretraining recipe reads. The
``ctfm idc query|download|convert`` commands wrap them.

Each step lives in the module of the same name (:mod:`ctfm.idc.query`, ...), but ``ctfm.idc.query`` is always the
function, even after ``import ctfm.idc.query``; reach a module's other names with ``from ctfm.idc.query import ...``.
"""

from __future__ import annotations

import importlib
import sys
import types

from ctfm.idc.download import DownloadReport, IncompleteSeries, download
from ctfm.idc.errors import IDCError
from ctfm.idc.query import SelectionSummary, query, summarize
from ctfm.idc.selection import REQUIRED_COLUMNS, read_selection

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

#: Submodules named after the function they hold.
_STEPS = ("query", "download", "convert")


class _Package(types.ModuleType):
    """Importing ``ctfm.idc.<step>`` binds the submodule over the function of that name; bind the function."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _STEPS and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    """``convert`` needs the DICOM reader (and with it torch); import it only when asked for, not for a query."""
    if name in ("convert", "ConversionReport"):
        module = importlib.import_module(f"{__name__}.convert")  # also binds the function here (see _Package)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
