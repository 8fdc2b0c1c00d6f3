import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from labelled_sample import CLASSES, PATCH

from ctfm.analysis.pseudo_labels import (
    PostProcessing,
    add_totalsegmentator_subject,
    channel_mask,
    evaluate,
    labels_from_maps,
    smooth,
)
from ctfm.errors import CTFMError

AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])


def two_blob_maps(shape=(20, 40, 40)):
    """Background first; class 1 strong in a cube, weak (0.45) in a bar touching it and in an island apart."""
    maps = np.zeros((2, *shape), dtype=np.float32)
    maps[1, 5:15, 5:15, 5:15] = 0.9
    maps[1, 8:12, 15:25, 8:12] = 0.45  # attached to the cube
    maps[1, 8:12, 8:12, 30:36] = 0.45  # an island
    maps[0] = 0.3
    return maps


def test_each_threshold_mode():
    maps = two_blob_maps()
    cube = np.zeros(maps.shape[1:], bool)
    cube[5:15, 5:15, 5:15] = True
    bar, island = np.zeros_like(cube), np.zeros_like(cube)
    bar[8:12, 15:25, 8:12] = True
    island[8:12, 8:12, 30:36] = True
    assert np.array_equal(channel_mask(maps[1], PostProcessing(threshold="global", level=0.5)), cube)
    assert np.array_equal(channel_mask(maps[1], PostProcessing(threshold="global", level=0.4)), cube | bar | island)
    # Otsu splits the channel's three levels (0, 0.45, 0.9) between 0 and 0.45 here: all three regions.
    assert np.array_equal(channel_mask(maps[1], PostProcessing(threshold="otsu")), cube | bar | island)
    # Hysteresis: weak voxels survive only when connected to strong ones.
    levels = PostProcessing(threshold="multi-level", levels=(0.4, 0.8))
    assert np.array_equal(channel_mask(maps[1], levels), cube | bar)
    assert np.array_equal(channel_mask(maps[1], PostProcessing(threshold="multi-level")), cube | bar)  # multi-Otsu
    assert not channel_mask(np.full((4, 4, 4), 0.7), PostProcessing()).any()  # a flat channel has no foreground
    with pytest.raises(CTFMError, match="threshold must be one of"):
        PostProcessing(threshold="median")


def test_labels_beat_the_background_and_keep_the_largest_component():
    maps = two_blob_maps()
    every = PostProcessing(sigma_mm=0, threshold="global", level=0.4, largest_component=False)
    labels = labels_from_maps(maps, AFFINE, every)
    assert labels[10, 10, 33] == 1 and labels[10, 20, 10] == 1  # island and bar
    labels = labels_from_maps(maps, AFFINE, PostProcessing(sigma_mm=0, threshold="global", level=0.4))
    assert labels[10, 10, 33] == 0 and labels[10, 20, 10] == 1  # the island goes, the bar is part of the cube
    maps[0, :, :, :20] = 0.95  # background wins on the left half
    labels = labels_from_maps(maps, AFFINE, every)
    assert labels[:, :, :20].max() == 0 and labels[10, 10, 33] == 1


def test_smoothing_is_in_millimetres():
    maps = np.zeros((1, 21, 21, 21), np.float32)
    maps[0, 10, 10, 10] = 1.0
    blurred = smooth(maps, np.diag([2.0, 1.0, 1.0, 1.0]), sigma_mm=2.0)[0]
    # sigma 1 voxel along the 2 mm axis, 2 voxels along the 1 mm axes: equal falloff at equal distances in mm.
    assert blurred[11, 10, 10] == pytest.approx(blurred[10, 12, 10], rel=1e-3)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-3)


def test_dice_and_average_surface_distance_in_mm():
    reference = np.zeros((12, 12, 12), np.int64)
    reference[2:8, 2:8, 2:8] = 1
    same = evaluate(reference, reference, AFFINE, ("background", "cube"))[0]
    assert same["dice"] == pytest.approx(1.0) and same["asd_mm"] == pytest.approx(0.0)
    moved = np.roll(reference, 1, axis=0)  # one voxel along the 2 mm axis
    row = evaluate(moved, reference, AFFINE, ("background", "cube"))[0]
    assert row["dice"] == pytest.approx(2 * 180 / 432)
    assert 0.5 < row["asd_mm"] < 2.0  # the two faces that moved are 2 mm off, the others 0 to 2 mm
    missing = evaluate(np.zeros_like(reference), reference, AFFINE, ("background", "cube"))[0]
    assert missing["dice"] == 0.0 and np.isnan(missing["asd_mm"])


