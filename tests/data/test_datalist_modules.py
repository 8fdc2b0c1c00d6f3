"""Every cache-based datalist module (pretraining, diffusion, low-dose) on one datalist with a blank row, a missing
scan and a corrupt scan among good ones: set-up names the lines, and a cached file spoiled after preparation is
skipped and counted during training."""

import logging

import pandas as pd
import pytest

from ctfm.data.diffusion import DiffusionDataModule
from ctfm.data.low_dose import LowDoseDataModule
from ctfm.data.pretrain import CTPretrainDataModule

BASE_LOG = "ctfm.data.base"


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    """Four good scans (lines 2-5: train, train, val, test), a blank image (6), a missing (7), a corrupt scan (8)."""
    from ctfm.data.sample import make_sample_dataset

    csv = make_sample_dataset(tmp_path_factory.mktemp("data"), n_scans=4, shape=(24, 64, 64), seed=0)
    table = pd.read_csv(csv)[["image"]]
    corrupt = csv.parent / "corrupt.nii.gz"
    corrupt.write_bytes((csv.parent / table["image"][0]).read_bytes()[:300])
    table = pd.concat([table, pd.DataFrame({"image": [None, "gone.nii.gz", "corrupt.nii.gz"]})], ignore_index=True)
    table["split"] = ["train", "train", "val", "test", "train", "train", "train"]
    table.to_csv(csv, index=False)
    return csv


MODULES = {
    "pretrain": lambda csv, cache: CTPretrainDataModule(
        csv, cache_dir=cache, patch_size=(8, 32, 32), patches_per_scan=2, scans_per_device=2, steps_per_epoch=3,
        num_workers=0,
    ),
    "diffusion": lambda csv, cache: DiffusionDataModule(
        csv, 2, (32, 32), batch_size=2, cache_dir=cache, steps_per_epoch=3, num_workers=0
    ),
    "low_dose": lambda csv, cache: LowDoseDataModule(
        csv, 2, (32, 32), batch_size=2, sigma=30.0, cache_dir=cache, steps_per_epoch=3, val_cases=2, num_workers=0
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODULES))
def test_bad_rows_are_named_and_a_spoiled_cache_file_is_skipped_and_counted(name, datalist, tmp_path, caplog):
    module = MODULES[name](datalist, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger=BASE_LOG):
        module.setup("fit")
    assert f"{datalist}: line 6: no 'image' value; skipped" in caplog.text
    assert f"{datalist}: line 7: image {datalist.parent / 'gone.nii.gz'} does not exist; skipped" in caplog.text
    train = module.train_dataset if name != "low_dose" else module.datasets["train"]
    scans = train.dataset.scans
    sources = {scan.source for scan in scans}
    assert str(datalist.parent / "corrupt.nii.gz") not in sources  # the cache's report names it
    spoiled = scans[0]
    spoiled.array_path.write_bytes(spoiled.array_path.read_bytes()[:100])  # truncated after preparation
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=BASE_LOG):
        batches = list(module.train_dataloader())
        module.teardown("fit")
    assert len(batches) == 3
    assert module.skipped_items() == [spoiled.source]
    assert f"skipping {spoiled.source}: its cached file {spoiled.array_path} is unreadable" in caplog.text
    assert f"1 items skipped because they failed to load (see the warnings above): {spoiled.source}" in caplog.text
