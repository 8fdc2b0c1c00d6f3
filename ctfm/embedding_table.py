"""Embed many scans into one table, skipping and reporting the ones that cannot be read."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ctfm.atomic import write_atomically
from ctfm.embedding import Reduction, embed
from ctfm.errors import InvalidScanError
from ctfm.reports import ReportRow, RunReport
from ctfm.transforms.preprocess import PATCH_SIZE, PRETRAINING_SPACING, CTPreprocessing

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingReport(RunReport):
    """What a corpus run did: the table it wrote, the scans in it, and each scan it skipped with the reason."""

    STATUSES = {"embedded": "embedded", "skipped": "skipped"}
    PROBLEMS = frozenset({"skipped"})
    ITEM_COLUMN = "path"

    out: Path
    embedded_paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def embedded(self) -> int:
        """Rows of the table."""
        return len(self.embedded_paths)

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(path, "embedded") for path in self.embedded_paths),
            *(ReportRow(path, "skipped", reason) for path, reason in self.skipped),
        ]

    def headline(self) -> str:
        return super().headline() + (f"; table: {self.out}" if self.embedded else "; no table written")


def embed_to_parquet(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    model: str | nn.Module = "ct-fm",
    reduce: Reduction = "mean",
    overlap: float = 0.0,
    batch_size: int = 4,
    patch_size: Sequence[int] = PATCH_SIZE,
    device: str = "cpu",
    native_spacing: bool = False,
) -> EmbeddingReport:
    """Embed each scan and write ``path, embedding`` rows to ``out`` (Parquet, written atomically)."""
    if isinstance(model, str):
        from ctfm.hub import load

        model = load(model, device=device)
    preprocess = CTPreprocessing(spacing=None if native_spacing else PRETRAINING_SPACING, min_size=tuple(patch_size))
    out = Path(out)
    report = EmbeddingReport(out=out)
    rows = []
    for path in tqdm(list(paths), desc="embedding scans", unit="scan"):
        try:
            vector = embed(
                model,
                path,
                patch_size=patch_size,
                overlap=overlap,
                reduce=reduce,
                batch_size=batch_size,
                preprocess=preprocess,
                progress=False,
            )
        except InvalidScanError as err:
            logger.warning("skipping %s", err)
            report.skipped.append((str(path), err.problem))
            continue
        rows.append({"path": str(path), "embedding": vector.numpy().tolist()})
        report.embedded_paths.append(str(path))
    if rows:
        write_atomically(out, lambda tmp: pd.DataFrame(rows).to_parquet(tmp, index=False))
    return report
