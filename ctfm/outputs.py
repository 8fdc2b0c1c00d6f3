"""Never overwrite an earlier run's outputs by accident: every output a command will write is checked first.

A command that writes fixed file names (``statistics.csv``, ``<name>.nii.gz``, ``probe.json``) calls
:func:`refuse_overwrite` with every path it is about to write before it does any work, so a second run into the
same ``--out`` stops with one line naming the first file that is in the way, and writes nothing. Its ``--overwrite``
flag lets a user re-run on purpose. Commands that resume (``embed``, ``prepare``, ``idc download|convert``) add to
their destination instead, by design.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ctfm.errors import CTFMError

#: What the ``--help`` of a command with ``--overwrite`` says about it.
OVERWRITE_HELP = "replace outputs of an earlier run in --out (without it, a run that would overwrite a file stops)"


class OutputExistsError(CTFMError, FileExistsError):
    """An output file of this run exists already and ``--overwrite`` was not given."""


def output_folder(out: str | os.PathLike) -> Path:
    """``out`` as a folder to write into, created if missing; refuses a path that is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: is a file, not a folder; give --out a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def refuse_overwrite(targets: Iterable[str | os.PathLike], overwrite: bool = False) -> None:
    """Raise :class:`OutputExistsError` naming the first of ``targets`` that exists, unless ``overwrite``.

    Folders among ``targets`` count when they exist (a folder of masks from an earlier run).
    """
    existing = [Path(target) for target in targets if Path(target).exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(
            f"{existing[0]}{more}: exists already from an earlier run; choose another --out or pass --overwrite"
        )
