"""Preprocess each scan once into a memory-mappable array, so pretraining reads only the patches it samples.

Loading a ``.nii.gz``, reorienting and resampling it costs seconds per scan; sampling 20 patches from a cached array
costs milliseconds. Each scan becomes ``<root>/<key[:2]>/<key>.npy`` (``(1, z, y, x)``, uncompressed, so
``np.load(mmap_mode="r")`` maps it without reading it) with ``<key>.json`` beside it (source, geometry, settings).

Values are [0, 1] stored as uint16 (x 65535): the same two bytes per voxel as float16, but a uniform step of
1/65535 = 0.05 HU over the whole [-1024, 2048] HU range, where float16 steps are up to 1.5 HU near bone and
0.75 HU in soft tissue; air (0) and the range's top (1) stay exact.

The key hashes the resolved source path, its size and modification time, the preprocessing settings and
:data:`CACHE_VERSION`, so a changed scan or setting never reads a stale entry. Files are written under a temporary
name and renamed (``os.replace`` is atomic), the ``.json`` last: an entry is either complete or absent, which makes
several DataLoader workers, DDP ranks or ``ctfm prepare`` runs safe on one cache. A scan that cannot be used gets a
``<key>.failed.json`` with the reason, so later runs skip it without reading it again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from tqdm.auto import tqdm

from ctfm.atomic import write_atomically
from ctfm.errors import InvalidScanError
from ctfm.io.reader import read_ct
from ctfm.reports import ReportRow, RunReport
from ctfm.transforms.preprocess import CTPreprocessing
from ctfm.transforms.quantise import QUANTISATION_MAX, quantise

logger = logging.getLogger(__name__)

#: Bumped whenever the cached arrays would differ for the same source and settings.
CACHE_VERSION = 1
#: The body must span at least this fraction of a patch along every axis, or the scan is too small to pretrain on.
MIN_BODY_FRACTION = 0.5
#: Finer voxels than this are no CT scanner's (micro-CT aside): a header whose spacing is wrong, e.g. in metres.
MIN_SPACING_MM = 0.05
#: Resampling to more voxels than this (4 GB as float32) is refused before it is tried: a header with a wrong
#: spacing or a huge field of view, which would otherwise end in a MemoryError after minutes.
MAX_RESAMPLED_VOXELS = 1_000_000_000


def check_geometry(source: str | Path, scan: MetaTensor, preprocessing: CTPreprocessing) -> None:
    """Reject voxel sizes no CT has, and scans whose resampled grid would not fit in memory, before resampling."""
    spacing = np.linalg.norm(np.asarray(scan.affine, dtype=np.float64)[:3, :3], axis=0)
    shown = ", ".join(f"{s:g}" for s in spacing)
    if spacing.min() < MIN_SPACING_MM:
        raise InvalidScanError(
            source, f"voxel spacing ({shown}) mm is finer than {MIN_SPACING_MM} mm: no CT's (a wrong header?)"
        )
    if preprocessing.spacing is not None:
        extent_mm = np.asarray(scan.shape[1:], dtype=np.float64) * spacing
        voxels = float(np.prod(extent_mm) / np.prod(preprocessing.spacing))
        if voxels > MAX_RESAMPLED_VOXELS:
            raise InvalidScanError(
                source,
                f"resampling its {tuple(scan.shape[1:])} voxels of ({shown}) mm to {preprocessing.spacing} mm would "
                f"make {voxels:.3g} voxels (limit {MAX_RESAMPLED_VOXELS:.0e}): a wrong header spacing?",
            )


def check_body(
    source: str | Path, volume: np.ndarray, preprocessing: CTPreprocessing, min_body_fraction: float = MIN_BODY_FRACTION
) -> None:
    """Reject scans with no body, or too little of it to cut meaningful patches from."""
    body = volume[0] > preprocessing.body_threshold
    extent = []
    for axis in range(3):
        hits = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        extent.append(int(hits[-1] - hits[0] + 1) if hits.size else 0)
    needed = [int(np.ceil(min_body_fraction * size)) for size in preprocessing.min_size]
    if not any(extent):
        raise InvalidScanError(
            source, f"no voxel above {preprocessing.body_threshold_hu} HU: nothing to crop to (empty scan)"
        )
    if any(e < n for e, n in zip(extent, needed)):
        raise InvalidScanError(
            source,
            f"too small after cropping: the body spans {tuple(extent)} voxels (z, y, x), pretraining needs at "
            f"least {tuple(needed)} (half a {tuple(preprocessing.min_size)} patch)",
        )


def preprocess_checked(
    source: str | Path, preprocessing: CTPreprocessing, min_body_fraction: float = MIN_BODY_FRACTION
) -> MetaTensor:
    """Read, check and preprocess one scan: the checks ``ctfm prepare`` and ``ctfm embed`` share.

    Raises InvalidScanError naming ``source`` for an unreadable file, a voxel size no CT has, a resampled grid too
    large for memory, or too little body to cut a patch from (all air, a few voxels).
    """
    scan = read_ct(source, check_hu=preprocessing.check_hu)
    check_geometry(source, scan, preprocessing)
    volume = preprocessing(scan)
    check_body(source, volume.numpy(), preprocessing, min_body_fraction)
    return volume


def default_cache_dir(datalist: str | Path | None = None) -> Path:
    """``$CTFM_CACHE_DIR`` if set; else ``ctfm_cache/`` beside the datalist CSV; else ``~/.cache/ctfm/preprocessed``."""
    if os.environ.get("CTFM_CACHE_DIR"):
        return Path(os.environ["CTFM_CACHE_DIR"]).expanduser()
    if datalist is not None:
        return Path(datalist).expanduser().absolute().parent / "ctfm_cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctfm" / "preprocessed"


def source_fingerprint(source: str | Path) -> dict[str, object]:
    """What identifies a source's content cheaply: resolved path, size and mtime (for a folder: its entries)."""
    path = Path(source).expanduser().resolve()
    try:
        stat = path.stat()
        if path.is_dir():  # a DICOM series: files are added or removed, not rewritten in place
            return {"path": str(path), "entries": len(os.listdir(path)), "mtime_ns": stat.st_mtime_ns}
    except OSError as err:
        raise InvalidScanError(source, "no such file or directory" if not path.exists() else str(err)) from err
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_json(path: Path, content: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(content, indent=1)))


