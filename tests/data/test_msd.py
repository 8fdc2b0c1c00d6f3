"""The Decathlon reader: dataset.json labels and the tumour label, splits, class subsets, missing files."""

import json
from pathlib import Path

import pytest

from ctfm.data.msd import MSDDataModule, msd_class_names, read_msd
from ctfm.data.sample_layouts import make_msd_sample
from ctfm.errors import InvalidScanError
from ctfm.transforms.preprocess import CTPreprocessing

PREPROCESSING = CTPreprocessing(spacing=None, min_size=(16, 32, 32))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_msd_sample(tmp_path_factory.mktemp("msd") / "Task03_Liver", n_cases=5, shape=(24, 64, 64))


def test_labels_and_tumour_come_from_dataset_json(task):
    read = read_msd(task)
    assert read.labels == {0: "background", 1: "liver", 2: "cancer"} and read.tumour_label == 2
    assert [c["image_id"] for c in read.cases] == [f"liver_{i}" for i in range(5)]
    assert msd_class_names(task) == ("background", "liver", "cancer")
    assert msd_class_names(task, ["cancer"]) == ("background", "cancer")


def test_seeded_fraction_or_a_list_of_ids_splits_the_cases(task, tmp_path):
    module = MSDDataModule(task, PREPROCESSING, (16, 32, 32), val_fraction=0.4, seed=1)
    again = MSDDataModule(task, PREPROCESSING, (16, 32, 32), val_fraction=0.4, seed=1)
    assert len(module.items["val"]) == 2 and module.items["val"] == again.items["val"]
    assert not {c["image_id"] for c in module.items["train"]} & {c["image_id"] for c in module.items["val"]}
    listing = tmp_path / "val.json"
    listing.write_text(json.dumps(["liver_4"]))
    chosen = MSDDataModule(task, PREPROCESSING, (16, 32, 32), val_cases=listing, fewshot=2)
    assert [c["image_id"] for c in chosen.items["val"]] == ["liver_4"]
    assert [c["image_id"] for c in chosen.items["train"]] == ["liver_0", "liver_1"]


def test_a_class_subset_is_remapped_to_one(task):
    module = MSDDataModule(task, PREPROCESSING, (16, 32, 32), classes=["cancer"], num_workers=0)
    item = module.transform("val")(module.items["val"][0])
    assert set(item["label"].unique().tolist()) == {0.0, 1.0}


def test_a_case_with_a_missing_file_is_skipped_and_named_with_its_entry(task, tmp_path, caplog):
    import shutil

    copy = shutil.copytree(task, tmp_path / "Task03_Liver")
    (copy / "labelsTr" / "liver_2.nii.gz").unlink()
    where, problem = read_msd(copy).missing[0]
    assert where == f"{copy / 'dataset.json'}: training[2]"
    assert problem.startswith("label './labelsTr/liver_2.nii.gz': no such file")
    with caplog.at_level("WARNING", logger="ctfm.data.base"):
        module = MSDDataModule(copy, PREPROCESSING, (16, 32, 32), num_workers=0)
    assert f"{where}: {problem}; skipped" in caplog.text
    cases = {c["image_id"] for split in ("train", "val") for c in module.items[split]}
    assert cases == {"liver_0", "liver_1", "liver_3", "liver_4"}


def test_a_label_value_outside_the_task_labels_is_named(task, tmp_path):
    import shutil

    import nibabel as nib
    import numpy as np

    copy = shutil.copytree(task, tmp_path / "Task03_Liver")
    label = copy / "labelsTr" / "liver_0.nii.gz"
    image = nib.load(label)
    values = np.asarray(image.dataobj).copy()
    values[values == 2] = 7
    nib.save(nib.Nifti1Image(values, image.affine), label)
    module = MSDDataModule(copy, PREPROCESSING, (16, 32, 32), num_workers=0)
    with pytest.raises(RuntimeError) as raised:  # MONAI's Compose wraps it; the cause names the file
        module.transform("val")({"image": str(copy / "imagesTr" / "liver_0.nii.gz"), "label": str(label)})
    cause = raised.value.__cause__
    assert isinstance(cause, InvalidScanError)
    assert str(cause) == f"{label}: holds label 7, outside the 2 selected classes (1..K)"


