"""``provenance.json``: what made the files of an output folder, so a result can be traced and repeated.

Every batch command writes one beside its outputs (a command whose ``--out`` is a file writes
``<file>.provenance.json``), atomically. Schema (``schema`` 1)::

    {
      "schema": 1,
      "ctfm_version": "0.1.0",
      "command": ["ctfm", "segment", "s0001/ct.nii.gz", "--out", "labels"],
      "created_utc": "2026-12-07T14:05:00Z",
      "model": {"name": "ct-fm-whole-body", "sha256": "<weights fingerprint>"} | null,
      "preprocessing": {...the CTPreprocessing fields...} | null,
      "settings": {...the command's options...},
      "inputs": [
        {"path": "s0001/ct.nii.gz", "output_name": "s0001_ct", "size_bytes": 123,
         "modified_utc": "2026-12-01T09:30:00Z", "sha256": "..."},
        {"path": "dicom/series1", "output_name": "series1", "series_instance_uid": "1.2.3", "files": 120},
        {"path": "missing.nii.gz", "output_name": "missing", "error": "no such file or directory"}
      ],
      "earlier_runs": [{"command": [...], "created_utc": "...", "ctfm_version": "..."}]
    }

``model.sha256`` is :func:`ctfm.embedding_table.model_fingerprint` (names, shapes and values of the weights), the
same a table records. ``output_name`` is present where the command names outputs per input
(:func:`ctfm.io.naming.output_names`). Commands that resume into the same folder (``embed``, ``prepare``, ``idc``)
pass ``merge=True``: the earlier record's inputs are kept (this run's entry wins for a path given again) and its
command joins ``earlier_runs``; a file whose size and modification time match its earlier entry keeps that entry's
SHA-256 instead of being read again (a resumed run over thousands of scans hashes only the new ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ctfm.atomic import write_atomically

PROVENANCE_NAME = "provenance.json"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_input(
    path: str | os.PathLike, output_name: str | None = None, earlier: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A file's path, size, modification time and SHA-256, or a DICOM folder's SeriesInstanceUID and file count;
    never raises, an unreadable input is recorded with its ``error``. The SHA-256 of ``earlier`` (this path's entry
    of an earlier record) is kept when size and modification time still match."""
    path = Path(path)
    entry: dict[str, Any] = {"path": str(path)}
    if output_name is not None:
        entry["output_name"] = output_name
    try:
        if path.is_dir():
            entry.update(_describe_folder(path))
        elif path.is_file():
            stat = path.stat()
            entry["size_bytes"] = stat.st_size
            entry["modified_utc"] = datetime.fromtimestamp(stat.st_mtime, timezone.utc).strftime(_TIME_FORMAT)
            unchanged = earlier is not None and all(earlier.get(k) == entry[k] for k in ("size_bytes", "modified_utc"))
            entry["sha256"] = earlier["sha256"] if unchanged and earlier and "sha256" in earlier else file_sha256(path)
        else:
            entry["error"] = "no such file or directory"
    except OSError as err:
        entry["error"] = err.strerror or str(err)
    return entry


