"""Atomic file writes: a file either appears complete under its final name or not at all.

Every artefact a long run leaves behind (weights, cached scans, selection and report tables, embedding tables)
goes through :func:`write_atomically`, so a killed process never leaves a file that looks finished.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(target: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary path beside ``target``, flush it to disk, rename it over ``target``.

    The temporary name ends with the target's suffixes, so writers that choose a format by name (``np.save``
    appending ``.npy``, nibabel and SimpleITK reading ``.nii.gz``, pandas) write what the target needs. It is
    created first under the process umask and keeps those permissions, whatever mode the writer uses (safetensors,
    for one, writes owner-only files). On any failure it is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(target)
    try:
        tmp.touch()
        mode = tmp.stat().st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        with tmp.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _temporary_path(target: Path) -> Path:
    """``.{stem}.{pid}.{uuid}.tmp{suffixes}`` beside ``target``: hidden, unique, and ending like the target."""
    suffixes = "".join(target.suffixes)
    stem = target.name[: len(target.name) - len(suffixes)]
    return target.with_name(f".{stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp{suffixes}")
