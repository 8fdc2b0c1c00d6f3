"""Corpus embedding as a Lighter module: ``lighter predict lighter_configs/embed.yaml`` on one device or many.

Each rank embeds its share of the datalist and appends its own parts to the one table folder (part names carry the
rank); the folder is the merged table, which ``ctfm search`` and pandas read as one. A re-run skips scans already
in the table, exactly as ``ctfm embed`` does, and a table made with another model or settings is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lighter import LighterModule
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ctfm.embedding import Reduction
from ctfm.embedding_table import EmbeddingReport, TableWriter, corpus_preprocessing, embed_into, table_settings
from ctfm.transforms.preprocess import PATCH_SIZE


class CorpusEmbedding(LighterModule):
    """``predict_step`` embeds each scan path of its batch into the table ``out`` (see :mod:`ctfm.embedding_table`).

    Args:
        network: the encoder (``ctfm.load(...)``); ``model_name`` is what the table's metadata calls it.
        out: the table's folder.
        model_name: the model's name in the table's metadata.
        patch_size: the tile size (z, y, x) in voxels.
        overlap: overlap of neighbouring tiles, in [0, 1).
        reduce: how the tiles' embeddings become the scan's (``"mean"``, ``"max"``).
        batch_size: tiles per forward pass.
        native_spacing: embed at the scan's own spacing instead of resampling.
        patches: also write one row per tile.
        scans_per_part: scans per part file of the table.
    """

    def __init__(
        self,
        network: nn.Module,
        out: str | Path,
        model_name: str,
        patch_size: Sequence[int] = PATCH_SIZE,
        overlap: float = 0.0,
        reduce: Reduction = "mean",
        batch_size: int = 4,
        native_spacing: bool = False,
        patches: bool = False,
        scans_per_part: int = 16,
    ):
        super().__init__(network=network)
        self.out = Path(out)
        self.model_name = model_name
        self.patch_size = tuple(int(p) for p in patch_size)
        self.overlap = overlap
        self.reduce: Reduction = reduce
        self.patches_per_forward = batch_size
        self.native_spacing = native_spacing
        self.keep_patches = patches
        self.scans_per_part = scans_per_part
        self.report = EmbeddingReport(out=self.out)
        self._writer: TableWriter | None = None

    def on_predict_start(self) -> None:
        self.network.eval()
        preprocess = corpus_preprocessing(self.patch_size, self.native_spacing, self.network)
        settings = table_settings(
            self.network, self.model_name, preprocess, self.patch_size, self.overlap, self.reduce, self.keep_patches
        )
        prefix = f"part-rank{self.global_rank}"
        self._writer = TableWriter(self.out, settings, self.scans_per_part, prefix=prefix)
        self._preprocess = preprocess

    def predict_step(self, batch: list[str], batch_idx: int) -> list[str]:
        """Embed the batch's scans into the table; returns their paths (a step returning None makes Lightning warn)."""
        assert self._writer is not None
        try:
            for path in batch:
                embed_into(self._writer, self.report, self.network, path, self._preprocess, self.patches_per_forward)
        except BaseException:  # Ctrl-C (Lightning calls no module hook then): write the scans embedded so far
            self._writer.close(self.report)
            raise
        return batch

    def on_predict_end(self) -> None:
        if self._writer is not None:
            self._writer.close(self.report)
        rank_zero_info(f"rank {self.global_rank}: {self.report.summary()}")