def test_a_totalsegmentator_folder_the_recipe_data_module_reads(labelled, tmp_path):
    from ctfm.data.totalsegmentator import TotalSegmentatorDataModule, read_totalsegmentator
    from ctfm.transforms.preprocess import CTPreprocessing

    _, reference, labels, _, _ = labelled
    image = nib.load(labels)
    array = np.asarray(image.dataobj)
    names = ("background", "lung_upper_lobe_left", "liver")
    for image_id, split in (("a", "train"), ("b", "val"), ("a", "train")):  # writing "a" twice replaces it
        add_totalsegmentator_subject(tmp_path, image_id, reference, array, image.affine, names, split)
    dataset = read_totalsegmentator(tmp_path, names[1:])
    assert [(s.image_id, s.split) for s in dataset.subjects] == [("b", "val"), ("a", "train")]
    liver = nib.load(tmp_path / "a" / "segmentations" / "liver.nii.gz")
    assert np.array_equal(np.asarray(liver.dataobj), array == 2)
    assert nib.load(tmp_path / "a" / "ct.nii.gz").shape == liver.shape
    TotalSegmentatorDataModule(tmp_path, CTPreprocessing(spacing=None), (8, 16, 16), classes=list(names[1:]))
    with pytest.raises(CTFMError, match=r"classes \['lung'\] are not TotalSegmentator classes"):
        add_totalsegmentator_subject(tmp_path, "c", reference, array, image.affine, ("background", "lung"))


