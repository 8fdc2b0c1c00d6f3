"""The TotalSegmentator v2 reader: published layout, merged and cached label maps, class subsets, bad input."""

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from ctfm.data.sample_layouts import make_totalsegmentator_sample
from ctfm.data.totalsegmentator import (
    TotalSegmentatorDataModule,
    merged_label_map,
    read_totalsegmentator,
    selected_class_names,
)
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.transforms.preprocess import CTPreprocessing

CLASSES = ["liver", "spleen", "kidney_left"]
PREPROCESSING = CTPreprocessing(spacing=None, min_size=(16, 32, 32))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_totalsegmentator_sample(tmp_path_factory.mktemp("ts"), shape=(24, 64, 64), seed=3)


@pytest.fixture
def copy(dataset, tmp_path):
    return shutil.copytree(dataset, tmp_path / "ts")


def test_class_names_are_the_published_order_and_a_subset_is_remapped():
    names = selected_class_names(None)
    assert len(names) == 118 and names[0] == "background"
    assert names[26] == "vertebrae_S1" and names[50] == "vertebrae_C1"
    assert names.index("liver") == 5 and len(set(names)) == 118
    assert selected_class_names(["spleen", "liver"]) == ("background", "spleen", "liver")
    with pytest.raises(CTFMError, match="unknown TotalSegmentator classes \\['livers'\\]"):
        selected_class_names(["livers"])


def test_meta_csv_with_semicolons_gives_splits_and_fewshot(dataset):
    data = read_totalsegmentator(dataset, CLASSES)
    assert [s.image_id for s in data.split("train")] == ["s0000", "s0001"]
    assert [s.image_id for s in data.split("train", first=1)] == ["s0000"]
    assert [s.split for s in data.subjects] == ["train", "train", "val", "test"]
    with pytest.raises(CTFMError, match="fewshot=5 but .* has only 2 train subjects"):
        data.split("train", first=5)


def test_merged_map_holds_the_masks_and_is_rebuilt_when_a_mask_changes(copy, tmp_path):
    subject = read_totalsegmentator(copy).subjects[0]
    names = selected_class_names(CLASSES)
    path = merged_label_map(subject, names, tmp_path / "cache")
    merged = np.asarray(nib.load(path).dataobj)
    for value, name in enumerate(CLASSES, start=1):
        mask = np.asarray(nib.load(subject.mask(name)).dataobj)
        assert mask.any() and np.array_equal(merged == value, mask > 0)
    assert np.allclose(nib.load(path).affine, nib.load(subject.ct).affine)
    stamp = path.stat().st_mtime_ns
    assert merged_label_map(subject, names, tmp_path / "cache").stat().st_mtime_ns == stamp  # cached

    liver = nib.load(subject.mask("liver"))
    nib.save(nib.Nifti1Image(np.zeros(liver.shape, np.uint8), liver.affine), subject.mask("liver"))
    os.utime(subject.mask("liver"), ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = np.asarray(nib.load(merged_label_map(subject, names, tmp_path / "cache")).dataobj)
    assert not (rebuilt == 1).any() and (rebuilt == 2).any()


def test_only_selected_masks_must_exist_and_a_subject_missing_one_is_skipped_and_named_at_setup(copy, caplog):
    (copy / "s0001" / "segmentations" / "heart.nii.gz").unlink()
    TotalSegmentatorDataModule(copy, PREPROCESSING, (16, 32, 32), classes=CLASSES)  # heart is not selected
    (copy / "s0001" / "segmentations" / "liver.nii.gz").unlink()
    with caplog.at_level("WARNING", logger="ctfm.data.base"):
        module = TotalSegmentatorDataModule(copy, PREPROCESSING, (16, 32, 32), classes=CLASSES)
    liver = copy / "s0001" / "segmentations" / "liver.nii.gz"
    assert f"{copy / 'meta.csv'}: line 3: {liver}: subject s0001: file is missing; skipped" in caplog.text
    assert "s0001" not in {s.image_id for split in module.splits.values() for s in split}
    with pytest.raises(CTFMError, match="no usable training subject"):
        TotalSegmentatorDataModule(copy, PREPROCESSING, (16, 32, 32))  # all 117: most are missing everywhere


def test_a_mask_on_another_grid_and_a_meta_csv_without_split_are_named(copy, caplog):
    mask = copy / "s0002" / "segmentations" / "spleen.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), mask)
    with caplog.at_level("WARNING", logger="ctfm.data.base"):
        module = TotalSegmentatorDataModule(copy, PREPROCESSING, (16, 32, 32), classes=CLASSES)
    assert f"{mask}: subject s0002: mask shape (8, 8, 8) differs" in caplog.text
    assert "s0002" not in {s.image_id for split in module.splits.values() for s in split}
    (copy / "meta.csv").write_text("image_id;age\ns0000;60\n")
    with pytest.raises(InvalidScanError, match="meta.csv: has no column split"):
        read_totalsegmentator(copy)


def test_training_patches_follow_labels_and_predictions_invert_onto_the_input_grid(dataset, tmp_path):
    module = TotalSegmentatorDataModule(
        dataset, PREPROCESSING, (16, 32, 32), classes=CLASSES, cache_dir=tmp_path, num_workers=0, batch_size=2
    )
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 32, 32) and batch["label"].shape == (2, 1, 16, 32, 32)
    assert set(batch["label"].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0} and (batch["label"] > 0).any()

    item = module.transform("predict")(module.items["predict"][0])
    ct = nib.load(dataset / "s0003" / "ct.nii.gz")
    assert item["image"].shape[1:] != ct.shape  # reoriented SPL and cropped to the body
    threshold = PREPROCESSING.body_threshold
    item["pred"] = (item["image"] > threshold).to(torch.int64)  # a "prediction" whose true answer is known
    restored = module.invert(item)
    assert tuple(restored.shape[1:]) == ct.shape
    assert np.allclose(restored.affine.numpy(), ct.affine, atol=1e-4)
    expected = np.asarray(ct.dataobj) > -500
    assert np.array_equal(restored[0].numpy() > 0, expected)
