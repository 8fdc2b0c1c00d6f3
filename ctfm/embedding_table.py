"""Embed many scans into one table that survives being killed, and that says which model and settings made it.

A table is a Parquet dataset folder (``embeddings.parquet/part-*.parquet``): each batch of scans is one part,
written atomically, so a killed run loses at most the scans in flight and a re-run appends only the scans not yet
in it. Every part carries the same ``ctfm`` schema metadata (model name and weight fingerprint, preprocessing,
patch size, overlap, reduction); appending or searching with another model or other settings is refused, so
vectors of two models never share a table. ``pandas.read_parquet`` reads the folder as one table.

A scan is one row: paths are stored absolute and resolved, so ``./a``, ``a`` and ``/abs//a`` are one scan. A region
table (``masks=``) has one row per (scan, region) instead, keyed by the resolved path and the region's name. Writers
claim a scan before embedding it (an ``flock`` on ``.claims/<hash>.lock`` in the folder, held until its part is
written), so two runs appending to one table at once never embed a scan twice. Any failure of one scan (unreadable,
degenerate, out of memory, a full disk) costs only that scan; the report names it. A damaged part is skipped by
every reader with one warning that names it and how to drop it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shlex
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
from monai.data import MetaTensor
from torch import nn
from tqdm.auto import tqdm

from ctfm.atomic import write_atomically
from ctfm.data.cache import preprocess_checked
from ctfm.embedding import (
    FROM_MODEL,
    REGION_CROP,
    PatchEmbeddings,
    Reduction,
    RegionEmbedding,
    RegionPool,
    embed_patches,
    embed_regions,
    embed_whole_volume,
    model_defaults,
    whole_volume_box,
)
from ctfm.errors import CTFMError, InvalidScanError, UsageError
from ctfm.io.reader import output_name
from ctfm.io.regions import MissingMaskError, mask_for
from ctfm.reports import ReportRow, RunReport
from ctfm.transforms.preprocess import CTPreprocessing

logger = logging.getLogger(__name__)

#: Schema-metadata key of the settings every part of a table shares.
METADATA_KEY = b"ctfm"
#: Settings that must match for two sets of vectors to be comparable (the model name alone may differ).
COMPARED = (
    "model_sha256", "patch_size", "overlap", "reduction", "patches", "preprocessing", "embedding_dim", "mode",
    "crop_size", "pool",
)  # fmt: skip
#: What a table written before a setting existed meant by leaving it out.
DEFAULTS: dict[str, Any] = {"patches": False, "mode": "tiled", "crop_size": None, "pool": None}
#: ``mode`` of a table: tiles pooled (``tiled``), or one forward pass over the scan or the region's crop (``whole``).
MODES = ("tiled", "whole")
#: How a refusal names each setting: the ``ctfm embed`` option that sets it.
SETTING_NAMES = {
    "model_sha256": "model weights (sha256)",
    "patch_size": "--patch-size",
    "overlap": "--overlap",
    "reduction": "--reduce",
    "patches": "--patches",
    "embedding_dim": "embedding width",
    "preprocessing.spacing": "spacing (--native-spacing)",
    "mode": "mode (--whole-volume, or --pool crop)",
    "crop_size": "--crop-size",
    "pool": "--masks/--pool",
}
#: Hidden folder of a table where writers hold their claims on the scans they are embedding.
CLAIMS = ".claims"
#: Column of each scan's DICOM SeriesInstanceUID (for a DICOM folder, or a NIfTI from ``ctfm idc convert``).
SERIES_COLUMN = "SeriesInstanceUID"


class TableMismatchError(CTFMError, ValueError):
    """A table made by another model or with other settings than the ones asked for."""


@dataclass
class EmbeddingReport(RunReport):
    """What a corpus run did: the table it wrote, the scans it added, those already there, and each one skipped."""

    STATUSES = {
        "embedded": "embedded",
        "already": "already in the table",
        "busy": "being embedded by another run",
        "skipped": "skipped",
    }
    PROBLEMS = frozenset({"skipped"})
    ITEM_COLUMN = "path"

    out: Path
    embedded_paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)

    @property
    def embedded(self) -> int:
        """Rows this run added."""
        return len(self.embedded_paths)

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(path, "embedded") for path in self.embedded_paths),
            *(ReportRow(path, "already") for path in self.already),
            *(ReportRow(path, "busy") for path in self.busy),
            *(ReportRow(path, "skipped", reason) for path, reason in self.skipped),
        ]

    def counts(self) -> dict[str, int]:
        """As the base, but "being embedded by another run" only when a concurrent run took some scans."""
        counts = super().counts()
        if not counts.get("busy"):
            counts.pop("busy", None)
        return counts

    def headline(self) -> str:
        has_table = self.embedded or self.already or self.busy
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
    *,
    whole_volume: bool = False,
    crop_size: Sequence[int] | None = None,
    pool: RegionPool | None = None,
) -> dict[str, Any]:
    """The metadata a table records: enough to embed a new query exactly as the table's scans were.

    ``mode`` is ``whole`` for one forward pass per scan (``whole_volume``) or per region (``pool="crop"``), else
    ``tiled``; ``crop_size`` is that pass's box (None: the scan padded to a multiple of 16, or the challenge's
    160^3 around a region); ``pool`` is set only for a region table. ``embedding_dim`` joins when the first vector
    is known.
    """
    whole = whole_volume or pool == "crop"
    if whole and pool == "crop" and crop_size is None:
        crop_size = REGION_CROP
    return {
        "model": model_name,
        "model_sha256": model_fingerprint(model),
        "preprocessing": json.loads(json.dumps(dataclasses.asdict(preprocess))),
        "patch_size": [int(p) for p in patch_size],
        "overlap": float(overlap),
        "reduction": reduce,
        "patches": bool(patches),
        "mode": "whole" if whole else "tiled",
        "crop_size": None if crop_size is None or not whole else [int(c) for c in crop_size],
        "pool": pool,
    }


def preprocessing_of(settings: dict[str, Any]) -> CTPreprocessing:
    """The :class:`CTPreprocessing` a table's metadata describes."""
    return CTPreprocessing(**settings["preprocessing"])


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> Iterable[tuple[str, Any, Any]]:
    """(setting, found, expected) for each compared setting that differs; preprocessing is compared key by key."""
    for key in COMPARED:
        if key not in expected:
            continue
        if key == "preprocessing":
            mine, theirs = found.get(key) or {}, expected[key]
            for sub in sorted(set(mine) | set(theirs)):
                if mine.get(sub) != theirs.get(sub):
                    yield f"preprocessing.{sub}", mine.get(sub), theirs.get(sub)
        elif found.get(key, DEFAULTS.get(key)) != expected[key]:
            yield key, found.get(key), expected[key]