@pytest.mark.slow
def test_cli_prototypes_then_pseudo_labels_with_evaluation_and_a_bad_target(tiny_encoder, labelled, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.hub import save_pretrained

    folder, reference, labels, target, truth = labelled
    model = save_pretrained(tiny_encoder, tmp_path / "model")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a scan")
    prototypes = tmp_path / "prototypes.pt"
    args = ["prototypes", "--images", str(reference), "--labels", str(labels), "--classes", "1=lung", "2=abdomen"]
    args += ["--model", str(model), "--out", str(prototypes), "--patch-size", *map(str, PATCH), "--native-spacing"]
    assert main(args) == 0
    assert "3 prototypes of 64-d" in capsys.readouterr().out
    out = tmp_path / "out"
    args = ["pseudo-label", str(target), str(bad), "--prototypes", str(prototypes), "--model", str(model)]
    args += ["--out", str(out), "--reference-dir", str(truth.parent), "--all-components", "--sigma-mm", "4"]
    assert main(args) == 3  # done, one target skipped
    printed = capsys.readouterr().out
    assert "1 labelled, 1 skipped" in printed and "broken.nii.gz" in printed
    scan, result = nib.load(target), nib.load(out / "target.nii.gz")
    assert result.shape == scan.shape
    np.testing.assert_allclose(result.affine, scan.affine, atol=1e-5)
    assert json.loads((out / "target.json").read_text())["labels"] == {"0": "background", **{
        str(k): v for k, v in CLASSES.items()}}  # fmt: skip
    maps = nib.load(out / "target_probabilities.nii.gz")
    assert maps.shape == (*scan.shape, 3)
    np.testing.assert_allclose(maps.affine, scan.affine, atol=1e-5)
    assert (out / "target.png").read_bytes()[:4] == b"\x89PNG"
    scores = pd.read_csv(out / "evaluation.csv")
    assert list(scores["class"]) == ["lung", "abdomen"] and (scores["dice"] > 0.3).all()
    assert scores["asd_mm"].between(0, 30).all()
    # Another model than the prototypes': one line, no traceback.
    other = save_pretrained(__import__("ctfm.nn", fromlist=["x"]).ct_fm_encoder(init_filters=4), tmp_path / "other")
    args = ["pseudo-label", str(target), "--prototypes", str(prototypes), "--model", str(other), "--out", str(out)]
    assert main(args) == 1
    assert "prototypes.pt: prototypes were made with another model" in capsys.readouterr().err
    args = ["pseudo-label", str(target), "--prototypes", str(prototypes), "--model", str(model), "--out", str(out)]
    assert main([*args, "--totalsegmentator-layout", str(tmp_path / "ts")]) == 1
    assert "are not TotalSegmentator classes" in capsys.readouterr().err


def test_cli_same_named_targets_keep_their_own_outputs_and_exit_codes(tiny_encoder, labelled, tmp_path, capsys):
    import shutil

    from ctfm.analysis.prototypes import compute_prototypes
    from ctfm.cli import main
    from ctfm.hub import save_pretrained
    from ctfm.transforms.preprocess import CTPreprocessing

    folder, reference, labels, target, truth = labelled
    model = save_pretrained(tiny_encoder, tmp_path / "model")
    prototypes = tmp_path / "prototypes.pt"
    compute_prototypes(
        tiny_encoder, [reference], [labels], CLASSES, patch_size=PATCH, preprocess=CTPreprocessing(spacing=None)
    ).save(prototypes)
    targets = []
    for subject in ("s0001", "s0002"):
        (tmp_path / subject).mkdir()
        targets.append(str(shutil.copyfile(target, tmp_path / subject / "ct.nii.gz")))
    out = tmp_path / "out"
    args = ["pseudo-label", *targets, "--prototypes", str(prototypes), "--model", str(model), "--no-preview"]
    assert main([*args, "--out", str(out)]) == 0
    assert "2 labelled, 0 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "provenance.json", "s0001_ct.json", "s0001_ct.nii.gz", "s0001_ct_probabilities.nii.gz",
        "s0002_ct.json", "s0002_ct.nii.gz", "s0002_ct_probabilities.nii.gz",
    ]  # fmt: skip
    record = json.loads((out / "provenance.json").read_text())
    assert [i["output_name"] for i in record["inputs"][:2]] == ["s0001_ct", "s0002_ct"]
    assert record["inputs"][2]["role"] == "prototypes" and len(record["model"]["sha256"]) == 64
    assert main([*args, "--out", str(out)]) == 1
    assert "s0001_ct.nii.gz (and 5 more): exists already" in capsys.readouterr().err
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a scan")
    args = ["pseudo-label", str(bad), "--prototypes", str(prototypes), "--model", str(model)]
    assert main([*args, "--out", str(tmp_path / "bad")]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "flag"), "--threshold", "median"])
    assert exit_info.value.code == 2


#: TotalSegmentator's values of three classes of the synthetic sample's tissues (sample labels: liver 5, heart 8 with
#: its blood 9, lung 3 with its vessels 4).
TOTALSEGMENTATOR_VALUES = {5: "liver", 51: "heart", 14: "lung_lower_lobe_right"}


def totalsegmentator_valued(labelled, folder):
    """Reference and target label maps of the labelled sample valued as TotalSegmentator values them (no sidecar)."""
    from labelled_sample import SHAPE, SHIFT, SPACING, shifted, to_lps_file_order

    from ctfm.data.sample import generate_ct

    _, reference, _, target, _ = labelled
    tissue = generate_ct(SHAPE, SPACING, seed=7).labels.transpose(2, 1, 0)  # (z, y, x) -> file order
    valued = np.zeros(tissue.shape, np.int16)
    valued[tissue == 5] = 5
    valued[np.isin(tissue, [8, 9])] = 51
    valued[np.isin(tissue, [3, 4])] = 14
    reference_affine = nib.load(reference).affine
    folder.mkdir()
    reference_labels = folder / "reference_ts.nii.gz"
    nib.save(nib.Nifti1Image(valued, reference_affine), reference_labels)
    target_valued, target_affine = to_lps_file_order(shifted(valued, SHIFT, 0), reference_affine)
    truth = folder / "truth" / "target.nii.gz"
    truth.parent.mkdir()
    nib.save(nib.Nifti1Image(target_valued, target_affine), truth)
    np.testing.assert_allclose(target_affine, nib.load(target).affine)
    return reference_labels, truth


