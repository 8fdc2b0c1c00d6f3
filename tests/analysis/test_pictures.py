import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.analysis import pictures
from ctfm.analysis.saliency import occlusion_saliency
from ctfm.nn import ct_fm_encoder

PATCH = (8, 32, 32)
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()


def test_occluding_air_with_air_changes_nothing(encoder):
    patch = torch.zeros(PATCH)
    patch[:, :, 16:] = torch.rand(8, 32, 16, generator=torch.Generator().manual_seed(0))
    saliency = occlusion_saliency(encoder, patch, window=(4, 8, 8))
    assert saliency.shape == PATCH and saliency.min() >= 0
    # zero up to float32 rounding of the batched forward (1 - cos of two equal embeddings)
    assert saliency[:, :, :16].max() < 1e-6 and saliency[:, :, 16:].min() > 1e-3


def test_saliency_nifti_lies_on_the_scans_grid(encoder, sample_nifti, tmp_path):
    nifti, png = pictures.saliency_picture(encoder, sample_nifti, tmp_path, patch_size=PATCH, window=(4, 8, 8))
    written, scan = nib.load(nifti), nib.load(sample_nifti)
    assert written.shape == scan.shape and png.read_bytes()[:4] == PNG
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-4)
    values = written.get_fdata()
    assert values.max() > 0 and (values == 0).mean() > 0.5  # only the patch around the centre is scored


def test_pca_concepts_give_the_same_anatomy_the_same_colour(encoder, sample_nifti, tmp_path):
    from ctfm.analysis.pca_concepts import pca_concepts
    from ctfm.transforms.preprocess import CTPreprocessing

    volume = CTPreprocessing(min_size=PATCH)(sample_nifti)
    first, second = pca_concepts(encoder, [volume, volume.clone()], patch_size=PATCH, overlap=0.0)
    assert first.rgb.shape == (*volume.shape[1:], 3)
    coloured = ~np.isnan(first.rgb[..., 0])
    assert 0 < coloured.mean() < 1 and np.nanmin(first.rgb) >= 0 and np.nanmax(first.rgb) <= 1
    np.testing.assert_allclose(first.rgb, second.rgb, atol=1e-5)
    png = pictures.pca_picture(encoder, [sample_nifti, sample_nifti], tmp_path, patch_size=PATCH, overlap=0.0)
    assert png.read_bytes()[:4] == PNG


def test_tsne_picture_from_a_table_and_a_label_csv(encoder, sample_nifti, tmp_path):
    from ctfm.data.sample import generate_ct, write_nifti
    from ctfm.embedding_table import embed_to_parquet

    scans = [write_nifti(generate_ct((12, 40, 40), seed=s), tmp_path / f"s{s}.nii.gz") for s in range(4)]
    table = tmp_path / "embeddings.parquet"
    embed_to_parquet(scans, table, model=encoder, patch_size=PATCH)
    labels = tmp_path / "labels.csv"
    relative = [scans[0].name, f"./{scans[1].name}", *map(str, scans[2:])]  # against the CSV's folder
    pd.DataFrame({"path": relative, "site": ["a", "a", "b", "b"]}).to_csv(labels, index=False)
    assert pictures.tsne_picture(table, labels, "site", tmp_path).read_bytes()[:4] == PNG
    from ctfm.errors import CTFMError

    with pytest.raises(CTFMError, match="labels.csv: needs columns 'path' and 'sex'"):
        pictures.tsne_picture(table, labels, "sex", tmp_path)


def test_stability_of_a_scan_with_itself_is_one(encoder, sample_nifti, tmp_path):
    numbers, png = pictures.stability_picture(encoder, sample_nifti, sample_nifti, tmp_path, patch_size=PATCH)
    assert numbers["min"] == pytest.approx(1.0, abs=1e-4) and numbers["patches"] > 1
    assert png.read_bytes()[:4] == PNG and pd.read_csv(tmp_path / "stability.csv")["mean"][0] == pytest.approx(1.0)
