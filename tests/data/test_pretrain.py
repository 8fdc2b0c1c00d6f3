"""Datalist reading, the cached-scan dataset and the pretraining data module's batches."""

import numpy as np
import pytest
import torch

from ctfm.data.datalist import read_datalist
from ctfm.data.pretrain import CachedScanDataset, CTPretrainDataModule
from ctfm.data.sample import generate_ct, write_nifti
from ctfm.errors import CTFMError
from ctfm.transforms.views import ContrastiveViews

PATCH = (8, 32, 32)
SMALL = {"patch_size": PATCH, "patches_per_scan": 3, "scans_per_device": 2}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Three small synthetic scans and a corrupt one, listed with paths relative to the CSV."""
    root = tmp_path_factory.mktemp("scans")
    for i in range(3):
        write_nifti(generate_ct((16, 48, 48), (3.0, 1.0, 1.0), seed=i), root / "images" / f"s{i}.nii.gz")
    (root / "images" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b truncated gzip")
    rows = [f"images/s{i}.nii.gz,{i}" for i in range(3)] + ["images/corrupt.nii.gz,3"]
    (root / "datalist.csv").write_text("image,patient\n" + "\n".join(rows) + "\n")
    return root


def test_read_datalist_resolves_paths_against_the_csv_folder(scans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    table = read_datalist(scans / "datalist.csv")
    assert table["image"].tolist()[0] == str(scans / "images" / "s0.nii.gz")
    assert table["patient"].tolist() == [0, 1, 2, 3]
    absolute = tmp_path / "absolute.csv"
    absolute.write_text(f"image\n{scans / 'images' / 's1.nii.gz'}\n")
    assert read_datalist(absolute)["image"].tolist() == [str(scans / "images" / "s1.nii.gz")]


@pytest.mark.parametrize(
    ("content", "message"),
    [("path\nimages/s0.nii.gz\n", "needs an 'image' column"), ("image\n", "has no scans"), ("", "cannot be read")],
)
def test_read_datalist_errors_name_the_csv(tmp_path, content, message):
    csv = tmp_path / "list.csv"
    csv.write_text(content)
    with pytest.raises(CTFMError, match=message) as error:
        read_datalist(csv)
    assert str(csv) in str(error.value)
    with pytest.raises(CTFMError, match="datalist not found"):
        read_datalist(tmp_path / "nowhere.csv")


def test_construction_reads_nothing(tmp_path):
    module = CTPretrainDataModule(tmp_path / "missing.csv", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    with pytest.raises(CTFMError, match="datalist not found"):
        module.setup("fit")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batches_have_the_documented_shape_and_the_bad_scan_is_skipped(scans, tmp_path, num_workers):
    module = CTPretrainDataModule(
        scans / "datalist.csv", cache_dir=tmp_path / "cache", num_workers=num_workers, steps_per_epoch=3, **SMALL
    )
    module.prepare_data()
    module.setup("fit")
    assert len(module.report.scans) == 3
    assert list(module.report.skipped) == [str(scans / "images" / "corrupt.nii.gz")]
    batches = list(module.train_dataloader())
    assert len(batches) == 3
    good = {str(scans / "images" / f"s{i}.nii.gz") for i in range(3)}
    for batch in batches:
        assert batch["views"].shape == (2, 3, 2, 1, *PATCH) and batch["views"].dtype == torch.float32
        assert len(batch["image"]) == 2 and set(batch["image"]) <= good


def test_default_cache_is_beside_the_datalist(scans):
    module = CTPretrainDataModule(scans / "datalist.csv", num_workers=0, **SMALL)
    assert module.cache.root == scans / "ctfm_cache"


def test_without_steps_per_epoch_an_epoch_is_one_pass_over_the_scans(scans, tmp_path):
    module = CTPretrainDataModule(scans / "datalist.csv", cache_dir=tmp_path / "cache", num_workers=0, **SMALL)
    module.setup("fit")
    seen = [image for batch in module.train_dataloader() for image in batch["image"]]
    assert len(seen) == 2  # three scans, batches of two, the incomplete one dropped
    assert len(set(seen)) == 2


def test_every_scan_bad_is_a_clear_error(scans, tmp_path):
    module = CTPretrainDataModule(
        [scans / "images" / "corrupt.nii.gz", tmp_path / "gone.nii.gz"], cache_dir=tmp_path / "cache", **SMALL
    )
    with pytest.raises(CTFMError, match="no usable scan among the 2") as error:
        module.setup("fit")
    assert "corrupt.nii.gz" in str(error.value) and "gone.nii.gz" in str(error.value)


def test_an_unreadable_cache_file_is_replaced_by_another_scan_and_counted(scans, tmp_path):
    module = CTPretrainDataModule(
        scans / "datalist.csv", cache_dir=tmp_path / "cache", num_workers=0, steps_per_epoch=6, **SMALL
    )
    module.setup("fit")
    broken = module.report.scans[0]
    broken.array_path.write_bytes(broken.array_path.read_bytes()[:100])  # truncated on disk after preparation
    images = [image for batch in module.train_dataloader() for image in batch["image"]]
    assert len(images) == 12 and broken.source not in images
    assert module.skipped_items() == [broken.source]  # counted once, however often it was drawn


def test_workers_draw_different_views(scans, tmp_path):
    module = CTPretrainDataModule(
        [scans / "images" / "s0.nii.gz"] * 2,
        cache_dir=tmp_path / "cache",
        num_workers=2,
        steps_per_epoch=2,
        patch_size=PATCH,
        patches_per_scan=2,
        scans_per_device=1,
    )
    module.setup("fit")
    first, second = (batch["views"] for batch in module.train_dataloader())  # one batch from each worker
    assert not torch.equal(first, second)


def test_dataset_seeding_reproduces_items(scans, tmp_path):
    module = CTPretrainDataModule(scans / "datalist.csv", cache_dir=tmp_path / "cache", num_workers=0, **SMALL)
    module.setup("fit")

    def items(seed):
        dataset = CachedScanDataset(module.report.scans, ContrastiveViews(PATCH, 2), length=4)
        dataset.set_random_state(seed)
        return [dataset[i] for i in range(4)]

    first, again, other = items(0), items(0), items(1)
    assert [a["image"] for a in first] == [b["image"] for b in again]
    assert all(torch.equal(a["views"], b["views"]) for a, b in zip(first, again))
    assert not all(torch.equal(a["views"], b["views"]) for a, b in zip(first, other))
    assert np.all([a["views"].shape == (2, 2, 1, *PATCH) for a in first])


def test_device_views_batches_hold_the_raw_uint16_patches(scans, tmp_path):
    """views_on=device: workers only read the patches, as stored, for the training module to augment."""
    module = CTPretrainDataModule(
        scans / "datalist.csv",
        cache_dir=tmp_path / "cache",
        num_workers=1,
        steps_per_epoch=2,
        views_on="device",
        **SMALL,
    )
    module.setup("fit")
    for batch in module.train_dataloader():
        assert set(batch) == {"patches", "image"}
        assert batch["patches"].shape == (2, 3, 1, *PATCH) and batch["patches"].dtype == torch.uint16


def _fake_trainer(device, module):
    from types import SimpleNamespace

    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device(device)), lightning_module=module, global_rank=0
    )


def test_auto_makes_views_on_the_device_only_on_a_gpu_with_a_module_that_makes_them(scans, tmp_path):
    from types import SimpleNamespace

    from ctfm.transforms.device_views import DeviceViews

    makes_views, makes_none = SimpleNamespace(device_views=DeviceViews()), SimpleNamespace()
    module = CTPretrainDataModule(scans / "datalist.csv", cache_dir=tmp_path / "cache", num_workers=0, **SMALL)
    assert module.views_on == "auto" and module._auto_views_on() == "workers"  # no trainer
    for device, model, expected in [("cuda", makes_views, "device"), ("cpu", makes_views, "workers")]:
        module.trainer = _fake_trainer(device, model)
        assert module._auto_views_on() == expected
    module.trainer = _fake_trainer("cuda", makes_none)
    assert module._auto_views_on() == "workers"
    explicit = CTPretrainDataModule(
        scans / "datalist.csv", cache_dir=tmp_path / "cache", num_workers=0, views_on="device", **SMALL
    )
    explicit.trainer = _fake_trainer("cuda", makes_none)
    with pytest.raises(CTFMError, match="views_on=workers"):
        explicit.setup("fit")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"views_on": "gpu"}, "views_on must be one of auto, device, workers"),
        ({"views_on": "device", "augmentation": abs}, "set views_on to 'workers'"),
    ],
)
def test_views_on_mistakes_are_clear_errors(tmp_path, settings, message):
    with pytest.raises(CTFMError, match=message):
        CTPretrainDataModule(tmp_path / "datalist.csv", **SMALL, **settings)
