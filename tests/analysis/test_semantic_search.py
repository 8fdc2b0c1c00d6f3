import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.analysis.semantic_search import organ_centroid_distance, run_semantic_search
from ctfm.analysis.tiles import TargetCache
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.nn import ct_fm_encoder
from ctfm.transforms.preprocess import CTPreprocessing

PATCH = (8, 32, 32)
#: Where the target's copy of the source lies: every structure moves by this many mm (RAS).
SHIFT = np.array([30.0, -20.0, 15.0])


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()


def shifted_crop(scan_path, out_path, crop=(5, 7, 6), shift=SHIFT):
    """A crop of the scan whose world frame is moved by ``shift``: anatomy at p in the scan is at p + shift here.

    The crop drops ``crop`` voxels at the start of each file axis (6 on the 2.5 mm axis keeps the 3 mm resampling
    grid aligned), so windows of the target hold exactly the voxels of source patches.
    """
    image = nib.load(scan_path)
    data = np.asarray(image.dataobj)[crop[0] :, crop[1] :, crop[2] :]
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array(crop) + shift
    nib.save(nib.Nifti1Image(data, affine), out_path)
    return out_path


@pytest.fixture(scope="module")
def pair(sample_nifti, tmp_path_factory):
    """The sample's central 64 x 64 mm (fewer windows to embed) and a shifted crop of that."""
    folder = tmp_path_factory.mktemp("pair")
    source = shifted_crop(sample_nifti, folder / "sample.nii.gz", crop=(16, 16, 0), shift=np.zeros(3))
    image = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:64, :64], image.affine), source)
    return source, shifted_crop(source, folder / "target.nii.gz")


def central_window(cache: TargetCache, target) -> np.ndarray:
    from ctfm.io.reader import read_ct

    patches = cache.get(target, cache.preprocess(read_ct(target)))
    centre = patches.centers_mm.numpy().mean(axis=0)
    return patches.centers_mm.numpy()[np.argmin(np.linalg.norm(patches.centers_mm.numpy() - centre, axis=1))]


def test_the_match_lands_where_the_shift_says_with_a_heat_map_on_the_targets_grid(encoder, pair, tmp_path):
    source, target = pair
    cache = TargetCache(encoder, CTPreprocessing(), PATCH, overlap=0.5)
    expected = central_window(cache, target)
    table = run_semantic_search(source, expected - SHIFT, [target], encoder, tmp_path, cache=cache)
    assert list(table.columns) == ["target", "x_mm", "y_mm", "z_mm", "similarity"]
    np.testing.assert_allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy()[0], expected, atol=1e-3)
    assert table["similarity"][0] == pytest.approx(1.0, abs=1e-4)
    heat, scan = nib.load(tmp_path / "target_heatmap.nii.gz"), nib.load(target)
    assert heat.shape == scan.shape
    np.testing.assert_allclose(heat.affine, scan.affine, atol=1e-4)
    assert_peak_inside_match(tmp_path / "target_heatmap.nii.gz", table.iloc[0])
    assert (tmp_path / "target_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "matches.csv").shape == (1, 5)
    assert cache.embedded == 1  # embedded once for the window lookup, reused by the search


def assert_peak_inside_match(heat_map, row, spacing=(3.0, 1.0, 1.0)):
    """The hottest voxel of a written heat map (in mm) lies inside the reported best window (PATCH voxels of the
    preprocessed SPL grid at ``spacing``: half extents along R, A, S of x, y, z voxels)."""
    heat = nib.load(heat_map)
    values = heat.get_fdata()
    hottest = nib.affines.apply_affine(heat.affine, np.unravel_index(np.argmax(values), values.shape))
    half = np.array([PATCH[2] * spacing[2], PATCH[1] * spacing[1], PATCH[0] * spacing[0]]) / 2
    match = row[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
    assert np.all(np.abs(hottest - match) <= half + 1e-3), (hottest, match, half)
    assert values.max() == pytest.approx(row["similarity"], abs=1e-5)  # the map's peak is the reported cosine


def test_the_maps_peak_is_the_reported_match_wherever_the_query_lies(encoder, pair, tmp_path):
    """Queries near the scan's edges and corners, where few windows overlap: the table's best window holds the
    map's brightest voxel, and the picture marks both points with a colour bar in cosine."""
    source, target = pair
    cache = TargetCache(encoder, CTPreprocessing(), PATCH, overlap=0.5)
    scan = nib.load(source)
    corners = [np.array(scan.shape) * f for f in ((0.1, 0.1, 0.2), (0.9, 0.5, 0.8), (0.5, 0.95, 0.5))]
    for index, voxel in enumerate(corners):
        point = nib.affines.apply_affine(scan.affine, voxel)
        table = run_semantic_search(source, point, [target, source], encoder, tmp_path / str(index), cache=cache)
        for name, (_, row) in zip(("target", "sample"), table.iterrows()):
            assert_peak_inside_match(tmp_path / str(index) / f"{name}_heatmap.nii.gz", row)


def test_the_heat_map_picture_marks_query_and_match_with_a_cosine_colour_bar():
    from ctfm.plotting import semantic_search_figure

    volume = np.random.default_rng(0).random((10, 20, 20))
    heat = volume * 0.2 + 0.5
    figure = semantic_search_figure(volume, heat, (5, 10, 10), value_range=(0.5, 0.7), source=volume,
                                    query_voxel=(4, 8, 8), window=(0, 1))  # fmt: skip
    texts = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert texts == ["query", "best match"]
    colour_bars = [axes for axes in figure.axes if axes.get_ylabel() == "cosine similarity to the query"]
    assert len(colour_bars) == 1 and colour_bars[0].get_ylim() == pytest.approx((0.5, 0.7))


def test_lps_points_and_matches_and_the_ocd_columns(encoder, pair, tmp_path):
    source, target = pair
    cache = TargetCache(encoder, CTPreprocessing(), PATCH, overlap=0.5)
    expected = central_window(cache, target)
    scan = nib.load(target)
    voxel = np.round(nib.affines.apply_affine(np.linalg.inv(scan.affine), expected)).astype(int)
    mask = np.zeros(scan.shape, dtype=np.uint8)
    mask[tuple(slice(v - 2, v + 3) for v in voxel)] = 1  # a 5-voxel cube centred on the match
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(mask, scan.affine), masks / target.name)
    flip = np.array([-1.0, -1.0, 1.0])
    table = run_semantic_search(
        source, (expected - SHIFT) * flip, [target], encoder, tmp_path / "out", lps=True, mask_dir=masks, cache=cache
    )
    np.testing.assert_allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy()[0], expected * flip, atol=1e-3)
    centroid = nib.affines.apply_affine(scan.affine, voxel)
    assert table["inside_mask"][0]
    assert table["ocd_cm"][0] == pytest.approx(np.linalg.norm(expected - centroid) / 10, abs=1e-4)


