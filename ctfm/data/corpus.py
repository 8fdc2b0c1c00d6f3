"""The scans of a datalist for ``lighter predict`` (corpus embedding): one path an item, split across DDP ranks."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ctfm.data.datalist import read_datalist
from ctfm.errors import CTFMError


class ScanListDataModule(pl.LightningDataModule):
    """Datalist CSV -> batches of one scan path each; Lightning's distributed sampler gives each rank its share.

    Paths stay paths: reading and preprocessing happen in the model's ``predict_step``, where a bad scan is skipped
    and reported instead of failing a DataLoader worker.

    Args:
        datalist: a CSV with an ``image`` column; None is refused naming ``vars::datalist``.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, datalist: str | Path | None, num_workers: int = 0):
        super().__init__()
        if datalist is None:
            raise CTFMError("no datalist given: set vars::datalist=path/to/datalist.csv (a CSV with an 'image' column)")
        self.datalist = datalist
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        paths = read_datalist(self.datalist)["image"].tolist()
        return DataLoader(paths, batch_size=1, shuffle=False, num_workers=self.num_workers, collate_fn=list)