def check_compatible(found: dict[str, Any], expected: dict[str, Any], where: str | Path) -> None:
    """Refuse, naming the table, the first differing setting and both values, when two settings cannot share vectors."""
    for key, mine, theirs in _differences(found, expected):
        if key == "model_sha256":
            raise TableMismatchError(
                f"{where}: table was made with another model: {found.get('model')!r} (weights sha256 "
                f"{str(mine)[:12]}), not {expected.get('model')!r} ({str(theirs)[:12]})"
            )
        name = SETTING_NAMES.get(key, key)
        raise TableMismatchError(
            f"{where}: table was made with {name} {mine!r}, not {theirs!r} (model {found.get('model')!r})"
        )


def scan_key(path: str | Path) -> str:
    """The one name a scan has in a table: its absolute, resolved path (``./a``, ``a`` and ``/abs//a`` are one)."""
    return str(Path(path).expanduser().resolve())


def region_key(path: str, region: str) -> str:
    """The one name a (scan, region) row has in a region table and its report: ``<resolved path>#<region>``."""
    return f"{path}#{region}"


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


#: What reading a damaged or foreign Parquet file raises (pyarrow's errors are ValueErrors or OSErrors).
PART_ERRORS = (OSError, ValueError, KeyError, pa.ArrowException)
_warned: set[str] = set()


