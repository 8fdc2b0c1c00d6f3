"""``ctfm embed --masks``: one row per (scan, region), resumable, the mask fingerprinted, settings checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

PATCH = (8, 32, 32)
ORGANS = ("liver", "spleen")


@pytest.fixture(scope="module")
def encoder():
    from ctfm.nn import ct_fm_encoder

    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()


def _case(folder, seed):
    """A synthetic torso and its tissue label map with a names sidecar, as ``<folder>/ct.nii.gz`` and
    ``<folder>/labels.nii.gz`` + ``labels.json``."""
    from ctfm.data.sample import TISSUES, generate_ct, write_labels_nifti, write_nifti

    sample = generate_ct((24, 64, 64), (3.0, 1.0, 1.0), seed=seed)
    scan = write_nifti(sample, folder / "ct.nii.gz")
    write_labels_nifti(sample, folder / "labels.nii.gz")
    (folder / "labels.json").write_text(json.dumps({"labels": {str(v): n for v, n in TISSUES.items() if v}}))
    return scan


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two same-named scans ``case_001/ct.nii.gz`` and ``case_002/ct.nii.gz``, each with its own label map."""
    root = tmp_path_factory.mktemp("cases")
    return [_case(root / f"case_00{i}", seed=i) for i in (1, 2)]


MASKS = "{dir}/labels.nii.gz"


def _embed(cases, out, encoder, **kwargs):
    from ctfm.embedding_table import embed_to_parquet

    options = {"model": encoder, "patch_size": PATCH, "masks": MASKS, "labels": list(ORGANS), **kwargs}
    return embed_to_parquet(cases, out, **options)


@pytest.mark.slow
def test_one_row_per_scan_and_region_equal_to_embed_with_the_mask(encoder, cases, tmp_path):
    """Same-named scans keep their own masks; each row's vector is ``ctfm.embed(..., mask=, labels=)``."""
    import ctfm
    from ctfm.embedding_table import read_table
    from ctfm.transforms.preprocess import CTPreprocessing

    report = _embed(cases, tmp_path / "organs.parquet", encoder)
    frame, settings = read_table(tmp_path / "organs.parquet")
    assert report.exit_code == 0 and report.embedded == 4
    assert sorted(zip(frame["path"], frame["region"])) == sorted(
        (str(c.resolve()), organ) for c in cases for organ in ORGANS
    )
    assert settings["pool"] == "mean" and settings["mode"] == "tiled"
    assert set(frame["label_value"]) == {5, 6}
    assert all(mask == str(Path(path).parent / "labels.nii.gz") for path, mask in zip(frame["path"], frame["mask"]))
    for case in cases:
        for organ in ORGANS:
            row = frame[(frame["path"] == str(case.resolve())) & (frame["region"] == organ)].iloc[0]
            expected = ctfm.embed(
                encoder, case, mask=case.parent / "labels.nii.gz", labels=[organ], patch_size=PATCH,
                preprocess=CTPreprocessing(min_size=PATCH),
            )  # fmt: skip
            stored = torch.tensor(row["embedding"], dtype=torch.float32)
            torch.testing.assert_close(stored, expected, rtol=1e-4, atol=1e-5)
    # the two cases' livers differ, and so do their masks' fingerprints
    livers = frame[frame["region"] == "liver"]
    assert livers["mask_sha256"].nunique() == 2 and livers["mask_sha256"].str.len().eq(64).all()
    assert not np.allclose(*livers["embedding"].tolist())


@pytest.mark.slow
def test_rerun_adds_only_missing_regions_and_other_settings_are_refused(encoder, cases, tmp_path):
    from ctfm.embedding_table import TableMismatchError

    out = tmp_path / "organs.parquet"
    first = _embed(cases[:1], out, encoder, pool="max")
    assert first.embedded == 2
    again = _embed(cases, out, encoder, pool="max")
    assert again.embedded == 2 and len(again.already) == 2
    assert len(pd.read_parquet(out)) == 4
    more = _embed(cases, out, encoder, pool="max", labels=["liver", "kidney"])
    assert more.embedded == 2 and sorted(pd.read_parquet(out)["region"]).count("kidney") == 2
    with pytest.raises(TableMismatchError, match="--masks/--pool 'max', not 'mean'"):
        _embed(cases, out, encoder, pool="mean")
    with pytest.raises(TableMismatchError, match="mode"):
        _embed(cases, out, encoder, pool="crop", crop_size=(16, 32, 32))


def test_a_missing_mask_or_an_empty_region_is_skipped_and_counted(encoder, cases, tmp_path, caplog):
    from ctfm.data.sample import LABEL
    from ctfm.reports import EXIT_PARTIAL

    lonely = tmp_path / "case_003" / "ct.nii.gz"
    lonely.parent.mkdir()
    lonely.write_bytes(cases[0].read_bytes())
    report = _embed(
        [cases[0], lonely], tmp_path / "t.parquet", encoder, labels=["liver", str(LABEL["lung_vessel"] + 100)],
        pool="crop", crop_size=(16, 32, 32),
    )  # fmt: skip
    skipped = dict(report.skipped)
    assert report.exit_code == EXIT_PARTIAL and report.embedded == 1
    assert f"no mask at {lonely.parent / 'labels.nii.gz'}" in skipped[str(lonely.resolve())]
    assert "holds no voxel" in skipped[f"{cases[0].resolve()}#{LABEL['lung_vessel'] + 100}"]
    assert str(lonely.parent / "labels.nii.gz") in caplog.text


def test_a_folder_of_masks_maps_by_stem_and_refuses_same_named_scans(encoder, cases, tmp_path):
    from ctfm.errors import UsageError
    from ctfm.io.regions import MissingMaskError, mask_for

    folder = tmp_path / "masks"
    (folder / "ct").mkdir(parents=True)  # a TotalSegmentator folder named like the scan
    assert mask_for(cases[0], folder) == folder / "ct"
    assert mask_for(cases[0], "{dir}/labels.nii.gz") == cases[0].parent / "labels.nii.gz"
    (tmp_path / "case_002_ct.nii.gz").touch()
    assert mask_for(cases[1], str(tmp_path / "{parent}_{stem}.nii.gz")) == tmp_path / "case_002_ct.nii.gz"
    with pytest.raises(MissingMaskError, match="case_001_ct.nii.gz"):
        mask_for(cases[0], str(tmp_path / "{parent}_{stem}.nii.gz"))
    with pytest.raises(UsageError, match="both named 'ct'.*pattern"):
        _embed(cases, tmp_path / "t.parquet", encoder, masks=folder)


def test_cli_writes_region_rows_and_refuses_labels_without_masks(cases, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.hub import save_pretrained
    from ctfm.nn import ct_fm_encoder

    model = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "tiny")
    out = tmp_path / "organs.parquet"
    common = ["--model", str(model), "--patch-size", *map(str, PATCH), "--out", str(out)]
    assert main(["embed", *map(str, cases), *common, "--labels", "liver"]) == 2
    assert "give --masks too" in capsys.readouterr().err
    assert main(["embed", *map(str, cases), *common, "--masks", MASKS, "--crop-size", "8", "8", "8"]) == 2
    assert main(["embed", *map(str, cases), *common, "--masks", MASKS, "--whole-volume"]) == 2
    assert "--pool crop is its one forward pass" in capsys.readouterr().err
    code = main(["embed", str(cases[0]), *common, "--masks", MASKS, "--labels", "liver,spleen", "--pool", "crop",
                 "--crop-size", "16", "32", "32"])  # fmt: skip
    assert code == 0 and sorted(pd.read_parquet(out)["region"]) == ["liver", "spleen"]
