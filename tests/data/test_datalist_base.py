"""The datalist base every data module shares: bad rows named at set-up, bad items skipped and counted at run time."""

import logging

import pandas as pd
import pytest
import torch
from monai.transforms import LoadImaged

from ctfm.data.base import DatalistDataModule, SkipBadItems, collate_good
from ctfm.data.classification import ClassificationDataModule
from ctfm.data.datalist import UNKNOWN_LABEL, DatalistError, assign_splits, read_datalist
from ctfm.errors import CTFMError, InvalidScanError

BASE_LOG = "ctfm.data.base"


@pytest.fixture
def bad_rows(tmp_path):
    """labels.csv: six good heads, then a blank label (line 8), a missing file (line 9) and a corrupt file (line 10)."""
    from ctfm.data.sample_head import make_head_dataset

    csv = make_head_dataset(tmp_path, n_scans=6, shape=(8, 24, 24), spacing=(5.0, 5.0, 5.0))
    table = pd.read_csv(csv)
    corrupt = tmp_path / "images" / "corrupt.nii.gz"
    corrupt.write_bytes((tmp_path / table["image"][0]).read_bytes()[:200])  # a truncated gzip
    extra = pd.DataFrame(
        {"image": [table["image"][1], "images/gone.nii.gz", "images/corrupt.nii.gz"], "label": [None, 1, 0]}
    )
    table = pd.concat([table, extra], ignore_index=True)
    table["split"] = ["train", "train", "train", "train", "val", "val", "val", "train", "val"]
    table.to_csv(csv, index=False)
    return csv


def load(item):
    return LoadImaged("image", ensure_channel_first=True, image_only=True)(item)


def test_bad_rows_are_named_by_csv_line_and_left_out(bad_rows, caplog):
    module = DatalistDataModule()
    with caplog.at_level(logging.WARNING, logger=BASE_LOG):
        table = module.check_rows(read_datalist(bad_rows), bad_rows, label_column="label", known_labels=[0, 1.0])
    assert len(table) == 7  # the corrupt file exists: it is found when it is loaded
    assert module.rows_skipped == [
        f"{bad_rows}: line 8: no 'label' value; skipped",
        f"{bad_rows}: line 9: image {bad_rows.parent / 'images' / 'gone.nii.gz'} does not exist; skipped",
    ]
    assert all(line in caplog.text for line in module.rows_skipped)
    unknown = module.check_rows(read_datalist(bad_rows), bad_rows, label_column="label", known_labels=["0"])
    assert len(unknown) == 4 and module.rows_skipped[-5].endswith("line 3: label 1.0 is not one of [0.0]; skipped")


def test_a_malformed_datalist_stops_set_up_naming_csv_and_line(bad_rows):
    table = read_datalist(bad_rows)
    with pytest.raises(DatalistError, match=rf"{bad_rows}: no column 'label'; found columns"):
        DatalistDataModule().check_rows(table.drop(columns="label"), bad_rows, required=("label",))
    table.loc[3, "split"] = "dev"
    with pytest.raises(DatalistError, match=rf"{bad_rows}: line 5: split 'dev' is not one of train, val, test"):
        assign_splits(table, bad_rows)
    table["image"] = "/nowhere.nii.gz"
    with pytest.raises(DatalistError, match="no usable row"):
        DatalistDataModule().check_rows(table, bad_rows)


class _Flaky(torch.utils.data.Dataset):
    """Items 0..n-1; ``bad`` ones raise as a damaged file does, ``bug`` ones as broken code does."""

    def __init__(self, n, bad=(), bug=()):
        self.n, self.bad, self.bug = n, set(bad), set(bug)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if index in self.bad:
            raise RuntimeError("applying transform") from EOFError("Compressed file ended before the end-of-stream")
        if index in self.bug:
            raise TypeError("unsupported operand")
        return {"x": torch.tensor(index), "path": f"scan{index}.nii.gz"}


def test_a_bad_item_is_replaced_in_training_and_dropped_in_evaluation(caplog):
    names = [f"scan{i}.nii.gz" for i in range(5)]
    train = SkipBadItems(_Flaky(5, bad={1, 2}), names, substitute=True)
    with caplog.at_level(logging.WARNING, logger=BASE_LOG):
        assert train[1]["x"] == 3 and train[2]["x"] == 3 and train[0]["x"] == 0
    assert train.skips.skipped() == ["scan1.nii.gz", "scan2.nii.gz"]
    assert caplog.text.count("skipping scan1.nii.gz: EOFError: Compressed file ended") == 1  # once per file
    evaluation = SkipBadItems(_Flaky(5, bad={1, 2}), names, substitute=False)
    batches = list(torch.utils.data.DataLoader(evaluation, batch_size=2, collate_fn=collate_good))
    assert [b["x"].tolist() for b in batches] == [[0], [3], [4]]  # each good item once, the bad ones left out
    assert collate_good([None, None]) is None
    with pytest.raises(TypeError, match="unsupported operand"):  # a bug is raised, never skipped
        SkipBadItems(_Flaky(3, bug={0}), names[:3], substitute=True)[0]
    with pytest.raises(CTFMError, match="none of the 2 items can be loaded"):
        SkipBadItems(_Flaky(2, bad={0, 1}), names[:2], substitute=True)[0]


