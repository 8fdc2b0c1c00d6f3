"""Embed many scans into one table that survives being killed, and that says which model and settings made it.

A table is a Parquet dataset folder (``embeddings.parquet/part-*.parquet``): each batch of scans is one part,
written atomically, so a killed run loses at most the scans in flight and a re-run appends only the scans not yet
in it. Every part carries the same ``ctfm`` schema metadata (model name and weight fingerprint, preprocessing,
patch size, overlap, reduction); appending or searching with another model or other settings is refused, so
vectors of two models never share a table. ``pandas.read_parquet`` reads the folder as one table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm.auto import tqdm

from ctfm.atomic import write_atomically
from ctfm.embedding import PatchEmbeddings, Reduction, embed_patches
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.reports import ReportRow, RunReport
from ctfm.transforms.preprocess import PATCH_SIZE, PRETRAINING_SPACING, CTPreprocessing

logger = logging.getLogger(__name__)

#: Schema-metadata key of the settings every part of a table shares.
METADATA_KEY = b"ctfm"
#: Settings that must match for two sets of vectors to be comparable (the model name alone may differ).
COMPARED = ("model_sha256", "preprocessing", "patch_size", "overlap", "reduction", "embedding_dim")


class TableMismatchError(CTFMError, ValueError):
    """A table made by another model or with other settings than the ones asked for."""


@dataclass
class EmbeddingReport(RunReport):
    """What a corpus run did: the table it wrote, the scans it added, those already there, and each one skipped."""

    STATUSES = {"embedded": "embedded", "already": "already in the table", "skipped": "skipped"}
    PROBLEMS = frozenset({"skipped"})
    ITEM_COLUMN = "path"

    out: Path
    embedded_paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already: list[str] = field(default_factory=list)

    @property
    def embedded(self) -> int:
        """Rows this run added."""
        return len(self.embedded_paths)

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(path, "embedded") for path in self.embedded_paths),
            *(ReportRow(path, "already") for path in self.already),
            *(ReportRow(path, "skipped", reason) for path, reason in self.skipped),
        ]

    def headline(self) -> str:
        has_table = self.embedded or self.already
        return super().headline() + (f"; table: {self.out}" if has_table else "; no table written")


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the weights (names, shapes, values): two tables share it only if one network made both."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def table_settings(
    model: nn.Module,
    model_name: str,
    preprocess: CTPreprocessing,
    patch_size: Sequence[int],
    overlap: float,
    reduce: Reduction,
    patches: bool = False,
) -> dict[str, Any]:
    """The metadata a table records: enough to embed a new query exactly as the table's scans were.

    ``embedding_dim`` joins it when the first vector is known.
    """
    return {
        "model": model_name,
        "model_sha256": model_fingerprint(model),
        "preprocessing": json.loads(json.dumps(dataclasses.asdict(preprocess))),
        "patch_size": [int(p) for p in patch_size],
        "overlap": float(overlap),
        "reduction": reduce,
        "patches": bool(patches),
    }


def preprocessing_of(settings: dict[str, Any]) -> CTPreprocessing:
    """The :class:`CTPreprocessing` a table's metadata describes."""
    return CTPreprocessing(**settings["preprocessing"])


def check_compatible(found: dict[str, Any], expected: dict[str, Any], where: str | Path) -> None:
    """Refuse, naming the table and the first differing setting, when two settings cannot share vectors."""
    for key in COMPARED:
        if key in expected and found.get(key) != expected[key]:
            what = "another model" if key == "model_sha256" else f"{key} {found.get(key)!r}, not {expected[key]!r}"
            raise TableMismatchError(f"{where}: table was made with {what} (model {found.get('model')!r})")


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def read_settings(table: str | Path) -> dict[str, Any]:
    """The ``ctfm`` metadata of a table (a dataset folder or a single Parquet file)."""
    table = Path(table)
    files = _parts(table) if table.is_dir() else [table]
    if not files or not files[0].exists():
        raise CTFMError(f"{table}: no embedding table here (empty or missing)")
    metadata = pq.read_schema(files[0]).metadata or {}
    if METADATA_KEY not in metadata:
        raise CTFMError(f"{files[0]}: not a ctfm embedding table (no ctfm metadata)")
    return json.loads(metadata[METADATA_KEY])