def _skip_damaged(part: Path, err: BaseException) -> None:
    """Warn once per process that ``part`` is left out, and how to drop it for good."""
    if str(part) in _warned:
        return
    _warned.add(str(part))
    reason = " ".join(str(err).split()) or type(err).__name__
    logger.warning(
        "%s: damaged table part skipped (%s); the rest of the table is used. Drop it for good with: rm %s",
        part,
        reason,
        shlex.quote(str(part)),
    )


def _part_settings(part: Path, skip: bool) -> dict[str, Any] | None:
    """The ``ctfm`` metadata of one part; a damaged part is skipped (None, with a warning) or, alone, refused."""
    try:
        metadata = pq.read_schema(part).metadata or {}
        if METADATA_KEY not in metadata:
            raise KeyError("no ctfm metadata: not written by `ctfm embed`")
        return dict(json.loads(metadata[METADATA_KEY]))
    except PART_ERRORS as err:
        if skip:
            _skip_damaged(part, err)
            return None
        if isinstance(err, KeyError):
            raise CTFMError(f"{part}: not a ctfm embedding table (no ctfm metadata)") from err
        raise CTFMError(f"{part}: cannot be read as an embedding table ({' '.join(str(err).split())})") from err


def read_settings(table: str | Path) -> dict[str, Any]:
    """The ``ctfm`` metadata of a table (a dataset folder or a single Parquet file); damaged parts are skipped."""
    table = Path(table)
    if not table.is_dir():
        if not table.exists():
            raise CTFMError(f"{table}: no embedding table here (empty or missing)")
        return _part_settings(table, skip=False) or {}
    parts = _parts(table)
    for part in parts:
        settings = _part_settings(part, skip=True)
        if settings is not None:
            return settings
    if parts:
        raise CTFMError(f"{table}: none of its {len(parts)} parts can be read (each named above)")
    raise CTFMError(f"{table}: no embedding table here (empty or missing)")