def test_inside_is_checked_per_voxel(pair):
    from ctfm.io.reader import read_label_map

    scan = nib.load(pair[1])
    mask = np.zeros(scan.shape, dtype=np.uint8)
    mask[10, 10, 10] = 1
    path = pair[1].parent / "one_voxel.nii.gz"
    nib.save(nib.Nifti1Image(mask, scan.affine), path)
    label = read_label_map(path)
    at = nib.affines.apply_affine(scan.affine, [10, 10, 10])
    beside = nib.affines.apply_affine(scan.affine, [11, 10, 10])
    assert organ_centroid_distance(at, label) == (pytest.approx(0.0), True)
    distance, inside = organ_centroid_distance(beside, label)
    assert not inside and distance == pytest.approx(np.linalg.norm(beside - at) / 10)


def test_bad_input_is_one_error_naming_the_file(encoder, pair, tmp_path):
    source, target = pair
    with pytest.raises(InvalidScanError, match="sample.nii.gz: query point .* lies outside the scan"):
        run_semantic_search(source, (1e4, 0, 0), [target], encoder, tmp_path, patch_size=PATCH)
    masks = tmp_path / "masks"
    masks.mkdir()
    scan = nib.load(target)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), scan.affine), masks / target.name)
    centre = nib.affines.apply_affine(nib.load(source).affine, np.array(nib.load(source).shape) / 2)
    with pytest.raises(InvalidScanError, match="target.nii.gz: has shape .* not on the scan's grid"):
        run_semantic_search(source, centre, [target], encoder, tmp_path / "a", patch_size=PATCH, mask_dir=masks)
    with pytest.raises(CTFMError, match="no mask for target"):
        run_semantic_search(source, centre, [target], encoder, tmp_path / "b", patch_size=PATCH, mask_dir=tmp_path)


def test_cli_writes_matches_and_caches_target_embeddings(encoder, pair, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.hub import save_pretrained

    source, target = pair
    model = save_pretrained(encoder, tmp_path / "model")
    centre = nib.affines.apply_affine(nib.load(source).affine, np.array(nib.load(source).shape) / 2)
    args = ["semantic-search", str(source), "--point", *map(str, centre), str(target), str(source)]
    args += ["--model", str(model), "--out", str(tmp_path / "out"), "--patch-size", *map(str, PATCH)]
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "matches.csv")
    assert list(table["target"]) == [str(target), str(source)]
    assert table["similarity"].between(-1, 1.0001).all()
    assert len(list((tmp_path / "out" / "cache").glob("*.npz"))) == 2
    assert (tmp_path / "out" / "sample_heatmap.nii.gz").exists()