def read_table(table: str | Path, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows and metadata of a table; parts with metadata different from the first are refused."""
    table = Path(table)
    settings = read_settings(table)
    files = _parts(table) if table.is_dir() else [table]
    frames = []
    for part in files:
        check_compatible(json.loads(pq.read_schema(part).metadata[METADATA_KEY]), settings, part)
        frames.append(pd.read_parquet(part, columns=list(columns) if columns else None))
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        raise CTFMError(f"{table}: the embedding table is empty")
    return frame, settings


def embedding_matrix(frame: pd.DataFrame, column: str = "embedding") -> np.ndarray:
    """The ``embedding`` column as one float32 ``(rows, dim)`` array."""
    return np.asarray(np.stack(frame[column].to_numpy()), dtype=np.float32)


def _write_part(folder: Path, rows: list[dict[str, Any]], settings: dict[str, Any], prefix: str = "part") -> Path:
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(settings).encode()})
    name = f"{prefix}-{pd.Timestamp.now('UTC'):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    return write_atomically(folder / name, lambda tmp: pq.write_table(table, tmp))


class TableWriter:
    """Appends scan rows to a table folder, one atomically written part every ``scans_per_part`` scans.

    Opening an existing table checks that it was made with the same settings and learns which scans it holds
    (``done``), so a re-run appends only the rest. Several writers (DDP ranks) may append to one folder at once:
    part names are unique, and the folder is the merged table.
    """

    def __init__(self, out: str | Path, settings: dict[str, Any], scans_per_part: int = 16, prefix: str = "part"):
        self.out = Path(out)
        if self.out.is_file():
            raise CTFMError(
                f"{self.out}: is a single Parquet file; embed into a new table folder (e.g. embeddings.parquet)"
            )
        self.settings = settings
        self.scans_per_part = scans_per_part
        self.prefix = prefix
        self.done: set[str] = set()
        self._rows: list[dict[str, Any]] = []
        if self.out.is_dir() and _parts(self.out):
            existing = read_settings(self.out)
            check_compatible(existing, settings, self.out)
            settings["embedding_dim"] = existing["embedding_dim"]
            self.done = set(read_table(self.out, columns=["path"])[0]["path"])

    def add(self, path: str | Path, result: PatchEmbeddings, reduce: Reduction, patches: bool = False) -> None:
        """One scan's row: its reduced embedding, and with ``patches`` every patch's embedding and RAS mm centre."""
        vector = result.reduce(reduce).numpy().astype(np.float32)
        self.settings.setdefault("embedding_dim", len(vector))
        row: dict[str, Any] = {"path": str(path), "embedding": vector.tolist()}
        if patches:
            row["patch_embeddings"] = result.embeddings.numpy().astype(np.float32).tolist()
            row["patch_centers_mm"] = result.centers_mm.to(torch.float64).numpy().tolist()
        self._rows.append(row)
        self.done.add(str(path))
        if len(self._rows) >= self.scans_per_part:
            self.flush()

    def flush(self) -> None:
        """Write the rows not written yet as one part."""
        if self._rows:
            _write_part(self.out, self._rows, self.settings, self.prefix)
            self._rows = []


def embed_to_parquet(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    model: str | nn.Module = "ct-fm",
    model_name: str | None = None,
    reduce: Reduction = "mean",
    overlap: float = 0.0,
    batch_size: int = 4,
    patch_size: Sequence[int] = PATCH_SIZE,
    device: str = "cpu",
    native_spacing: bool = False,
    patches: bool = False,
    scans_per_part: int = 16,
) -> EmbeddingReport:
    """Embed each scan not yet in the table ``out`` (a Parquet dataset folder) and append it, a part at a time.

    Rows are ``path, embedding``; with ``patches=True`` also ``patch_embeddings`` (one vector per patch) and
    ``patch_centers_mm`` (each patch centre in RAS mm, as :class:`ctfm.embedding.PatchEmbeddings`). ``model_name``
    is what the metadata calls the model (default: ``model`` when it is a name or path, else its class name).
    """
    if isinstance(model, str):
        from ctfm.hub import load

        model_name = model_name or model
        model = load(model, device=device)
    model_name = model_name or type(model).__name__
    preprocess = corpus_preprocessing(patch_size, native_spacing)
    settings = table_settings(model, model_name, preprocess, patch_size, overlap, reduce, patches)
    writer = TableWriter(out, settings, scans_per_part)
    report = EmbeddingReport(out=writer.out)
    for path in tqdm(list(paths), desc="embedding scans", unit="scan"):
        embed_into(writer, report, model, path, preprocess, batch_size)
    writer.flush()
    return report


def embed_into(
    writer: TableWriter,
    report: EmbeddingReport,
    model: nn.Module,
    path: str | Path,
    preprocess: CTPreprocessing,
    batch_size: int,
) -> None:
    """Embed one scan with the writer's settings and add its row, unless the table has it or it is unusable.

    ``ctfm embed`` and the ``embed.yaml`` recipe both go through here, so their tables cannot differ.
    """
    if str(path) in writer.done:
        report.already.append(str(path))
        return
    settings = writer.settings
    try:
        result = embed_patches(
            model,
            path,
            patch_size=settings["patch_size"],
            overlap=settings["overlap"],
            batch_size=batch_size,
            preprocess=preprocess,
            progress=False,
        )
    except InvalidScanError as err:
        logger.warning("skipping %s", err)
        report.skipped.append((str(path), err.problem))
        return
    writer.add(path, result, settings["reduction"], settings["patches"])
    report.embedded_paths.append(str(path))


def corpus_preprocessing(patch_size: Sequence[int], native_spacing: bool = False) -> CTPreprocessing:
    """The canonical preprocessing of a corpus table: pretraining spacing unless ``native_spacing``."""
    return CTPreprocessing(spacing=None if native_spacing else PRETRAINING_SPACING, min_size=tuple(patch_size))


def embed_like_table(scan: str | Path, settings: dict[str, Any], model: nn.Module | None = None) -> np.ndarray:
    """Embed ``scan`` exactly as the table's scans were: its model (checked by fingerprint) and settings."""
    if model is None:
        from ctfm.hub import load

        model = load(settings["model"])
    if model_fingerprint(model) != settings["model_sha256"]:
        raise TableMismatchError(f"{scan}: the query model differs from the table's ({settings['model']!r})")
    result = embed_patches(
        model,
        scan,
        patch_size=settings["patch_size"],
        overlap=settings["overlap"],
        preprocess=preprocessing_of(settings),
        progress=False,
    )
    return result.reduce(settings["reduction"]).numpy().astype(np.float32)
