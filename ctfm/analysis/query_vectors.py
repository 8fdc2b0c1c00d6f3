"""A query that is already an embedding: a saved vector (``q.npy`` + ``q.npy.json``) or one patch of a patch table.

Searching with a vector skips embedding the query, so only the vector's own record can tell which model made it.
ctfm saves every query vector with a JSON sidecar naming the model (weight fingerprint), the patch size and the
preprocessing, and a patch-table row carries the table's metadata. A vector whose width differs from the searched
embeddings, or whose record names another model or other patch settings, is refused; a bare ``.npy`` without a
sidecar can only be checked for its width, and a warning says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.atomic import write_atomically
from ctfm.embedding_table import TableMismatchError, read_table, scan_key
from ctfm.errors import CTFMError
from ctfm.transforms.preprocess import CTPreprocessing

logger = logging.getLogger(__name__)

#: Preprocessing fields that change what a patch looks like to the model (min_size and check_hu do not).
_PREPROCESSING_COMPARED = ("spacing", "hu_range", "crop_foreground", "body_threshold_hu")


@dataclass
class QueryVector:
    """One query embedding, what results call it, and the settings that made it (None when unknown).

    Attributes:
        vector: the embedding ``(D,)``.
        name: what results call the query.
        settings: model fingerprint, patch size and preprocessing that made it, checked against what it is
            compared with.
        patch_of: ``(table, scan path, patch index)`` when the vector is a patch of a table, so a search of that
            table can leave the query patch itself out.
    """

    vector: np.ndarray
    name: str
    settings: dict[str, Any] | None
    patch_of: tuple[str, str, int] | None = None


def query_settings(
    model_sha256: str, patch_size: Sequence[int], preprocess: CTPreprocessing, model: str = ""
) -> dict[str, Any]:
    """The record a query vector carries: the same keys as an embedding table's metadata."""
    return {
        "model": model,
        "model_sha256": model_sha256,
        "patch_size": [int(p) for p in patch_size],
        "preprocessing": json.loads(json.dumps(asdict(preprocess))),
    }


def sidecar_of(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_query_vector(path: str | Path, query: QueryVector) -> Path:
    """Write ``query.vector`` as ``path`` (``.npy``) and its settings beside it (``path.json``).

    Args:
        path: the ``.npy`` file to write.
        query: the query embedding and its settings.

    Returns:
        ``path``; ``ctfm search --query-embedding path`` reads it back and checks the settings.
    """
    path = Path(path)
    vector = np.asarray(query.vector, dtype=np.float32)
    write_atomically(path, lambda tmp: np.save(tmp, vector, allow_pickle=False))
    record = {"name": query.name, "embedding_dim": int(vector.shape[0]), **(query.settings or {})}
    write_atomically(sidecar_of(path), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return path


def load_query_vector(path: str | Path) -> QueryVector:
    """A vector saved by :func:`save_query_vector` (or any ``.npy`` of one vector, then without settings)."""
    path = Path(path)
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CTFMError(f"{path}: cannot be read as a .npy query vector: {err}") from err
    vector = np.asarray(vector, dtype=np.float32)
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1 or not np.all(np.isfinite(vector)):
        raise CTFMError(f"{path}: a query vector must be one finite vector, got shape {tuple(vector.shape)}")
    sidecar = sidecar_of(path)
    settings = _read_sidecar(sidecar) if sidecar.exists() else None
    if settings is None:
        logger.warning("%s: no %s beside it, so only its width can be checked", path, sidecar.name)
    return QueryVector(vector, str(path), settings)


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    """The settings record beside a saved vector: JSON data, read as such and nothing more."""
    try:
        settings = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CTFMError(f"{sidecar}: cannot be read as a query record: {err}") from None
    if not isinstance(settings, dict):
        raise CTFMError(f"{sidecar}: a query record is a JSON object, got {type(settings).__name__}")
    return settings


def patch_query(table: str | Path, scan: str, patch: int) -> QueryVector:
    """Patch ``patch`` of ``scan`` in a patch table (``ctfm embed --patches``), with the table's settings."""
    frame, settings = read_table(table, columns=["path", "patch_embeddings"])
    if not settings.get("patches"):
        raise CTFMError(f"{table}: has no patch embeddings (write it with `ctfm embed --patches`)")
    rows = frame.index[frame["path"].isin([str(scan), scan_key(scan)])]
    if len(rows) == 0:
        raise CTFMError(f"{table}: no row for scan {scan}")
    patches = frame.at[rows[0], "patch_embeddings"]
    if not 0 <= patch < len(patches):
        raise CTFMError(f"{table}: scan {scan} has patches 0..{len(patches) - 1}, not {patch}")
    vector = np.asarray(patches[patch], dtype=np.float32)
    name = str(frame.at[rows[0], "path"])
    return QueryVector(vector, f"{name}#{patch}", settings, (str(Path(table).resolve()), name, patch))


def read_query(spec: Sequence[str]) -> QueryVector:
    """The CLI's ``--query-embedding``: ``q.npy``, or ``TABLE SCAN PATCH`` (a patch of a patch table).

    Args:
        spec: one value (a ``.npy`` saved by :func:`save_query_vector`, or any one-vector ``.npy``) or three
            (a patch table, a scan path in it, a patch index).

    Returns:
        The query, with its settings when they are known.
    """
    if len(spec) == 1:
        return load_query_vector(spec[0])
    if len(spec) == 3:
        table, scan, patch = spec
        try:
            index = int(patch)
        except ValueError as err:
            raise CTFMError(f"--query-embedding {table} {scan} {patch}: the patch must be an index") from err
        return patch_query(table, scan, index)
    raise CTFMError(f"--query-embedding takes q.npy or TABLE SCAN PATCH, got {len(spec)} values")


def check_query(query: QueryVector, dim: int, expected: dict[str, Any], against: str | Path) -> None:
    """Refuse a query of another width than ``dim`` or made with settings other than ``expected``."""
    if query.vector.shape != (dim,):
        raise CTFMError(f"{query.name}: a {query.vector.shape[0]}-wide vector; {against} holds {dim}-wide embeddings")
    found = query.settings
    if found is None:
        return
    if found.get("model_sha256") != expected.get("model_sha256"):
        raise TableMismatchError(
            f"{query.name}: made by another model ({found.get('model') or 'unnamed'!r}) than {against}'s"
        )
    if list(found.get("patch_size", [])) != list(expected.get("patch_size", [])):
        raise TableMismatchError(
            f"{query.name}: made from {found.get('patch_size')} patches; {against} uses {expected.get('patch_size')}"
        )
    for key in _PREPROCESSING_COMPARED:
        mine, theirs = found.get("preprocessing", {}).get(key), expected.get("preprocessing", {}).get(key)
        if mine != theirs:
            raise TableMismatchError(f"{query.name}: preprocessed with {key} {mine}; {against} with {theirs}")