def numpy_dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    return 2 * float((predicted & reference).sum()) / float(predicted.sum() + reference.sum())


@pytest.mark.slow
def test_totalsegmentator_valued_references_are_scored_class_by_class_by_name(tiny_encoder, labelled, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.hub import save_pretrained

    _, reference, _, target, _ = labelled
    reference_labels, truth = totalsegmentator_valued(labelled, tmp_path / "ts")
    model = save_pretrained(tiny_encoder, tmp_path / "model")
    prototypes = tmp_path / "prototypes.pt"
    classes = [f"{value}={name}" for value, name in TOTALSEGMENTATOR_VALUES.items()]
    args = ["prototypes", "--images", str(reference), "--labels", str(reference_labels), "--classes", *classes]
    args += ["--model", str(model), "--out", str(prototypes), "--patch-size", *map(str, PATCH), "--native-spacing"]
    assert main(args) == 0
    # a second target with no reference: labelled, and reported unscored
    lonely = tmp_path / "others" / "lonely.nii.gz"
    lonely.parent.mkdir()
    lonely.write_bytes(target.read_bytes())
    out = tmp_path / "out"
    args = ["pseudo-label", str(target), str(lonely), "--prototypes", str(prototypes), "--model", str(model)]
    args += ["--out", str(out), "--reference-dir", str(truth.parent), "--sigma-mm", "4", "--all-components"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 labelled" in printed and "1 target(s) unscored" in printed
    scores = pd.read_csv(out / "evaluation.csv")
    scored = scores[scores["status"] == "scored"].set_index("class")
    assert list(scored.index) == list(TOTALSEGMENTATOR_VALUES.values())
    predicted = np.asarray(nib.load(out / "target.nii.gz").dataobj)
    names = json.loads((out / "target.json").read_text())["labels"]
    reference_map = np.asarray(nib.load(truth).dataobj)
    for value, name in TOTALSEGMENTATOR_VALUES.items():
        label = int(next(k for k, v in names.items() if v == name))
        mine, theirs = predicted == label, reference_map == value
        assert scored.loc[name, "reference_value"] == value
        assert scored.loc[name, "reference_voxels"] == theirs.sum() > 0
        assert scored.loc[name, "predicted_voxels"] == mine.sum()
        assert scored.loc[name, "dice"] == pytest.approx(numpy_dice(mine, theirs), abs=1e-6)
    assert scored["dice"].max() > 0.2  # the tiny encoder finds at least one organ
    unscored = scores[scores["status"] == "unscored"]
    assert list(unscored["image"].unique()) == [str(lonely)] and unscored["dice"].isna().all()
    assert unscored["note"].str.contains("no reference label map").all()
    assert (out / "lonely.nii.gz").is_file()

    # The same reference under other values, mapped by the user.
    renumbered = tmp_path / "renumbered"
    renumbered.mkdir()
    image = nib.load(truth)
    relabelled = np.select([reference_map == 5, reference_map == 51, reference_map == 14], [1, 2, 3], 0)
    nib.save(nib.Nifti1Image(relabelled.astype(np.int16), image.affine), renumbered / "target.nii.gz")
    args = ["pseudo-label", str(target), "--prototypes", str(prototypes), "--model", str(model), "--sigma-mm", "4"]
    args += ["--all-components", "--reference-dir", str(renumbered)]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err
    assert "renumbered/target.nii.gz: reference values [1, 2, 3] match none of the classes" in error
    assert "5=liver 51=heart 14=lung_lower_lobe_right" in error and "Traceback" not in error
    assert not (tmp_path / "refused").exists()  # refused before any work
    mapping = ["--reference-classes", "1=liver", "2=heart", "3=lung_lower_lobe_right"]
    assert main([*args, "--out", str(tmp_path / "mapped"), *mapping]) == 0
    mapped = pd.read_csv(tmp_path / "mapped" / "evaluation.csv").set_index("class")
    np.testing.assert_allclose(mapped["dice"], scored["dice"], atol=1e-6)
    assert main([*args, "--out", str(tmp_path / "bad"), "--reference-classes", "1=spleen"]) == 1
    assert "reference classes ['spleen'] are not classes of the prototypes" in capsys.readouterr().err