def read_table(table: str | Path, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows and metadata of a table; parts with metadata different from the first are refused.

    A damaged part is left out with a warning naming it, and so are rows whose ``embedding`` is unusable
    (:func:`usable_rows`), so one bad file or scan never stops a search or a probe.
    """
    table = Path(table)
    settings = read_settings(table)
    folder = table.is_dir()
    frames = []
    for part in _parts(table) if folder else [table]:
        found = _part_settings(part, skip=folder)
        if found is None:
            continue
        check_compatible(found, settings, part)
        try:
            frames.append(pd.read_parquet(part, columns=list(columns) if columns else None))
        except PART_ERRORS as err:
            if not folder:
                raise CTFMError(f"{part}: cannot be read as an embedding table ({' '.join(str(err).split())})") from err
            _skip_damaged(part, err)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise CTFMError(f"{table}: the embedding table is empty")
    if "embedding" in frame.columns:
        frame = usable_rows(frame, table, settings.get("embedding_dim"))
    return frame, settings


def usable_rows(frame: pd.DataFrame, where: str | Path, dim: int | None = None) -> pd.DataFrame:
    """The rows whose ``embedding`` is a finite, non-zero vector of ``dim`` values; one warning names the others.

    An all-zero or NaN vector has no direction: it would rank arbitrarily in a search and poison a probe.
    """
    vectors = frame["embedding"].to_numpy()
    lengths = np.fromiter((0 if v is None else len(v) for v in vectors), dtype=np.int64, count=len(vectors))
    dim = int(dim or (np.bincount(lengths).argmax() if len(lengths) else 0))
    reasons = {i: f"{n} values, not {dim}" if n else "empty" for i, n in enumerate(lengths.tolist()) if n != dim}
    rows = np.flatnonzero(lengths == dim)
    for start in range(0, len(rows) if dim else 0, 65_536):  # in chunks: no second copy of a large table
        chunk = rows[start : start + 65_536]
        matrix = np.stack(vectors[chunk]).astype(np.float32, copy=False)
        finite = np.isfinite(matrix)
        not_finite = (~finite).sum(axis=1)
        for i, bad in zip(chunk[not_finite > 0], not_finite[not_finite > 0]):
            reasons[int(i)] = f"{bad} non-finite values"
        for i in chunk[(not_finite == 0) & ~matrix.any(axis=1)]:
            reasons[int(i)] = "all zeros"
    if not reasons:
        return frame
    names = frame["path"].to_numpy() if "path" in frame.columns else np.arange(len(frame))
    listed = [f"{names[i]}: {reason}" for i, reason in sorted(reasons.items())]
    more = f"; and {len(listed) - 5} more" if len(listed) > 5 else ""
    logger.warning(
        "%s: left out %d row(s) whose embedding is unusable: %s%s", where, len(listed), "; ".join(listed[:5]), more
    )
    kept = frame.drop(index=frame.index[sorted(reasons)]).reset_index(drop=True)
    if kept.empty:
        raise CTFMError(f"{where}: no row has a usable embedding ({len(listed)} left out)")
    return kept


def embedding_matrix(frame: pd.DataFrame, column: str = "embedding") -> np.ndarray:
    """The ``embedding`` column as one float32 ``(rows, dim)`` array."""
    return np.asarray(np.stack(frame[column].to_numpy()), dtype=np.float32)


def _write_part(folder: Path, rows: list[dict[str, Any]], settings: dict[str, Any], prefix: str = "part") -> Path:
    table = pa.Table.from_pylist(rows)
    if SERIES_COLUMN in table.column_names and pa.types.is_null(table.schema.field(SERIES_COLUMN).type):
        # a part of NIfTIs without sidecars still types the column as text, so every part has one schema
        table = table.set_column(
            table.column_names.index(SERIES_COLUMN), SERIES_COLUMN, table.column(SERIES_COLUMN).cast(pa.string())
        )
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(settings).encode()})
    name = f"{prefix}-{pd.Timestamp.now('UTC'):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    return write_atomically(folder / name, lambda tmp: pq.write_table(table, tmp))


class TableWriter:
    """Appends scan rows to a table folder, one atomically written part every ``scans_per_part`` scans.

    Opening an existing table checks that it was made with the same settings and learns which scans it holds
    (``done``), so a re-run appends only the rest. Several writers (DDP ranks, two ``ctfm embed`` runs) may append
    to one folder at once: each :meth:`claim` s a scan (an ``flock`` held until the scan's part is written, so a
    killed writer's claims lapse), then looks at the parts written since, so no scan is embedded twice. In a region
    table ``done`` holds :func:`region_key` s and ``scans`` the paths that have any row.
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
        self.scans: set[str] = set()
        self._rows: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._claims: dict[str, int] = {}
        if self.out.is_dir() and _parts(self.out):
            existing = read_settings(self.out)
            check_compatible(existing, settings, self.out)
            settings["embedding_dim"] = existing["embedding_dim"]
            self.refresh()

    def refresh(self) -> None:
        """Learn the scans of the parts written since the last look, by this writer or another; check their settings."""
        for part in _parts(self.out) if self.out.is_dir() else []:
            if part.name in self._seen:
                continue
            self._seen.add(part.name)
            found = _part_settings(part, skip=True)
            if found is None:
                continue
            check_compatible(found, self.settings, part)
            try:
                keys = pq.read_table(part, columns=["path", *(["region"] if self.regions else [])]).to_pylist()
            except PART_ERRORS as err:
                _skip_damaged(part, err)
                continue
            self.scans.update(row["path"] for row in keys)
            self.done.update(region_key(row["path"], row["region"]) if self.regions else row["path"] for row in keys)

    @property
    def regions(self) -> bool:
        """Whether the table has a row per (scan, region) rather than per scan."""
        return self.settings.get("pool") is not None

    def claim(self, path: str, keys: Sequence[str] | None = None) -> bool:
        """Take ``path`` for this writer: False when the table has it (each of ``keys``, default the path itself;
        none given: any row of the scan) or another writer is embedding it now."""
        folder = self.out / CLAIMS
        lock = folder / f"{hashlib.sha256(path.encode()).hexdigest()[:32]}.lock"
        while True:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            except FileNotFoundError:  # another writer removed the empty folder just now: make it again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed the file after we opened it: lock the file there now
        self._claims[path] = fd
        self.refresh()
        if self.has(path, keys):
            self.release(path)
            return False
        return True

    def has(self, path: str, keys: Sequence[str] | None = None) -> bool:
        """Whether the table holds every one of ``keys`` (default ``[path]``; empty: any row of ``path``)."""
        keys = [path] if keys is None else keys
        return all(key in self.done for key in keys) if keys else path in self.scans

    def release(self, path: str) -> None:
        """Give up the claim on ``path`` (its row is written, or it failed)."""
        fd = self._claims.pop(path, None)
        if fd is not None:
            (self.out / CLAIMS / f"{hashlib.sha256(path.encode()).hexdigest()[:32]}.lock").unlink(missing_ok=True)
            os.close(fd)

    def add(
        self, path: str, result: PatchEmbeddings, reduce: Reduction, patches: bool = False, series: str | None = None
    ) -> None:
        """One scan's row: its reduced embedding and DICOM SeriesInstanceUID (None when unknown), and with
        ``patches`` every patch's embedding and RAS mm centre."""
        vector = result.reduce(reduce).numpy().astype(np.float32)
        self.settings.setdefault("embedding_dim", len(vector))
        row: dict[str, Any] = {"path": path, SERIES_COLUMN: series, "embedding": vector.tolist()}
        if patches:
            row["patch_embeddings"] = result.embeddings.numpy().astype(np.float32).tolist()
            row["patch_centers_mm"] = result.centers_mm.to(torch.float64).numpy().tolist()
        self._rows.append(row)
        self.done.add(path)
        self.scans.add(path)

    def add_region(self, path: str, region: str, found: RegionEmbedding, mask: str, series: str | None = None) -> None:
        """One (scan, region) row: the region's name, label value, mask file and fingerprint, size and embedding."""
        vector = found.embedding.numpy().astype(np.float32)
        self.settings.setdefault("embedding_dim", len(vector))
        self._rows.append(
            {
                "path": path, SERIES_COLUMN: series, "region": region, "label_value": int(found.labels[0]),
                "mask": mask, "mask_sha256": found.mask_sha256, "voxels": found.voxels, "patches": found.patches,
                "embedding": vector.tolist(),
            }
        )  # fmt: skip
        self.done.add(region_key(path, region))
        self.scans.add(path)

    @property
    def full(self) -> bool:
        """Whether the rows not written yet make a part."""
        return len(self._rows) >= self.scans_per_part

    def flush(self, report: EmbeddingReport | None = None) -> None:
        """Write the rows not written yet as one part, then release their claims.

        With ``report``, a failed write (a full disk) moves those scans from embedded to skipped, naming the error,
        and the run goes on; without, it raises.
        """
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        paths = list(dict.fromkeys(row["path"] for row in rows))
        keys = [region_key(row["path"], row["region"]) if "region" in row else row["path"] for row in rows]
        try:
            self._seen.add(_write_part(self.out, rows, self.settings, self.prefix).name)
        except OSError as err:
            self.done.difference_update(keys)
            self.scans.difference_update(paths)
            if report is None:
                raise
            reason = f"not written to {self.out}: {_one_line(err)}"
            logger.warning("%d %s %s", len(keys), "rows" if self.regions else "scans", reason)
            for key in keys:
                if key in report.embedded_paths:
                    report.embedded_paths.remove(key)
                report.skipped.append((key, reason))
        finally:
            for path in paths:
                self.release(path)

    def close(self, report: EmbeddingReport | None = None) -> None:
        """Write what is left and give back every claim: the end of a run, or its interruption."""
        try:
            self.flush(report)
        finally:
            for path in list(self._claims):
                self.release(path)
            try:
                (self.out / CLAIMS).rmdir()  # only when empty: no other writer holds a claim
            except OSError:
                pass


def _one_line(err: BaseException) -> str:
    """``Type: message`` on one line (at most 300 characters) for a report."""
    message = " ".join(str(err).split())
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def embed_to_parquet(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    model: str | nn.Module = "ct-fm",
    model_name: str | None = None,
    reduce: Reduction = "mean",
    overlap: float = 0.0,
    batch_size: int = 4,
    patch_size: Sequence[int] | None = None,
    device: str = "cpu",
    native_spacing: bool = False,
    patches: bool = False,
    scans_per_part: int = 16,
    whole_volume: bool = False,
    crop_size: Sequence[int] | None = None,
    masks: str | Path | None = None,
    labels: Sequence[str] | None = None,
    pool: RegionPool = "mean",
) -> EmbeddingReport:
    """Embed each scan not yet in the table ``out`` (a Parquet dataset folder) and append it, a part at a time.

    Rows are ``path, SeriesInstanceUID, embedding`` (the UID when a DICOM folder or an ``idc convert``
    sidecar gives it, else null); with ``patches=True`` also ``patch_embeddings`` (one vector per patch) and
    ``patch_centers_mm`` (each patch centre in RAS mm, as :class:`ctfm.embedding.PatchEmbeddings`). ``model_name``
    is what the metadata calls the model (default: ``model`` when it is a name or path, else its class name);
    ``patch_size`` defaults to the model's own (:func:`ctfm.embedding.model_defaults`).
    ``whole_volume``: one forward pass per scan, centre-cropped or padded to ``crop_size`` (default: padded to a
    multiple of 16), instead of tiles.

    With ``masks`` (a folder or a pattern: :func:`ctfm.io.regions.mask_for`) the table has one row per (scan,
    region) instead: ``labels`` (names or values; default every value in the mask) are the regions, embedded with
    ``pool`` (:func:`ctfm.embedding.embed_regions`; ``crop`` is one forward pass over ``crop_size``, default
    160^3, around the region). Each row adds ``region`` (the label as given, or the mask's name for it),
    ``label_value``, ``mask`` (its file or folder), ``mask_sha256`` (:func:`ctfm.embedding.region_fingerprint`:
    the region's own voxels on the scan's grid), ``voxels`` and ``patches`` (forward-pass inputs pooled). A missing
    mask skips the scan and an empty region skips that region, each named and counted.

    A scan that fails in any way is skipped and named in the report; an interrupt (Ctrl-C) writes the scans
    embedded so far before it stops the run.
    """
    if isinstance(model, str):
        from ctfm.hub import load

        model_name = model_name or model
        model = load(model, device=device)
    model_name = model_name or type(model).__name__
    paths = list(paths)
    if masks is not None:
        check_mask_rule(paths, masks, patches or whole_volume)
    patch_size = model_defaults(model, patch_size, None)[0]
    preprocess = corpus_preprocessing(patch_size, native_spacing, model)
    settings = table_settings(
        model, model_name, preprocess, patch_size, overlap, reduce, patches, whole_volume=whole_volume,
        crop_size=crop_size, pool=pool if masks is not None else None,
    )  # fmt: skip
    writer = TableWriter(out, settings, scans_per_part)
    report = EmbeddingReport(out=writer.out)
    try:
        for path in tqdm(paths, desc="embedding scans", unit="scan"):
            if masks is None:
                embed_into(writer, report, model, path, preprocess, batch_size)
            else:
                embed_regions_into(writer, report, model, path, masks, labels, preprocess, batch_size)
    finally:
        writer.close(report)
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

    ``ctfm embed`` and the ``embed.yaml`` recipe both go through here, so their tables cannot differ. Whatever
    goes wrong with the scan (unreadable, degenerate, out of memory, a library's error) skips only this scan.
    """
    name = scan_key(path)
    if name in writer.done:
        report.already.append(name)
        return
    if not writer.claim(name):
        (report.already if name in writer.done else report.busy).append(name)
        return
    try:
        result = embed_scan(model, name, writer.settings, preprocess, batch_size)
    except Exception as err:  # noqa: BLE001 -- one scan's failure of any kind must not cost the others
        writer.release(name)
        reason = err.problem if isinstance(err, InvalidScanError) else _one_line(err)
        logger.warning("skipping %s: %s", name, reason)
        logger.debug("%s failed", name, exc_info=True)
        report.skipped.append((name, reason))
        return
    except BaseException:  # an interrupt: give the scan back before the run stops
        writer.release(name)
        raise
    writer.add(name, result, writer.settings["reduction"], writer.settings["patches"], series_uid(name))
    report.embedded_paths.append(name)
    if writer.full:
        writer.flush(report)


def check_mask_rule(paths: Sequence[str | Path], masks: str | Path, per_scan_options: bool) -> None:
    """Refuse (UsageError) what a region table cannot do: patches or a whole-scan pass, and a folder of masks
    asked for two different scans of one name (``case_001/ct.nii.gz``, ``case_002/ct.nii.gz``)."""
    from ctfm.io.naming import image_stem
    from ctfm.io.regions import is_mask_pattern

    if per_scan_options:
        raise UsageError("a region table pools each region: --pool crop is its one forward pass; no --patches")
    if is_mask_pattern(str(masks)):
        return
    by_stem: dict[str, str] = {}
    for path in paths:
        key, stem = scan_key(path), image_stem(path)
        if by_stem.setdefault(stem, key) != key:
            raise UsageError(
                f"{by_stem[stem]} and {key} are both named {stem!r}: a folder of masks cannot tell them apart; "
                "give --masks as a pattern, e.g. '{dir}/segmentations' or 'masks/{parent}.nii.gz'"
            )


def embed_regions_into(
    writer: TableWriter,
    report: EmbeddingReport,
    model: nn.Module,
    path: str | Path,
    masks: str | Path,
    labels: Sequence[str] | None,
    preprocess: CTPreprocessing,
    batch_size: int,
) -> None:
    """Embed the regions of one scan the table lacks and add a row each; a missing mask skips the scan and an empty
    region (or one the mask does not name) skips that region, each with a one-line warning naming the file."""
    name = scan_key(path)
    wanted = [region_key(name, label) for label in labels] if labels else []
    if writer.has(name, wanted):
        report.already.extend(wanted or [name])
        return
    try:
        mask = mask_for(path, masks)
    except MissingMaskError as err:
        logger.warning("skipping %s", err)
        report.skipped.append((name, str(err)))
        return
    if not writer.claim(name, wanted):
        (report.already if writer.has(name, wanted) else report.busy).extend(wanted or [name])
        return
    regions = None if not labels else {label: [label] for label in labels if region_key(name, label) not in writer.done}
    report.already.extend(key for key in wanted if key in writer.done)
    skipped: dict[str, str] = {}
    try:
        found = embed_regions(
            model, name, str(mask), regions, pool=writer.settings["pool"], patch_size=writer.settings["patch_size"],
            overlap=writer.settings["overlap"], batch_size=batch_size, preprocess=preprocess,
            crop_size=writer.settings["crop_size"], progress=False, skipped=skipped,
        )  # fmt: skip
        for region, result in found.items():
            check_vector(name, result.embedding, f" (region {region!r})")
    except Exception as err:  # noqa: BLE001 -- one scan's failure of any kind must not cost the others
        writer.release(name)
        reason = err.problem if isinstance(err, InvalidScanError) else _one_line(err)
        logger.warning("skipping %s: %s", name, reason)
        report.skipped.append((name, reason))
        return
    except BaseException:
        writer.release(name)
        raise
    for region, reason in skipped.items():
        logger.warning("skipping region %r of %s: %s", region, name, reason)
        report.skipped.append((region_key(name, region), reason))
    series = series_uid(name)
    for region, result in found.items():
        writer.add_region(name, region, result, str(Path(mask).resolve()), series)
        report.embedded_paths.append(region_key(name, region))
    if not found:
        writer.release(name)
    if writer.full:
        writer.flush(report)


def check_vector(scan: str | Path, vector: torch.Tensor, what: str = "") -> None:
    """Refuse a vector without direction (NaN, inf, all zeros): InvalidScanError naming the scan."""
    if not torch.isfinite(vector).all():
        bad = int((~torch.isfinite(vector)).sum())
        raise InvalidScanError(scan, f"its embedding{what} has {bad} non-finite values (NaN in the model's weights?)")
    if not vector.any():
        raise InvalidScanError(scan, f"its embedding{what} is all zeros: no direction to compare it by")


def series_uid(path: str | Path) -> str | None:
    """The scan's DICOM SeriesInstanceUID, so its row joins back to idc-index: from one header of a DICOM folder,
    or from the JSON sidecar ``ctfm idc convert`` writes beside a NIfTI; None when neither says."""
    path = Path(path)
    try:
        if path.is_dir():
            import pydicom
            from pydicom.errors import InvalidDicomError

            for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
                try:
                    uid = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).get(
                        "SeriesInstanceUID"
                    )
                except InvalidDicomError:
                    continue
                return str(uid) if uid else None
            return None
        sidecar = path.with_name(output_name(path) + ".json")
        uid = json.loads(sidecar.read_text(encoding="utf-8")).get("SeriesInstanceUID") if sidecar.is_file() else None
        return str(uid) if uid else None
    except Exception:  # noqa: BLE001 -- the scan was read already; a header or sidecar we cannot read only loses the id
        return None


def embed_scan(
    model: nn.Module, scan: str | Path, settings: dict[str, Any], preprocess: CTPreprocessing, batch_size: int = 4
) -> PatchEmbeddings:
    """Check, preprocess and embed one scan as a table with ``settings`` does; a degenerate scan or a vector
    without direction (all zeros, NaN) raises InvalidScanError naming it."""
    volume = preprocess_checked(scan, preprocess)
    if settings.get("mode", "tiled") == "whole":
        result = whole_volume_patch(model, volume, settings.get("crop_size"))
    else:
        result = embed_patches(
            model,
            volume,
            patch_size=settings["patch_size"],
            overlap=settings["overlap"],
            batch_size=batch_size,
            preprocess=None,
            progress=False,
        )
    check_vector(scan, result.embeddings)
    check_vector(scan, result.reduce(settings["reduction"]))
    return result


def whole_volume_patch(model: nn.Module, volume: torch.Tensor, size: Sequence[int] | None) -> PatchEmbeddings:
    """One whole-volume forward pass as a single "patch" centred on the volume, so a table row is made alike."""
    box = whole_volume_box(volume.shape[1:], size)
    centre = (torch.tensor(volume.shape[1:], dtype=torch.float64) - 1) / 2
    affine = volume.affine.double() if isinstance(volume, MetaTensor) else torch.eye(4, dtype=torch.float64)
    centre_mm = (torch.cat([centre, torch.ones(1, dtype=torch.float64)]) @ affine.T)[:3]
    return PatchEmbeddings(embed_whole_volume(model, volume, size)[None], centre[None], centre_mm[None], tuple(box))


def corpus_preprocessing(
    patch_size: Sequence[int], native_spacing: bool = False, model: nn.Module | None = None
) -> CTPreprocessing:
    """The preprocessing of a corpus table: the model's own (its spec's; CT-FM's without one), padded to a patch,
    at native spacing with ``native_spacing`` -- so a table embeds each scan as ``ctfm.embed`` does."""
    base = model_defaults(model, None, FROM_MODEL)[1] if model is not None else None
    base = base or CTPreprocessing()
    return dataclasses.replace(base, spacing=None if native_spacing else base.spacing, min_size=tuple(patch_size))


def embed_like_table(scan: str | Path, settings: dict[str, Any], model: nn.Module | None = None) -> np.ndarray:
    """Embed ``scan`` exactly as the table's scans were: its model (checked by fingerprint) and settings."""
    if model is None:
        from ctfm.hub import load

        model = load(settings["model"])
    if settings.get("pool") is not None:
        raise TableMismatchError(f"{scan}: the table holds regions of scans; embed the query's region with a mask")
    if model_fingerprint(model) != settings["model_sha256"]:
        raise TableMismatchError(f"{scan}: the query model differs from the table's ({settings['model']!r})")
    result = embed_scan(model, scan, settings, preprocessing_of(settings))
    return result.reduce(settings["reduction"]).numpy().astype(np.float32)