def test_a_subject_with_a_bad_label_is_skipped_and_named_while_the_others_load(task, tmp_path, caplog):
    import shutil

    import nibabel as nib
    import numpy as np
    from monai.data import Dataset

    from ctfm.data.base import SkipBadItems

    copy = shutil.copytree(task, tmp_path / "Task03_Liver")
    label = copy / "labelsTr" / "liver_0.nii.gz"
    image = nib.load(label)
    values = np.asarray(image.dataobj).copy()
    values[values == 2] = 7
    nib.save(nib.Nifti1Image(values, image.affine), label)
    module = MSDDataModule(copy, PREPROCESSING, (16, 32, 32), num_workers=0)
    items = [
        {"image": str(copy / "imagesTr" / f"liver_{i}.nii.gz"), "label": str(copy / "labelsTr" / f"liver_{i}.nii.gz")}
        for i in (0, 1)
    ]
    names = [item["image"] for item in items]
    dataset = SkipBadItems(Dataset(items, transform=module.transform("val")), names, substitute=True)
    with caplog.at_level("WARNING", logger="ctfm.data.base"):
        served = dataset[0]
    assert served["image"].meta["filename_or_obj"] == items[1]["image"]
    assert dataset.skips.skipped() == [items[0]["image"]]
    assert f"skipping {items[0]['image']} ({label}): holds label 7" in caplog.text
    assert SkipBadItems(dataset.dataset, names, substitute=False)[0] is None  # evaluation drops it instead


def test_a_label_value_outside_dataset_json_skips_the_case_at_set_up_naming_case_and_file(task, tmp_path, caplog):
    import shutil

    import nibabel as nib
    import numpy as np

    copy = shutil.copytree(task, tmp_path / "Task03_Liver")
    module = MSDDataModule(copy, PREPROCESSING, (16, 32, 32), num_workers=0)
    module.setup("fit")  # all labels fine: their values are remembered
    assert (copy / "ctfm_cache" / "label_values.json").is_file()
    label = copy / "labelsTr" / "liver_3.nii.gz"
    image = nib.load(label)
    values = np.asarray(image.dataobj).copy()
    values[values == 2] = 7
    nib.save(nib.Nifti1Image(values, image.affine), label)  # a changed file is read again
    again = MSDDataModule(copy, PREPROCESSING, (16, 32, 32), num_workers=0)
    with caplog.at_level("WARNING", logger="ctfm.data.base"):
        again.setup("fit")
    problem = f"{label}: case liver_3: holds label 7, not one of the defined labels [0, 1, 2]"
    assert f"{copy / 'dataset.json'}: case liver_3: {problem}; skipped" in caplog.text
    assert "liver_3" not in {c["image_id"] for split in ("train", "val", "test") for c in again.items[split]}
    module.setup("predict")  # predict reads no labels


def test_a_corrupt_scan_is_replaced_in_training_and_left_out_of_validation(task, tmp_path):
    import shutil

    copy = shutil.copytree(task, tmp_path / "Task03_Liver")
    module = MSDDataModule(copy, PREPROCESSING, (16, 32, 32), num_workers=0, batch_size=1)
    module.setup("fit")
    val_image, train_image = module.items["val"][0]["image"], module.items["train"][0]["image"]
    for path in (val_image, train_image):
        Path(path).write_bytes(Path(path).read_bytes()[:300])  # truncated gzip
    assert list(module.val_dataloader()) == [None]  # the one validation case: the step skips the batch
    served = [path for batch in module.train_dataloader() for path in batch["image"].meta["filename_or_obj"]]
    assert len(served) == len(module.items["train"]) and train_image not in served
    assert sorted(module.skipped_items()) == sorted([val_image, train_image])
