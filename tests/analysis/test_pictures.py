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


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_pca_concepts_paint_every_body_voxel_at_any_overlap(encoder, sample_nifti, overlap):
    from ctfm.analysis.pca_concepts import pca_concepts
    from ctfm.transforms.preprocess import CTPreprocessing

    preprocess = CTPreprocessing(min_size=PATCH)
    volume = preprocess(sample_nifti)
    (concepts,) = pca_concepts(encoder, [volume], patch_size=PATCH, overlap=overlap)
    body = np.asarray(volume[0]) > preprocess.body_threshold
    painted = ~np.isnan(concepts.rgb).any(axis=-1)
    assert body.mean() > 0.2
    assert painted[body].all()  # every body voxel
    lungs = (np.asarray(volume[0]) < preprocess.body_threshold) & (np.arange(body.shape[2]) > 0)[None, None]
    inside = lungs & np.maximum.accumulate(body, axis=2) & np.maximum.accumulate(body[:, :, ::-1], axis=2)[:, :, ::-1]
    assert painted[inside].mean() > 0.95  # air enclosed by the body along the rows (the lungs) too
    assert (~painted).mean() > 0.02  # the air around the body stays clear
    # every displayed slice of the picture is coloured wherever it shows body
    middle = concepts.volume.shape[0] // 2
    assert painted[middle][body[middle]].all() and body[middle].any()


def capture_figures(monkeypatch):
    """Figures the plotting module would save, kept instead of written."""
    import ctfm.plotting

    figures = []

    def keep(figure, path, **_):
        figures.append(figure)
        return path

    monkeypatch.setattr(ctfm.plotting, "save_figure", keep)
    return figures


def colour_bar_labels(figure):
    return [axes.get_ylabel() for axes in figure.axes if axes.get_ylabel()]


def test_saliency_of_a_near_constant_encoder_is_reported_as_below_the_noise_floor(
    encoder, sample_nifti, tmp_path, monkeypatch, caplog
):
    import copy

    from ctfm.plotting import NO_SIGNAL

    constant = copy.deepcopy(encoder)
    with torch.no_grad():
        constant.conv_init.weight.zero_()  # the input no longer reaches the embedding
    figures = capture_figures(monkeypatch)
    pictures.saliency_picture(constant, sample_nifti, tmp_path, patch_size=PATCH, window=(4, 8, 8))
    assert NO_SIGNAL in figures[-1]._suptitle.get_text()
    assert "sample.nii.gz spans only 0 (noise floor 1e-05): the picture shows no signal" in caplog.text
    assert colour_bar_labels(figures[-1]) == ["1 - cosine (embedding change when occluded)"]
    caplog.clear()
    nifti, _ = pictures.saliency_picture(encoder, sample_nifti, tmp_path, patch_size=PATCH, window=(4, 8, 8))
    assert NO_SIGNAL not in figures[-1]._suptitle.get_text() and "no signal" not in caplog.text
    bar = next(axes for axes in figures[-1].axes if axes.get_ylabel())
    assert bar.get_ylim()[1] == pytest.approx(nib.load(nifti).get_fdata().max(), rel=1e-4)  # the scale is the map's


def test_saliency_picture_is_drawn_through_the_query_point_and_marks_it(encoder, sample_nifti, tmp_path, monkeypatch):
    from ctfm.analysis.tiles import world_to_voxel
    from ctfm.transforms.preprocess import CTPreprocessing

    scan = nib.load(sample_nifti)
    point = nib.affines.apply_affine(scan.affine, (np.array(scan.shape) - 1) * [0.4, 0.6, 0.5])
    figures = capture_figures(monkeypatch)
    pictures.saliency_picture(encoder, sample_nifti, tmp_path, point_mm=point, patch_size=PATCH, window=(4, 8, 8))
    assert [text.get_text() for legend in figures[-1].legends for text in legend.get_texts()] == ["query point"]
    volume = CTPreprocessing()(sample_nifti)
    z, y, x = np.round(world_to_voxel(volume.affine, point)[0]).astype(int)
    axial = figures[-1].axes[0]
    assert axial.get_title() == "axial"
    np.testing.assert_array_equal(axial.get_images()[0].get_array(), np.asarray(volume[0, z]))
    (marker,) = axial.get_lines()
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (x, y)