def test_an_error_naming_another_file_flags_that_file():
    class Cached(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):  # draws scan b whatever the index, as random datasets do
            raise InvalidScanError("b.nii.gz", "its cached file is unreadable")

    wrapped = SkipBadItems(Cached(), ["a.nii.gz", "b.nii.gz"], substitute=False)
    assert wrapped[0] is None and wrapped.skips.skipped() == ["b.nii.gz"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skips_in_dataloader_workers_are_counted_and_reported_once(bad_rows, num_workers, caplog):
    data = ClassificationDataModule(bad_rows, load, load, batch_size=2, num_workers=num_workers)
    loaded = list(data.val_dataloader())
    assert loaded[-1] is None  # the batch of the corrupt scan alone: the task skips it
    batches = loaded[:-1]
    paths = [path for batch in batches for path in batch["path"]]
    corrupt = str(bad_rows.parent / "images" / "corrupt.nii.gz")
    assert sorted(paths) == sorted(item["path"] for item in data.items("val") if item["path"] != corrupt)
    assert all(batch["label"].ne(UNKNOWN_LABEL).all() for batch in batches)
    assert data.skipped_items() == [corrupt]
    with caplog.at_level(logging.WARNING, logger=BASE_LOG):
        data.teardown("validate")
        data.teardown("validate")
    assert caplog.text.count(f"1 items skipped because they failed to load (see the warnings above): {corrupt}") == 1


def test_a_blank_label_is_never_a_target_but_is_still_predicted(bad_rows):
    data = ClassificationDataModule(bad_rows, load, load)
    blank = str(bad_rows.parent / "images" / "head_001.nii.gz")
    labelled = [item for split in ("train", "val", "test") for item in data.items(split)]
    assert all(item["label"] != UNKNOWN_LABEL for item in labelled)
    assert [i["label"] for i in data.items("all") if i["image"] == blank] == [1, UNKNOWN_LABEL]
    assert any(line.endswith("line 8: no 'label' value (kept for predict only); skipped") for line in data.rows_skipped)
    train = [path for batch in data.train_dataloader() for path in batch["path"]]
    assert train.count(blank) == 1  # its labelled row only


def test_every_module_is_a_datalist_module():
    from ctfm.data.classification import ClassificationDataModule
    from ctfm.data.diffusion import DiffusionDataModule
    from ctfm.data.diffusion_adapters import DiffusionAdapterData
    from ctfm.data.low_dose import LowDoseDataModule
    from ctfm.data.msd import MSDDataModule
    from ctfm.data.pretrain import CTPretrainDataModule
    from ctfm.data.totalsegmentator import TotalSegmentatorDataModule

    modules = [
        ClassificationDataModule,
        DiffusionDataModule,
        DiffusionAdapterData,
        LowDoseDataModule,
        MSDDataModule,
        CTPretrainDataModule,
        TotalSegmentatorDataModule,
    ]
    assert all(issubclass(m, DatalistDataModule) for m in modules)


def test_an_evaluation_batch_whose_items_all_failed_is_skipped_by_the_task():
    from ctfm.nn.classifier import ScanClassifier
    from ctfm.nn.encoder import ct_fm_encoder
    from ctfm.tasks.classification import ScanClassification

    network = ScanClassifier(ct_fm_encoder(init_filters=4), in_features=64, hidden_features=8)
    module = ScanClassification(network)
    assert module.validation_step(None, 0) is None and module.test_step(None, 0) is None
    images = torch.rand(3, 1, 16, 16, 16)
    batch = {"image": images, "label": torch.tensor([1, UNKNOWN_LABEL, 0]), "path": ["a", "b", "c"]}
    loss = module.validation_step(batch, 0)
    assert loss is not None and torch.isfinite(loss)
    accuracy = module.val_metrics["Accuracy"]
    assert int(accuracy.tp + accuracy.fp + accuracy.tn + accuracy.fn) == 2  # the unknown label is left out


def test_a_scan_listed_twice_is_flagged_once_and_all_bad_ends_the_search():
    wrapped = SkipBadItems(_Flaky(3, bad={0, 1, 2}), ["a.nii.gz", "b.nii.gz", "a.nii.gz"], substitute=True)
    with pytest.raises(CTFMError, match="none of the 3 items can be loaded"):
        wrapped[0]
    assert wrapped.skips.skipped() == ["a.nii.gz", "b.nii.gz", "a.nii.gz"]
