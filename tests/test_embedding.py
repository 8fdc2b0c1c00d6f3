import json

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import MetaTensor

from ctfm.embedding import embed, embed_patches, patch_starts
from ctfm.embedding_table import embed_to_parquet
from ctfm.nn import ct_fm_encoder, pooled_features
from ctfm.transforms.preprocess import CTPreprocessing

PATCH = (8, 32, 32)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()


def test_patch_grid_covers_the_volume_without_redundant_patches():
    starts = patch_starts((20, 70, 64), PATCH, overlap=0.0)
    assert len(starts) == 3 * 3 * 2
    covered = np.zeros((20, 70, 64), dtype=int)
    for z, y, x in starts:
        covered[z : z + 8, y : y + 32, x : x + 32] += 1
    assert covered.min() == 1
    assert len(patch_starts((20, 70, 64), PATCH, overlap=0.5)) > len(starts)


def test_patch_embeddings_equal_the_encoder_on_each_patch(encoder):
    volume = torch.rand(20, 70, 64, generator=torch.Generator().manual_seed(0))
    patches = embed_patches(encoder, volume, patch_size=PATCH, batch_size=5)
    starts = patch_starts(volume.shape, PATCH, overlap=0.0)
    assert patches.embeddings.shape == (len(starts), 64)
    z, y, x = starts[4]
    direct = pooled_features(encoder, volume[None, None, z : z + 8, y : y + 32, x : x + 32])[0]
    torch.testing.assert_close(patches.embeddings[4], direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        patches.centers_voxel[4], torch.tensor([z + 3.5, y + 15.5, x + 15.5], dtype=torch.float64)
    )


def test_batch_size_does_not_change_the_result(encoder):
    volume = torch.rand(16, 64, 64, generator=torch.Generator().manual_seed(1))
    one = embed(encoder, volume, patch_size=PATCH, batch_size=1)
    many = embed(encoder, volume, patch_size=PATCH, batch_size=7)
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduce", ["mean", "min", "max"])
def test_reductions(encoder, reduce):
    volume = torch.rand(16, 64, 64, generator=torch.Generator().manual_seed(2))
    patches = embed(encoder, volume, patch_size=PATCH, reduce=None)
    expected = getattr(patches.embeddings, reduce)(dim=0)
    expected = expected.values if reduce != "mean" else expected
    torch.testing.assert_close(embed(encoder, volume, patch_size=PATCH, reduce=reduce), expected)


def test_volume_smaller_than_a_patch_is_padded_not_rejected(encoder):
    assert embed(encoder, torch.rand(3, 10, 12), patch_size=PATCH).shape == (64,)


def test_scan_on_disk_is_preprocessed_and_centres_map_to_world_coordinates(encoder, sample_nifti):
    from ctfm.io.reader import read_ct

    patches = embed(encoder, sample_nifti, patch_size=PATCH, reduce=None)
    volume = CTPreprocessing(min_size=PATCH)(sample_nifti)
    assert len(patches.embeddings) == len(patch_starts(volume.shape[1:], PATCH, overlap=0.0))
    homogeneous = torch.cat([patches.centers_voxel, torch.ones(len(patches.centers_voxel), 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(patches.centers_mm, (homogeneous @ volume.affine.double().T)[:, :3])
    # Every centre lies inside the original scan's physical extent.
    original = read_ct(sample_nifti)
    corners = torch.tensor(
        np.array(np.meshgrid(*[[0, n - 1] for n in original.shape[1:]])).reshape(3, -1).T, dtype=torch.float64
    )
    world = (torch.cat([corners, torch.ones(8, 1, dtype=torch.float64)], 1) @ original.affine.double().T)[:, :3]
    lower, upper = world.min(0).values - 1e-3, world.max(0).values + 1e-3
    assert torch.all((patches.centers_mm >= lower) & (patches.centers_mm <= upper))


def test_metatensor_input_matches_the_path_input(encoder, sample_nifti):
    from ctfm.io.reader import read_ct

    from_path = embed(encoder, sample_nifti, patch_size=PATCH)
    from_tensor = embed(encoder, read_ct(sample_nifti), patch_size=PATCH)
    torch.testing.assert_close(from_path, from_tensor)


def test_corpus_table_skips_bad_scans_and_names_them(encoder, sample_nifti, tmp_path):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really a nifti")
    out = tmp_path / "embeddings.parquet"
    report = embed_to_parquet([sample_nifti, corrupt, sample_nifti], out, model=encoder, patch_size=PATCH)
    table = pd.read_parquet(out)
    assert report.embedded == 1 and report.already == [str(sample_nifti)] and list(table["path"]) == [str(sample_nifti)]
    assert len(table["embedding"][0]) == 64
    assert [path for path, _ in report.skipped] == [str(corrupt)]
    assert "corrupt.nii.gz" in report.summary()


def test_a_plain_array_of_the_wrong_rank_is_rejected(encoder):
    with pytest.raises(ValueError, match="shape"):
        embed(encoder, MetaTensor(torch.rand(2, 2, 8, 32, 32)), patch_size=PATCH, preprocess=None)


def test_cli_embeds_scans_with_a_local_model(encoder, sample_nifti, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.hub import save_pretrained

    model_dir = save_pretrained(encoder, tmp_path / "model")
    out = tmp_path / "table.parquet"
    code = main(
        ["embed", str(sample_nifti), "--model", str(model_dir), "--out", str(out), "--patch-size", "8", "32", "32"]
    )
    assert code == 0 and "1 embedded, 0 already in the table, 0 skipped; table: " in capsys.readouterr().out
    table = pd.read_parquet(out)
    expected = embed(encoder, sample_nifti, patch_size=PATCH)
    torch.testing.assert_close(torch.tensor(table["embedding"][0], dtype=torch.float32), expected, rtol=1e-4, atol=1e-5)
    # A re-run resumes: the scan already in the table, a broken one skipped (exit 3); the record lists both runs.
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a scan")
    args = ["--model", str(model_dir), "--patch-size", "8", "32", "32"]
    assert main(["embed", str(sample_nifti), str(bad), *args, "--out", str(out)]) == 3
    assert "0 embedded, 1 already in the table, 1 skipped" in capsys.readouterr().out
    record = json.loads((tmp_path / "table.parquet.provenance.json").read_text())
    assert [entry["path"] for entry in record["inputs"]] == [str(sample_nifti), str(bad)]
    assert len(record["earlier_runs"]) == 1 and record["model"]["name"] == str(model_dir)
    assert main(["embed", str(bad), *args, "--out", str(tmp_path / "bad.parquet")]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(sample_nifti), *args, "--out", str(tmp_path / "flag.parquet"), "--overlap", "1.5"])
    assert exit_info.value.code == 2


def test_preprocessed_metatensor_keeps_its_world_coordinates(encoder, sample_nifti):
    volume = CTPreprocessing(min_size=PATCH)(sample_nifti)
    from_path = embed(encoder, sample_nifti, patch_size=PATCH, reduce=None)
    from_volume = embed(encoder, volume, patch_size=PATCH, reduce=None, preprocess=None)
    torch.testing.assert_close(from_volume.embeddings, from_path.embeddings)
    torch.testing.assert_close(from_volume.centers_mm, from_path.centers_mm)