@dataclass(frozen=True)
class CachedScan:
    """One complete cache entry: the source it came from and the files holding it."""

    source: str
    array_path: Path

    @property
    def meta_path(self) -> Path:
        return self.array_path.with_suffix(".json")

    def load(self, mmap: bool = True) -> np.ndarray:
        """The uint16 ``(1, z, y, x)`` array, memory-mapped by default (nothing is read until sliced)."""
        return np.load(self.array_path, mmap_mode="r" if mmap else None, allow_pickle=False)

    def read(self) -> np.ndarray:
        """:meth:`load` (memory-mapped), with a missing, truncated or overwritten file an InvalidScanError naming the
        source, so a training run can skip it (:class:`~ctfm.data.base.SkipBadItems`)."""
        try:
            return self.load(mmap=True)
        except (OSError, ValueError, EOFError) as err:
            raise InvalidScanError(self.source, f"its cached file {self.array_path} is unreadable: {err}") from err

    def metadata(self) -> dict:
        """Geometry and provenance: source, shape, spacing, affine (RAS mm), preprocessing settings."""
        return json.loads(self.meta_path.read_text())


@dataclass
class PrepareReport(RunReport):
    """What :meth:`PreprocessCache.prepare` did; ``scans`` lists the usable entries in input order."""

    STATUSES = {"prepared": "prepared", "cached": "already cached", "skipped": "skipped"}
    PROBLEMS = frozenset({"skipped"})
    ITEM_COLUMN = "image"

    scans: list[CachedScan] = field(default_factory=list)
    prepared: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(source, "prepared") for source in self.prepared),
            *(ReportRow(source, "cached") for source in self.cached),
            *(ReportRow(source, "skipped", reason) for source, reason in self.skipped.items()),
        ]


