"""Labelled datalists: splits, label encodings, and errors that name the CSV and its row."""

import pandas as pd
import pytest

from ctfm.data.classification import ClassificationDataModule
from ctfm.data.datalist import LabelEncoding, assign_splits
from ctfm.errors import CTFMError


def identity(item):
    return item


@pytest.fixture
def scans(tmp_path):
    for i in range(20):
        (tmp_path / f"s{i}.nii.gz").touch()
    return tmp_path


def write(folder, **columns):
    csv = folder / "labels.csv"
    pd.DataFrame(columns).to_csv(csv, index=False)
    return csv


def test_seeded_811_split_and_relative_paths(scans):
    csv = write(scans, image=[f"s{i}.nii.gz" for i in range(20)], label=[i % 2 for i in range(20)])
    data = ClassificationDataModule(csv, identity, identity, seed=3)
    assert data.table["split"].value_counts().to_dict() == {"train": 16, "val": 2, "test": 2}
    again = ClassificationDataModule(csv, identity, identity, seed=3)
    assert data.table["split"].tolist() == again.table["split"].tolist()
    other = ClassificationDataModule(csv, identity, identity, seed=4)
    assert data.table["split"].tolist() != other.table["split"].tolist()
    item = data.items("test")[0]
    assert item["image"].startswith(str(scans)) and item["label"] in (0, 1) and data.num_outputs == 1


def test_split_column_and_string_classes(scans):
    csv = write(
        scans,
        image=[f"s{i}.nii.gz" for i in range(4)],
        label=["normal", "bleed", "tumour", "bleed"],
        split=["train", "Validation", "test", "train"],
    )
    data = ClassificationDataModule(csv, identity, identity)
    assert data.table["split"].tolist() == ["train", "val", "test", "train"]
    assert data.encoding.classes == ["bleed", "normal", "tumour"] and data.num_outputs == 3
    assert [item["label"] for item in data.items("train")] == [1, 0]
    assert LabelEncoding([1.0, 0.0, 1.0], "x")(1) == 1


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"image": ["s0.nii.gz", "s1.nii.gz"], "label": [1, 1]}, "single class"),
        ({"image": ["s0.nii.gz", "s1.nii.gz"], "label": [0, 1], "split": ["train", "dev"]}, "line 3: split 'dev'"),
        ({"path": ["s0.nii.gz"], "label": [0]}, "needs an 'image' column"),
        ({"image": ["s0.nii.gz", "s1.nii.gz"], "label": [0, None]}, None),
    ],
)
def test_bad_datalists_name_the_csv_and_line(scans, columns, message):
    csv = write(scans, **columns)
    if message is None:  # an unknown label is allowed (predict), but not for one known class
        with pytest.raises(CTFMError, match="single class"):
            ClassificationDataModule(csv, identity, identity)
        return
    with pytest.raises(CTFMError, match=message) as error:
        ClassificationDataModule(csv, identity, identity)
    assert str(csv) in str(error.value)


def test_unlabelled_datalist_predicts_only(scans):
    csv = write(scans, image=["s0.nii.gz", "s1.nii.gz", "s2.nii.gz"])
    data = ClassificationDataModule(csv, identity, identity)
    assert data.num_outputs is None and len(data.predict_dataloader().dataset) == 3
    with pytest.raises(CTFMError, match="training needs labels"):
        data.train_dataloader()
    assert assign_splits(data.table, csv).tolist().count("train") == 1
