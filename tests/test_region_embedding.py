"""Embedding inside a region: geometry on real CT, pooling arithmetic, masks by value and name, whole-volume mode."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch

#: Coarse enough that the real chest CT (128x128x34 at 3x3x10 mm) embeds in about a second at width 4.
COARSE = dict(spacing=(10.0, 6.0, 6.0))
PATCH = (4, 16, 16)


@pytest.fixture(scope="module")
def encoder():
    from ctfm.nn import ct_fm_encoder

    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()


@pytest.fixture(scope="module")
def slicer_chest():
    data = importlib.resources.files("slicerio") / "data"
    return str(data / "CTChest4.nrrd"), str(data / "Segmentation.seg.nrrd")


def _world_to_voxel(affine: torch.Tensor, points_mm: torch.Tensor) -> np.ndarray:
    homogeneous = torch.cat([points_mm, torch.ones(len(points_mm), 1, dtype=torch.float64)], dim=1)
    return (homogeneous @ torch.linalg.inv(affine.double()).T)[:, :3].round().long().numpy()


def test_pooled_patches_lie_inside_the_region_on_the_real_chest_ct(encoder, slicer_chest):
    """Each tile pooled for the right lung (label 5) is centred, in world mm, on a label-5 voxel of the original
    LPS-stored scan: the mask followed the scan through orientation, resampling and the body crop."""
    from ctfm.embedding import embed_regions
    from ctfm.io.reader import read_ct, read_label_map
    from ctfm.transforms.preprocess import CTPreprocessing

    scan, segmentation = slicer_chest
    found = embed_regions(
        encoder, scan, segmentation, {"lung_right": [5], "lung_left": [6]}, patch_size=PATCH,
        preprocess=CTPreprocessing(**COARSE), batch_size=32,
    )  # fmt: skip
    image = read_ct(scan)
    labels = read_label_map(segmentation, like=image)[0].numpy()
    for name, value in (("lung_right", 5), ("lung_left", 6)):
        region = found[name]
        assert region.embedding.shape == (64,) and torch.isfinite(region.embedding).all()
        assert region.patches >= 2
        voxels = _world_to_voxel(image.affine, region.patch_centres_mm)
        inside = np.mean([labels[tuple(v)] == value for v in voxels])
        mirrored = np.mean([labels[tuple(v)] == 11 - value for v in voxels])  # the other lung
        # Centres near the lung's edge can fall either side once resampled to 10 x 6 x 6 mm; a flipped or shifted
        # axis would put them in the other lung or outside.
        assert inside >= 0.8 and mirrored == 0, f"{name}: {inside:.2f} inside, {mirrored:.2f} in the other lung"
    assert not torch.equal(found["lung_right"].embedding, found["lung_left"].embedding)


def test_crop_is_centred_on_the_region_bounding_box(encoder, slicer_chest):
    from ctfm.embedding import embed_regions
    from ctfm.io.reader import read_ct, read_label_map
    from ctfm.transforms.preprocess import CTPreprocessing

    scan, segmentation = slicer_chest
    found = embed_regions(
        encoder, scan, segmentation, {"lung_left": [6]}, pool="crop", crop_size=(8, 32, 32), patch_size=PATCH,
        preprocess=CTPreprocessing(**COARSE),
    )  # fmt: skip
    image = read_ct(scan)
    mask = read_label_map(segmentation, like=image)[0] == 6
    index = mask.nonzero().double()
    centre = (index.min(0).values + index.max(0).values) / 2
    expected = (torch.cat([centre, torch.ones(1, dtype=torch.float64)]) @ image.affine.double().T)[:3]
    # Within one resampled voxel (10 x 6 x 6 mm) of the bounding-box centre measured on the original grid.
    assert torch.all((found["lung_left"].centre_mm - expected).abs() <= torch.tensor([6.0, 6.0, 10.0]))
    assert found["lung_left"].patches == 1


def test_mean_pool_is_the_inside_fraction_weighted_mean(encoder, sample_nifti, sample_ct, tmp_path):
    """Recompute the pooled vector by hand: tiles centred inside, each weighted by its voxels inside / its size."""
    from ctfm.data.sample import LABEL, write_labels_nifti
    from ctfm.embedding import embed_patches, embed_regions
    from ctfm.io.reader import read_ct, read_label_map
    from ctfm.transforms.dictionary import CTPreprocessingd
    from ctfm.transforms.preprocess import CTPreprocessing

    labels_path = write_labels_nifti(sample_ct, tmp_path / "labels.nii.gz")
    settings = CTPreprocessing(min_size=PATCH)
    found = embed_regions(encoder, sample_nifti, labels_path, {"liver": [LABEL["liver"]]}, patch_size=PATCH,
                          preprocess=settings)  # fmt: skip
    image = read_ct(sample_nifti)
    item = CTPreprocessingd(settings, label_keys=("mask",), load=False)(
        {"image": image, "mask": read_label_map(labels_path, like=image)}
    )
    inside = (item["mask"][0] == LABEL["liver"]).numpy()
    patches = embed_patches(encoder, item["image"], patch_size=PATCH, preprocess=None)
    weights, vectors = [], []
    for centre, vector in zip(patches.centers_voxel.numpy(), patches.embeddings):
        if inside[tuple(np.round(centre).astype(int))]:
            start = (centre - (np.array(PATCH) - 1) / 2).astype(int)
            box = inside[tuple(slice(s, s + p) for s, p in zip(start, PATCH))]
            weights.append(box.mean())
            vectors.append(vector.numpy())
    expected = np.average(np.stack(vectors), axis=0, weights=np.array(weights))
    np.testing.assert_allclose(found["liver"].embedding.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert found["liver"].patches == len(vectors)


def test_folder_of_masks_selects_regions_by_name(encoder, sample_nifti, sample_ct, tmp_path):
    """A TotalSegmentator output folder (one binary mask per class) gives regions by file name."""
    import ctfm
    from ctfm.data.sample import LABEL, SampleCT, write_labels_nifti
    from ctfm.transforms.preprocess import CTPreprocessing

    folder = tmp_path / "segmentations"
    for name in ("liver", "spleen"):
        binary = SampleCT(**{**sample_ct.__dict__, "labels": (sample_ct.labels == LABEL[name]).astype(np.uint8)})
        write_labels_nifti(binary, folder / f"{name}.nii.gz")
    settings = CTPreprocessing(min_size=PATCH)
    by_name = ctfm.embed(encoder, sample_nifti, mask=folder, labels=["spleen"], patch_size=PATCH,
                         preprocess=settings)  # fmt: skip
    by_value = ctfm.embed(encoder, sample_nifti, mask=folder, labels=[2], patch_size=PATCH, preprocess=settings)
    torch.testing.assert_close(by_name, by_value)
    with pytest.raises(Exception, match="no class named 'kidney'.*liver, spleen"):
        ctfm.embed(encoder, sample_nifti, mask=folder, labels=["kidney"], patch_size=PATCH, preprocess=settings)


def test_names_from_the_label_sidecar_and_empty_regions(encoder, sample_nifti, sample_ct, tmp_path):
    import ctfm
    from ctfm.data.sample import LABEL, write_labels_nifti
    from ctfm.io.regions import EmptyRegionError

    labels_path = write_labels_nifti(sample_ct, tmp_path / "labels.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({"labels": {str(v): n for v, n in enumerate(LABEL)}}))
    vector = ctfm.embed(encoder, sample_nifti, mask=labels_path, labels=["heart"], patch_size=PATCH)
    assert vector.shape == (64,)
    absent = max(LABEL.values()) + 5
    with pytest.raises(EmptyRegionError, match=r"labels.nii.gz: region .* holds no voxel"):
        ctfm.embed(encoder, sample_nifti, mask=labels_path, labels=[absent], patch_size=PATCH)


def test_whole_volume_mode_is_one_forward_pass_over_the_padded_scan(encoder, sample_nifti):
    import ctfm
    from ctfm.embedding import centre_crop_or_pad
    from ctfm.nn import pooled_features
    from ctfm.transforms.preprocess import CTPreprocessing

    settings = CTPreprocessing(min_size=PATCH)
    volume = settings(sample_nifti)
    box = (16, 48, 48)
    expected = pooled_features(encoder, centre_crop_or_pad(volume.as_tensor(), box)[None])[0]
    got = ctfm.embed(encoder, sample_nifti, whole_volume=box, patch_size=PATCH, preprocess=settings)
    torch.testing.assert_close(got, expected)
    assert ctfm.embed(encoder, sample_nifti, whole_volume=True, patch_size=PATCH, preprocess=settings).shape == (64,)


def test_centre_crop_or_pad_keeps_voxels_where_they_were():
    from ctfm.embedding import centre_crop_or_pad

    volume = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 5, 6, 7)
    padded = centre_crop_or_pad(volume, (7, 8, 9))
    assert torch.equal(padded[:, 1:6, 1:7, 1:8], volume) and padded.sum() == volume.sum()
    cropped = centre_crop_or_pad(volume, (3, 4, 5))
    assert torch.equal(cropped, volume[:, 1:4, 1:5, 1:6])
    corner = centre_crop_or_pad(volume, (3, 3, 3), centre=(0.0, 0.0, 0.0))
    assert corner[0, 1, 1, 1] == volume[0, 0, 0, 0] and corner[0, 0].sum() == 0
