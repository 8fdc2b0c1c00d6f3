import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.analysis.query_vectors import QueryVector, patch_query, save_query_vector
from ctfm.embedding_table import embed_to_parquet, read_table
from ctfm.nn import ct_fm_encoder

PATCH = (8, 32, 32)
SHIFT = np.array([40.0, -25.0, 10.0])  # RAS mm: the copy's anatomy sits this far from the original's


@pytest.fixture(scope="module")
def patch_table(sample_nifti, tmp_path_factory):
    """A patch table of a small scan and of the same voxels with the world frame moved by SHIFT."""
    folder = tmp_path_factory.mktemp("patches")
    image = nib.load(sample_nifti)
    data = np.asarray(image.dataobj)[16:80, 16:80]
    original, moved = folder / "original.nii.gz", folder / "moved.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine), original)
    affine = image.affine.copy()
    affine[:3, 3] += SHIFT
    nib.save(nib.Nifti1Image(data, affine), moved)
    torch.manual_seed(0)
    table = folder / "patches.parquet"
    embed_to_parquet([original, moved], table, model=ct_fm_encoder(init_filters=4), patch_size=PATCH, patches=True)
    return table, original, moved


def test_a_patch_search_finds_the_same_patch_of_the_moved_copy_at_its_world_centre(patch_table, tmp_path, capsys):
    from ctfm.cli import main

    table, original, moved = patch_table
    frame, _ = read_table(table)
    centres = np.asarray(frame["patch_centers_mm"][0])
    out = tmp_path / "neighbours.csv"
    args = ["search", "--table", str(table), "--patches", "--query-embedding", str(table), str(original), "2"]
    assert main([*args, "-k", "3", "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert list(rows.columns) == ["query", "rank", "path", "patch", "x_mm", "y_mm", "z_mm", "similarity"]
    assert list(rows["rank"]) == [1, 2, 3] and rows["query"][0] == f"{original}#2"
    assert not ((rows["path"] == str(original)) & (rows["patch"] == 2)).any()  # the query patch itself is left out
    assert rows["path"][0] == str(moved) and rows["patch"][0] == 2
    assert rows["similarity"][0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(rows[["x_mm", "y_mm", "z_mm"]].to_numpy()[0], centres[2] + SHIFT, atol=1e-3)
    assert "mm patch 2" in capsys.readouterr().out


def test_a_saved_vector_finds_what_the_table_row_finds(patch_table, tmp_path):
    from ctfm.analysis.neighbours import search_table

    table, original, moved = patch_table
    row = patch_query(table, str(original), 2)
    saved = save_query_vector(tmp_path / "q.npy", QueryVector(row.vector, "q", row.settings))
    from ctfm.analysis.query_vectors import load_query_vector

    by_vector = search_table(None, table, k=4, patches=True, query_vector=load_query_vector(saved))
    by_row = search_table(None, table, k=3, patches=True, query_vector=row)
    # The saved vector is not a row of the table, so it finds itself too (tied with the moved copy's patch 2);
    # then the same neighbours (each patch of one scan ties with the copy's, so compare patch and similarity).
    assert set(zip(by_vector["path"][:2], by_vector["patch"][:2])) == {(str(original), 2), (str(moved), 2)}
    cols = ["patch", "similarity"]
    pd.testing.assert_frame_equal(by_vector[cols].iloc[1:].reset_index(drop=True), by_row[cols])


def test_wrong_width_another_model_and_a_scan_table_are_refused(patch_table, sample_nifti, tmp_path, capsys):
    from ctfm.cli import main

    table, original, _ = patch_table
    np.save(tmp_path / "narrow.npy", np.ones(7, np.float32))
    assert main(["search", "--table", str(table), "--patches", "--query-embedding", str(tmp_path / "narrow.npy")]) == 1
    assert "narrow.npy: a 7-wide vector;" in capsys.readouterr().err
    row = patch_query(table, str(original), 0)
    foreign = QueryVector(row.vector, "foreign", {**row.settings, "model_sha256": "0" * 64, "model": "other"})
    save_query_vector(tmp_path / "foreign.npy", foreign)
    assert main(["search", "--table", str(table), "--query-embedding", str(tmp_path / "foreign.npy")]) == 1
    assert "foreign.npy: made by another model ('other')" in capsys.readouterr().err
    scans = tmp_path / "scans.parquet"
    embed_to_parquet([sample_nifti], scans, model=ct_fm_encoder(init_filters=4), patch_size=PATCH)
    assert main(["search", "--table", str(scans), "--patches", "--query-embedding", str(tmp_path / "foreign.npy")]) == 1
    assert "has no patch embeddings (write it with `ctfm embed --patches`)" in capsys.readouterr().err
    assert main(["search", str(original), "--table", str(table), "--patches"]) == 1
    assert "a patch search needs a patch as the query" in capsys.readouterr().err