def test_cli_pictures_mark_the_query_in_its_source(encoder, pair, tmp_path, monkeypatch):
    """`SOURCE --point` draws the source with the query marked above each target's map, as the API does."""
    import ctfm.plotting
    from ctfm.cli import main
    from ctfm.hub import save_pretrained

    legends = []
    draw = ctfm.plotting.semantic_search_figure

    def spy(*args, **kwargs):
        figure = draw(*args, **kwargs)
        legends.append([text.get_text() for legend in figure.legends for text in legend.get_texts()])
        return figure

    monkeypatch.setattr(ctfm.plotting, "semantic_search_figure", spy)
    source, target = pair
    model = save_pretrained(encoder, tmp_path / "model")
    centre = nib.affines.apply_affine(nib.load(source).affine, np.array(nib.load(source).shape) / 2)
    args = ["semantic-search", str(source), "--point", *map(str, centre), str(target), "--model", str(model)]
    assert main([*args, "--out", str(tmp_path / "out"), "--patch-size", *map(str, PATCH)]) == 0
    assert legends == [["query", "best match"]]


def test_cli_same_named_targets_a_bad_target_and_the_exit_codes(encoder, pair, tmp_path, capsys):
    import json
    import shutil

    from ctfm.cli import main
    from ctfm.hub import save_pretrained

    source, target = pair
    model = save_pretrained(encoder, tmp_path / "model")
    targets = []
    for subject in ("s0001", "s0002"):
        (tmp_path / subject).mkdir()
        targets.append(str(shutil.copyfile(target, tmp_path / subject / "ct.nii.gz")))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a scan")
    centre = nib.affines.apply_affine(nib.load(source).affine, np.array(nib.load(source).shape) / 2)
    args = ["semantic-search", str(source), "--point", *map(str, centre), *targets, str(bad)]
    args += ["--model", str(model), "--patch-size", *map(str, PATCH)]
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 3
    printed = capsys.readouterr().out
    assert "2 searched, 1 skipped" in printed and f"skipped {bad}" in printed
    assert list(pd.read_csv(out / "matches.csv")["target"]) == targets
    for name in ("s0001_ct", "s0002_ct"):
        assert (out / f"{name}_heatmap.nii.gz").is_file() and (out / f"{name}_heatmap.png").is_file()
    record = json.loads((out / "provenance.json").read_text())
    assert [i["output_name"] for i in record["inputs"]] == ["s0001_ct", "s0002_ct", "broken"]
    assert main([*args, "--out", str(out)]) == 1
    assert "matches.csv (and 4 more): exists already" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--overwrite"]) == 3
    only_bad = ["semantic-search", str(bad), "--query-embedding", str(tmp_path / "q.npy"), "--model", str(model)]
    assert main([*args[:6], *targets, "--model", str(model), "--patch-size", *map(str, PATCH), "--out",
                 str(tmp_path / "good")]) == 0  # fmt: skip
    assert main([*args[:6], str(bad), "--model", str(model), "--patch-size", *map(str, PATCH), "--out",
                 str(tmp_path / "bad")]) == 1  # fmt: skip
    assert main([*only_bad, "--point", "0", "0", "0", "--out", str(tmp_path / "usage")]) == 2
    assert "give either SOURCE --point X Y Z or --query-embedding" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "flag"), "--overlap", "1"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_real_lps_chest_ct_and_a_shifted_crop_of_it(encoder, tmp_path):
    """3D Slicer's CTChest (NRRD, LPS): the match, given and reported in LPS, lands where the shift says."""
    import importlib.resources

    import SimpleITK as sitk

    from ctfm.io.reader import read_ct

    chest = importlib.resources.files("slicerio") / "data" / "CTChest4.nrrd"
    image = sitk.ReadImage(str(chest))
    crop = sitk.RegionOfInterest(image, [100, 96, 28], [10, 20, 3])
    shift_lps = np.array([12.0, -7.0, 20.0])
    crop.SetOrigin(tuple(np.array(crop.GetOrigin()) + shift_lps))
    target = tmp_path / "chest_crop.nrrd"
    sitk.WriteImage(crop, str(target))
    cache = TargetCache(encoder, CTPreprocessing(spacing=None), PATCH, overlap=0.0)
    expected_ras = central_window(cache, target)
    flip = np.array([-1.0, -1.0, 1.0])
    point_lps = expected_ras * flip - shift_lps
    table = run_semantic_search(str(chest), point_lps, [target], encoder, tmp_path, lps=True, cache=cache)
    np.testing.assert_allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy()[0], expected_ras * flip, atol=1e-3)
    heat = read_ct(tmp_path / "chest_crop_heatmap.nii.gz", check_hu=False)
    scan = read_ct(target)
    assert heat.shape == scan.shape
    np.testing.assert_allclose(np.asarray(heat.affine), np.asarray(scan.affine), atol=1e-3)
