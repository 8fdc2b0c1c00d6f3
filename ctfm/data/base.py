"""The base of every datalist-driven data module: bad rows found at set-up, bad items skipped at run time.

One mechanism for all of them, so a bad scan behaves the same in pretraining, segmentation and classification:

- At set-up, :meth:`DatalistDataModule.check_rows` reads the table once. A CSV whose structure is wrong (a missing
  column, a split value other than train / val / test) stops set-up with a :class:`DatalistError` naming the CSV,
  its line and the problem. A row that cannot be used (its file is missing, its label is blank or unknown) is left
  out, with one warning line naming the CSV line, and counted: a blank label never becomes a training target.
  Lines are CSV line numbers: the header is line 1, the first data row line 2.
- At run time, every dataset is wrapped in :class:`SkipBadItems`: an item whose file fails to load is logged once
  with its file and problem, flagged in shared memory (so DataLoader workers count too), and replaced by the next
  item in training or dropped from its batch in evaluation (:func:`collate_good`), so metrics are computed over the
  good items only. :meth:`DatalistDataModule.teardown` reports ``N items skipped: ...`` once, on rank 0.
- Per-rank seeding of random datasets and the DataLoader settings live here too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from monai.data.utils import list_data_collate, set_rnd
from monai.utils import MAX_SEED
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Sampler

from ctfm.data.datalist import DatalistError, csv_line, label_key
from ctfm.errors import CTFMError, InvalidScanError

logger = logging.getLogger(__name__)

#: Errors that are bugs in the code, not bad data: raised, never skipped.
_CODE_ERRORS = (TypeError, AttributeError, NameError, ImportError, NotImplementedError, AssertionError, MemoryError)


def require_datalist(datalist: Any, columns: str = "a CSV with an 'image' column") -> None:
    """Refuse a recipe run without ``vars::datalist``, saying what the CSV holds."""
    if datalist is None:
        raise CTFMError(f"no datalist given: set vars::datalist=path/to/datalist.csv ({columns})")


def load_problem(err: BaseException) -> str | None:
    """Why an item failed to load, or None when ``err`` is a bug to raise rather than bad data to skip.

    The InvalidScanError behind ``err`` gives the problem (MONAI wraps transform errors in RuntimeErrors);
    otherwise the innermost cause does (a truncated gzip, a damaged NIfTI header).
    """
    cause: BaseException | None = err
    innermost = err
    while cause is not None:
        if isinstance(cause, InvalidScanError):
            return cause.problem
        innermost = cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(innermost, _CODE_ERRORS):
        return None
    return f"{type(innermost).__name__}: {innermost}"


class ItemSkips:
    """Which items of a dataset failed to load: one shared-memory flag per item, so DataLoader workers count too."""

    def __init__(self, names: Sequence[str]):
        self.names = [str(n) for n in names]
        self._index: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):  # a scan listed twice is one file: flagged everywhere at once
            self._index.setdefault(name, []).append(i)
        self.flags = torch.zeros(len(self.names), dtype=torch.uint8).share_memory_()
        self.reasons: dict[str, str] = {}  # this process's only: the warnings name the others

    def mark(self, position: int, err: BaseException, problem: str) -> str:
        """Flag the item ``err`` names (an InvalidScanError's path), else the one at ``position``; its name."""
        path = getattr(_scan_error(err), "path", None)
        name = self.names[position % max(1, len(self.names))] if str(path) not in self._index else str(path)
        self.flags[self._index[name]] = 1
        if name not in self.reasons:
            self.reasons[name] = problem
            shown = name if path is None or str(path) == name else f"{name} ({path})"
            logger.warning("skipping %s: %s", shown, problem)
        return name

    def skipped(self) -> list[str]:
        """Names of the items flagged so far, in dataset order, over all processes of this rank."""
        return [self.names[i] for i in torch.nonzero(self.flags).flatten().tolist()]

    def all_bad(self) -> bool:
        return bool(self.flags.all())


class SkipBadItems(Dataset):
    """A map-style ``dataset`` whose items that fail to load are skipped instead of ending the run.

    ``names[i]`` is the file behind item ``i`` (for datasets drawing at random, the scans they draw from, which
    their errors name). A failed item is logged once, flagged in ``skips``, and replaced by the next item
    (``substitute``, training: batches keep their size) or returned as None (evaluation: :func:`collate_good`
    drops it, so each file is scored once or not at all).
    """

    def __init__(self, dataset: Any, names: Sequence[str], substitute: bool):
        self.dataset = dataset
        self.skips = ItemSkips(names)
        self.substitute = substitute

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # set_random_state and the like reach the wrapped dataset
        if name.startswith("__") or name in ("dataset", "skips", "substitute"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        position = index
        while True:
            try:
                return self.dataset[position]
            except Exception as err:  # noqa: BLE001 - bad data is skipped; a bug (load_problem None) is raised
                problem = load_problem(err)
                if problem is None:
                    raise
                self.skips.mark(position, err, problem)
                if not self.substitute:
                    return None
                if self.skips.all_bad():
                    raise CTFMError(
                        f"none of the {len(self.skips.names)} items can be loaded (see the warnings above); "
                        f"the last: {problem}"
                    ) from err
                position = (position + 1) % len(self)


def _scan_error(err: BaseException) -> InvalidScanError | None:
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, InvalidScanError):
        cause = cause.__cause__ or cause.__context__
    return cause


def collate_good(batch: list[Any]) -> Any:
    """MONAI's ``list_data_collate`` of the items that loaded; None when none did (the step then skips the batch)."""
    good = [item for item in batch if item is not None]
    return list_data_collate(good) if good else None


def _seed_worker(seed: int, rank: int, worker_id: int) -> None:
    """Give every DataLoader worker of every rank its own random stream, new for each epoch's fresh workers.

    ``set_rnd`` seeds the dataset itself when it draws at random, else the random transforms it holds.
    """
    info = torch.utils.data.get_worker_info()
    assert info is not None, "worker_init_fn runs in DataLoader workers only"
    entropy = np.random.SeedSequence([seed, rank, info.seed % MAX_SEED]).generate_state(1)[0]
    set_rnd(info.dataset, seed=int(entropy) % MAX_SEED)


class DatalistDataModule(pl.LightningDataModule):
    """What every datalist-driven data module shares: row checks, skipping of bad items, seeding, loaders.

    Subclasses read their table with :meth:`check_rows`, wrap each dataset with :meth:`skipping` and build loaders
    with :meth:`loader`; :meth:`teardown` reports what was skipped. ``seed`` seeds the random datasets, a different
    stream per rank and per DataLoader worker.
    """

    def __init__(self, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.num_workers = num_workers
        self.seed = seed
        self.rows_skipped: list[str] = []
        self._wrapped: dict[str, SkipBadItems] = {}
        self._reported: set[str] = set()

    # ---- set-up
    def check_rows(
        self,
        table: pd.DataFrame,
        csv: str | Path,
        *,
        file_columns: Sequence[str] = ("image",),
        label_column: str | None = None,
        known_labels: Iterable[Any] | None = None,
        required: Sequence[str] = (),
    ) -> pd.DataFrame:
        """``table`` without its unusable rows, each reported in one warning line naming the CSV line.

        ``required`` (and ``file_columns``) columns must exist (else :class:`DatalistError`). A row is left out
        when a ``file_columns`` path does not exist, or, with ``label_column``, when its label is blank or not in
        ``known_labels``. Paths must already be absolute and row ``i`` must be CSV line ``i + 2``
        (``read_datalist(csv, keep_blank=True)`` gives both).
        """
        missing = [c for c in dict.fromkeys((*required, *file_columns)) if c not in table.columns]
        if missing:
            raise DatalistError(
                f"{csv}: no column {', '.join(repr(c) for c in missing)}; found columns {list(table.columns)}"
            )
        known = None if known_labels is None else {label_key(v) for v in known_labels}
        keep = []
        for index, row in table.iterrows():
            problem = None
            if label_column is not None:
                value = row[label_column]
                if pd.isna(value) or not str(value).strip():
                    problem = f"no {label_column!r} value"
                elif known is not None and label_key(value) not in known:
                    problem = f"{label_column} {value!r} is not one of {sorted(known, key=str)}"
            for column in file_columns if problem is None else ():
                if pd.isna(row[column]) or not str(row[column]).strip():
                    problem = f"no {column!r} value"
                    break
                if not Path(str(row[column])).exists():
                    problem = f"{column} {row[column]} does not exist"
                    break
            if problem is None:
                keep.append(index)
            else:
                self.skip_row(csv, int(index), problem)
        if not keep:
            raise DatalistError(f"{csv}: no usable row (see the warnings above)")
        return table.loc[keep]

    def skip_row(self, csv: str | Path, index: int, problem: str) -> None:
        """Leave table row ``index`` out, with one warning line naming the CSV line and the problem."""
        self.skip_entry(f"{csv}: line {csv_line(index)}", problem)

    def skip_entry(self, where: str, problem: str) -> None:
        """Leave an entry out (``where``: ``meta.csv: line 4``, ``dataset.json: training[2]``), in one warning line."""
        line = f"{where}: {problem}; skipped"
        self.rows_skipped.append(line)
        _warn(line)

    # ---- run time
    def skipping(self, split: str, dataset: Any, names: Sequence[str]) -> SkipBadItems:
        """``dataset`` wrapped so a bad item is skipped: replaced in ``train``, dropped from its batch otherwise."""
        wrapped = SkipBadItems(dataset, names, substitute=split == "train")
        self._wrapped[split] = wrapped
        return wrapped

    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def rank_seed(self) -> int:
        """This rank's seed: every rank draws different items."""
        return int(np.random.SeedSequence([self.seed, self.rank()]).generate_state(1)[0]) % MAX_SEED

    def loader(
        self,
        dataset: SkipBadItems,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        sampler: Sampler | None = None,
        collate: Callable[[list[Any]], Any] = collate_good,
        persistent_workers: bool = True,
    ) -> DataLoader:
        """A DataLoader of ``dataset`` with the shared settings: bad items dropped, workers seeded per rank.

        Without workers the dataset (or its random transforms) is seeded here with :meth:`rank_seed`.
        ``persistent_workers=False`` frees the workers (and what they hold) after each pass.
        """
        if not self.num_workers:
            set_rnd(dataset, seed=self.rank_seed())
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=drop_last,
            collate_fn=collate,
            worker_init_fn=functools.partial(_seed_worker, self.seed, self.rank()) if self.num_workers else None,
            persistent_workers=persistent_workers and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def skipped_items(self) -> list[str]:
        """Files that failed to load so far in this rank, over every split."""
        return [name for wrapped in self._wrapped.values() for name in wrapped.skips.skipped()]

    def teardown(self, stage: str | None = None) -> None:
        """Report once (rank 0) the items that failed to load since the last report."""
        new = [name for name in dict.fromkeys(self.skipped_items()) if name not in self._reported]
        self._reported.update(new)
        if new:
            shown = ", ".join(new[:10]) + (f" and {len(new) - 10} more" if len(new) > 10 else "")
            _warn(f"{len(new)} items skipped because they failed to load (see the warnings above): {shown}")


@rank_zero_only
def _warn(message: str) -> None:
    logger.warning(message)