@dataclass(frozen=True)
class PreprocessCache:
    """A folder of preprocessed scans for one set of preprocessing settings."""

    root: Path
    preprocessing: CTPreprocessing = CTPreprocessing()
    min_body_fraction: float = MIN_BODY_FRACTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    def key(self, source: str | Path) -> str:
        """Hash of the source's identity and every setting that changes the cached array."""
        return self._key(source_fingerprint(source))

    def _key(self, fingerprint: dict[str, object]) -> str:
        material = {
            "version": CACHE_VERSION,
            "source": fingerprint,
            "preprocessing": dataclasses.asdict(self.preprocessing),
            "min_body_fraction": self.min_body_fraction,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]

    def array_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def failure_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.failed.json"

    def lookup(self, source: str | Path) -> CachedScan | None:
        """The complete entry for ``source`` as it is now, or None."""
        return self._entry(self.key(source), source)

    def _entry(self, key: str, source: str | Path) -> CachedScan | None:
        array_path = self.array_path(key)
        if array_path.with_suffix(".json").is_file() and array_path.is_file():
            return CachedScan(str(source), array_path)
        return None

    def _failure(self, key: str) -> str | None:
        try:
            return json.loads(self.failure_path(key).read_text())["problem"]
        except (OSError, ValueError, KeyError):
            return None

    def write(self, source: str | Path) -> CachedScan:
        """Preprocess ``source`` and store it; raises InvalidScanError (and records it) if the scan is unusable."""
        fingerprint = source_fingerprint(source)
        key = self._key(fingerprint)
        array_path = self.array_path(key)
        array_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            volume = preprocess_checked(source, self.preprocessing, self.min_body_fraction)
        except InvalidScanError as err:
            _write_json(self.failure_path(key), {"source": str(source), "problem": err.problem})
            raise
        quantised = quantise(volume.numpy())
        affine = np.asarray(volume.affine, dtype=np.float64)
        meta = {
            "version": CACHE_VERSION,
            "source": str(source),
            "fingerprint": fingerprint,
            "shape": list(quantised.shape),
            "spacing": np.linalg.norm(affine[:3, :3], axis=0).round(6).tolist(),
            "affine": affine.tolist(),
            "dtype": "uint16",
            "scale": 1.0 / QUANTISATION_MAX,
            "preprocessing": dataclasses.asdict(self.preprocessing),
        }
        write_atomically(array_path, lambda tmp: np.save(tmp, quantised, allow_pickle=False))
        _write_json(array_path.with_suffix(".json"), meta)
        self.failure_path(key).unlink(missing_ok=True)
        return CachedScan(str(source), array_path)

    def prepare(
        self,
        sources: Iterable[str | Path],
        workers: int = 1,
        progress: bool = True,
        retry_failed: bool = False,
    ) -> PrepareReport:
        """Cache every source not cached yet, ``workers`` scans at a time; never stops for a bad scan.

        Unusable scans are skipped, logged and listed in the report with their reason; scans that failed before
        (same file, same settings) are skipped without being read again unless ``retry_failed``.
        """
        names = [str(source) for source in sources]
        report = PrepareReport()
        done: dict[str, CachedScan] = {}
        todo: dict[str, str] = {}  # key -> first source with that key
        keys: dict[str, str] = {}
        for source in names:
            try:
                key = keys[source] = self.key(source)
            except InvalidScanError as err:
                report.skipped[source] = err.problem
                continue
            if key in done or key in todo:
                continue
            entry = self._entry(key, source)
            reason = None if retry_failed else self._failure(key)
            if entry is not None:
                done[key] = entry
                report.cached.append(source)
            elif reason is not None:
                report.skipped[source] = reason
            else:
                todo[key] = source
        for source, outcome in self._run(list(todo.values()), workers, progress):
            if isinstance(outcome, CachedScan):
                done[keys[source]] = outcome
                report.prepared.append(source)
            else:
                logger.warning("skipping %s: %s", source, outcome)
                report.skipped[source] = outcome
        for source in names:
            found = keys.get(source)
            if found is not None and found in done:
                report.scans.append(dataclasses.replace(done[found], source=source))
            elif source not in report.skipped:  # a duplicate of a skipped scan
                report.skipped[source] = report.skipped[todo.get(found, source) if found else source]
        return report

    def _run(self, sources: Sequence[str], workers: int, progress: bool):
        """Yield ``(source, CachedScan or reason)`` as each scan finishes."""
        bar = tqdm(total=len(sources), desc="Preprocessing scans", unit="scan", disable=not progress or not sources)
        with bar:
            if workers <= 1 or len(sources) <= 1:
                for source in sources:
                    yield source, _prepare_one(self, source)
                    bar.update()
                return
            context = multiprocessing.get_context("spawn")  # no fork of a process holding threads (torch, tqdm)
            with concurrent.futures.ProcessPoolExecutor(
                min(workers, len(sources)), mp_context=context, initializer=_init_worker
            ) as pool:
                futures = {pool.submit(_prepare_one, self, source): source for source in sources}
                for future in concurrent.futures.as_completed(futures):
                    try:
                        outcome = future.result()
                    except concurrent.futures.process.BrokenProcessPool:
                        outcome = "a preprocessing process died (out of memory?)"
                    yield futures[future], outcome
                    bar.update()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one scan per process and core


def _prepare_one(cache: PreprocessCache, source: str) -> CachedScan | str:
    """Cache one scan; the reason as a string if it cannot be used (a worker must not raise for a bad scan)."""
    try:
        return cache.write(source)
    except InvalidScanError as err:
        return err.problem
    except Exception as err:  # noqa: BLE001 - one bad scan must not end a run over thousands
        logger.debug("preprocessing %s failed", source, exc_info=True)
        cause: BaseException = err
        while cause.__cause__ is not None:  # MONAI wraps the real error in "applying transform ..."
            cause = cause.__cause__
        return f"preprocessing failed: {type(cause).__name__}: {cause}"
