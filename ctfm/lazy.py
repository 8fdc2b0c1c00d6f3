"""Public names a package loads on first use, so importing it stays light (``import ctfm`` loads no torch).

A package lists ``{name: module}`` in a literal ``_LAZY`` dict (the API docs test reads it without importing) and
forwards its module-level ``__getattr__`` and ``__dir__`` here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any


def lazy_attribute(package: str, table: Mapping[str, str], name: str) -> Any:
    """``name`` of ``package`` imported from its module in ``table``, and kept on the package for next time."""
    if name not in table:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(table[name]), name)
    setattr(sys.modules[package], name, value)
    return value


def lazy_dir(package: str, table: Mapping[str, str]) -> list[str]:
    """What ``dir(package)`` shows: what it holds and what it will load."""
    return sorted({*vars(sys.modules[package]), *table})