def _describe_folder(folder: Path) -> dict[str, Any]:
    """SeriesInstanceUID(s) of the DICOM files in ``folder`` (headers only) and how many files it holds."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file())
    uids: set[str] = set()
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "SeriesInstanceUID" in header:
            uids.add(str(header.SeriesInstanceUID))
    described: dict[str, Any] = {"files": len(files)}
    if len(uids) == 1:
        described["series_instance_uid"] = uids.pop()
    elif uids:
        described["series_instance_uids"] = sorted(uids)
    return described


def model_record(model: Any, name: str | os.PathLike | None) -> dict[str, Any]:
    """``{"name", "sha256"}`` of a network (or of a segmenter's ``network``)."""
    from ctfm.embedding_table import model_fingerprint

    network = getattr(model, "network", model)
    return {"name": None if name is None else str(name), "sha256": model_fingerprint(network)}


def _jsonable(value: Any) -> Any:
    """Settings as JSON values: dataclasses as dicts, paths and other objects as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def provenance_record(
    *,
    command: Sequence[str],
    inputs: Sequence[str | os.PathLike] = (),
    output_names: Sequence[str] | None = None,
    model: Mapping[str, Any] | None = None,
    preprocessing: Any = None,
    settings: Mapping[str, Any] | None = None,
    extra_inputs: Sequence[Mapping[str, Any]] = (),
    earlier: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record :func:`write_provenance` writes (see the module docstring); ``earlier`` is a record written
    before into the same place, whose file hashes are reused where the files did not change."""
    from ctfm import __version__

    names: Sequence[str | None] = output_names if output_names is not None else [None] * len(inputs)
    known = {entry.get("path"): entry for entry in (earlier or {}).get("inputs", []) if isinstance(entry, dict)}
    return {
        "schema": SCHEMA_VERSION,
        "ctfm_version": __version__,
        "command": [str(part) for part in command],
        "created_utc": datetime.now(timezone.utc).strftime(_TIME_FORMAT),
        "model": None if model is None else _jsonable(model),
        "preprocessing": _jsonable(preprocessing),
        "settings": _jsonable(settings or {}),
        "inputs": [describe_input(path, name, known.get(str(path))) for path, name in zip(inputs, names)]
        + [dict(entry) for entry in extra_inputs],
    }


def provenance_path(where: str | os.PathLike, beside_file: bool = False) -> Path:
    """``<where>/provenance.json``, or ``<where>.provenance.json`` for a file output."""
    where = Path(where)
    return where.with_name(where.name + "." + PROVENANCE_NAME) if beside_file else where / PROVENANCE_NAME


def read_provenance(path: Path) -> dict[str, Any] | None:
    """An earlier record, or None where there is none or it cannot be read (it is then replaced)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_provenance(
    where: str | os.PathLike, record: Mapping[str, Any], *, merge: bool = False, beside_file: bool = False
) -> Path:
    """Write ``record`` as ``<where>/provenance.json`` (``<where>.provenance.json`` with ``beside_file``), atomically.

    With ``merge`` an existing record's inputs are kept (this run's entry wins for the same path) and its command
    joins ``earlier_runs``; an unreadable earlier record is replaced.
    """
    target = provenance_path(where, beside_file)
    document = dict(record)
    if merge:
        earlier = read_provenance(target)
        if earlier is not None:
            paths = {entry.get("path") for entry in document["inputs"]}
            kept = [entry for entry in earlier.get("inputs", []) if entry.get("path") not in paths]
            document["inputs"] = kept + list(document["inputs"])
            runs = list(earlier.get("earlier_runs", []))
            runs.append({key: earlier.get(key) for key in ("command", "created_utc", "ctfm_version")})
            document["earlier_runs"] = runs
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return write_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def record_command(
    where: str | os.PathLike,
    args: Any,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    output_names: Sequence[str] | None = None,
    model: Any = None,
    preprocessing: Any = None,
    extra_inputs: Sequence[Mapping[str, Any]] = (),
    merge: bool = False,
    beside_file: bool = False,
) -> Path:
    """What a ``ctfm`` command calls when its outputs are written: the record of ``args`` (the argparse namespace;
    :func:`ctfm.cli.main` keeps the typed arguments on it as ``argv``) and ``model`` (a network or segmenter, named
    by ``args.model``) into :func:`write_provenance`."""
    settings = {key: value for key, value in vars(args).items() if key not in {"func", "argv"}}
    record = provenance_record(
        command=["ctfm", *getattr(args, "argv", [])],
        inputs=inputs,
        output_names=output_names,
        model=None if model is None else model_record(model, getattr(args, "model", None)),
        preprocessing=preprocessing,
        settings=settings,
        extra_inputs=extra_inputs,
        earlier=read_provenance(provenance_path(where, beside_file)) if merge else None,
    )
    return write_provenance(where, record, merge=merge, beside_file=beside_file)
