import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.analysis.query_vectors import QueryVector, check_query, load_query_vector, patch_query, save_query_vector
from ctfm.analysis.semantic_search import point_query, run_semantic_search
from ctfm.analysis.tiles import TargetCache
from ctfm.embedding_table import TableMismatchError, embed_to_parquet, read_table
from ctfm.errors import CTFMError
from ctfm.nn import ct_fm_encoder
from ctfm.transforms.preprocess import CTPreprocessing

PATCH = (8, 32, 32)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()


@pytest.fixture(scope="module")
def small_scan(sample_nifti, tmp_path_factory):
    """The sample's central 64 x 64 voxels: few windows to embed."""
    image = nib.load(sample_nifti)
    path = tmp_path_factory.mktemp("scan") / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[16:80, 16:80], image.affine), path)
    return path


def test_a_saved_vector_keeps_its_settings_and_a_bare_one_only_its_width(tmp_path):
    settings = {"model_sha256": "abc", "patch_size": [8, 32, 32], "preprocessing": {"spacing": [3.0, 1.0, 1.0]}}
    path = save_query_vector(tmp_path / "q.npy", QueryVector(np.arange(4, dtype=np.float32), "mine", settings))
    loaded = load_query_vector(path)
    assert loaded.vector.tolist() == [0, 1, 2, 3] and loaded.settings["model_sha256"] == "abc"
    assert json.loads((tmp_path / "q.npy.json").read_text())["embedding_dim"] == 4
    np.save(tmp_path / "bare.npy", np.ones((1, 4), np.float32))
    assert load_query_vector(tmp_path / "bare.npy").settings is None
    with pytest.raises(CTFMError, match=r"bare.npy: a 4-wide vector; the table holds 8-wide embeddings"):
        check_query(load_query_vector(tmp_path / "bare.npy"), 8, settings, "the table")
    np.save(tmp_path / "matrix.npy", np.ones((3, 4), np.float32))
    with pytest.raises(CTFMError, match="matrix.npy: a query vector must be one finite vector"):
        load_query_vector(tmp_path / "matrix.npy")


def test_another_models_vector_or_other_patch_settings_are_refused():
    mine = {"model_sha256": "abc", "patch_size": [8, 32, 32], "preprocessing": {"spacing": [3.0, 1.0, 1.0]}}
    vector = np.zeros(4, np.float32)
    check_query(QueryVector(vector, "q", mine), 4, mine, "t")
    with pytest.raises(TableMismatchError, match="q: made by another model"):
        check_query(QueryVector(vector, "q", {**mine, "model_sha256": "xyz"}), 4, mine, "t")
    with pytest.raises(TableMismatchError, match=r"q: made from \[16, 64, 64\] patches"):
        check_query(QueryVector(vector, "q", {**mine, "patch_size": [16, 64, 64]}), 4, mine, "t")
    with pytest.raises(TableMismatchError, match="q: preprocessed with spacing None"):
        check_query(QueryVector(vector, "q", {**mine, "preprocessing": {"spacing": None}}), 4, mine, "t")


def test_semantic_search_with_the_saved_vector_equals_the_point_search(encoder, small_scan, tmp_path):
    cache = TargetCache(encoder, CTPreprocessing(), PATCH, overlap=0.5)
    centre = nib.affines.apply_affine(nib.load(small_scan).affine, np.array(nib.load(small_scan).shape) / 2)
    by_point = run_semantic_search(small_scan, centre, [small_scan], encoder, tmp_path / "point", cache=cache)
    saved = save_query_vector(tmp_path / "q.npy", point_query(small_scan, centre, encoder, cache))
    query = load_query_vector(saved)
    by_vector = run_semantic_search(None, None, [small_scan], encoder, tmp_path / "vector", cache=cache, query=query)
    pd.testing.assert_frame_equal(by_vector, by_point)
    heat = [nib.load(tmp_path / run / "small_heatmap.nii.gz").get_fdata() for run in ("point", "vector")]
    np.testing.assert_array_equal(*heat)
    other = TargetCache(ct_fm_encoder(init_filters=4).eval(), CTPreprocessing(), PATCH, overlap=0.5)
    with pytest.raises(TableMismatchError, match="q.npy: made by another model"):
        run_semantic_search(None, None, [small_scan], other.model, tmp_path / "other", cache=other, query=query)
    narrow = QueryVector(query.vector[:5], "narrow.npy", None)
    with pytest.raises(CTFMError, match="narrow.npy: a 5-wide vector; the model embeds .*small.nii.gz in [0-9]+"):
        run_semantic_search(None, None, [small_scan], encoder, tmp_path / "narrow", cache=cache, query=narrow)


def test_a_patch_row_of_a_table_is_its_window_embedding_and_a_query(encoder, small_scan, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.hub import save_pretrained

    model = save_pretrained(encoder, tmp_path / "model")
    table = tmp_path / "patches.parquet"
    embed_to_parquet([small_scan], table, model=str(model), patch_size=PATCH, overlap=0.5, patches=True)
    frame, _ = read_table(table)
    query = patch_query(table, str(small_scan), 3)
    np.testing.assert_array_equal(query.vector, np.asarray(frame["patch_embeddings"][0][3], np.float32))
    # The same patch as a semantic-search query: the best window of the scan itself is that patch's centre.
    out = tmp_path / "out"
    args = ["semantic-search", str(small_scan), "--query-embedding", str(table), str(small_scan), "3"]
    args += ["--model", str(model), "--out", str(out), "--patch-size", *map(str, PATCH)]
    assert main(args) == 0
    matches = pd.read_csv(out / "matches.csv")
    centre = np.asarray(frame["patch_centers_mm"][0][3])
    np.testing.assert_allclose(matches[["x_mm", "y_mm", "z_mm"]].to_numpy()[0], centre, atol=1e-3)
    assert matches["similarity"][0] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(CTFMError, match="has patches 0..[0-9]+, not 999"):
        patch_query(table, str(small_scan), 999)


def test_cli_semantic_search_needs_one_kind_of_query(small_scan, tmp_path, capsys):
    from ctfm.cli import main

    assert main(["semantic-search", str(small_scan), "--out", str(tmp_path)]) == 2  # a usage error
    assert "give either SOURCE --point X Y Z or --query-embedding" in capsys.readouterr().err


def test_a_saved_query_records_its_model_by_path_and_fingerprint(encoder, small_scan, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.embedding_table import model_fingerprint
    from ctfm.hub import save_pretrained

    model = save_pretrained(encoder, tmp_path / "model")
    centre = nib.affines.apply_affine(nib.load(small_scan).affine, np.array(nib.load(small_scan).shape) / 2)
    common = ["--out", str(tmp_path / "out"), "--patch-size", *map(str, PATCH)]
    args = ["semantic-search", str(small_scan), str(small_scan), "--point", *map(str, centre)]
    assert main([*args, "--save-query", str(tmp_path / "q.npy"), "--model", str(model), *common]) == 0
    record = json.loads((tmp_path / "q.npy.json").read_text())
    assert record["model"] == str(model.resolve()) and record["model_sha256"] == model_fingerprint(encoder)
    torch.manual_seed(1)
    other = save_pretrained(ct_fm_encoder(init_filters=4).eval(), tmp_path / "other")
    capsys.readouterr()
    args = ["semantic-search", str(small_scan), "--query-embedding", str(tmp_path / "q.npy"), "--model", str(other)]
    assert main([*args, *common, "--overwrite"]) == 1
    assert f"q.npy: made by another model ({str(model.resolve())!r})" in capsys.readouterr().err
