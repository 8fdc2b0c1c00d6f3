import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.analysis.search import (
    ExactIndex,
    at_least,
    block_top_k,
    build_index,
    index_file,
    load_index,
    save_index,
    search_excluding,
    table_fingerprint,
)
from ctfm.errors import CTFMError


def brute_force(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of every pair, one pair at a time: the reference the indexes must agree with."""
    scores = np.zeros((len(queries), len(database)))
    for i, q in enumerate(queries):
        for j, v in enumerate(database):
            scores[i, j] = float(q @ v) / (np.linalg.norm(q) * np.linalg.norm(v))
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


@pytest.fixture(scope="module")
def vectors():
    return np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)


def test_exact_search_equals_a_brute_force_loop_across_chunks(vectors):
    queries = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    expected_scores, expected_rows = brute_force(vectors, queries, 5)
    scores, rows = ExactIndex(vectors, chunk_rows=37).search(queries, 5)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_rows", [3, 37, 1000], ids=["chunks-smaller-than-k", "chunks", "one-chunk"])
def test_bfloat16_screening_gives_the_exact_answer(vectors, chunk_rows):
    """The bfloat16 pass only chooses which rows are rescored in float32: the result equals the brute-force loop."""
    queries = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    expected_scores, expected_rows = brute_force(vectors, queries, 5)
    index = ExactIndex(vectors, chunk_rows=chunk_rows, screen=True)
    scores, rows = index.search(queries, 5)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    assert index.fallbacks == 0


def test_screening_near_duplicates_falls_back_to_float32_and_stays_exact():
    """Rows closer together than bfloat16 can tell apart: no query can be certified, every one is answered in
    float32, and the neighbours are still the exact ones."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=16)
    table = (base + 0.05 * rng.normal(size=(400, 16))).astype(np.float32)
    queries = (base + 0.05 * rng.normal(size=(3, 16))).astype(np.float32)
    index = ExactIndex(table, chunk_rows=64, screen=True, max_candidates=50)
    scores, rows = index.search(queries, 4)
    expected_scores, expected_rows = brute_force(table, queries, 4)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    assert index.fallbacks == 3


@pytest.mark.parametrize("columns", [100, 1024, 1300])
def test_at_least_finds_every_score_above_the_floor_in_bfloat16(columns):
    scores = torch.from_numpy(np.random.default_rng(5).normal(size=(6, columns)).astype(np.float32)).bfloat16()
    floor = torch.tensor([0.5, 1.0, 2.0, 2.5, 3.0, -np.inf])
    found = set(zip(*(t.tolist() for t in at_least(scores, floor))))
    expected = set(zip(*(t.tolist() for t in torch.nonzero(scores.float() >= floor[:, None], as_tuple=True))))
    assert found == expected and len(found) > columns  # the last row takes every column


@pytest.mark.parametrize("columns", [100, 1024, 1300])
def test_block_top_k_equals_a_full_sort_with_or_without_a_partial_last_block(columns):
    scores = torch.from_numpy(np.random.default_rng(3).normal(size=(6, columns)).astype(np.float32))
    scores[0, -1] = 10.0  # the best score of a row in the partial block after the last whole one
    values, indices = block_top_k(scores, 5, block=64)
    order = np.argsort(-scores.numpy(), axis=1)[:, :5]
    np.testing.assert_array_equal(indices.numpy(), order)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores.numpy(), order, 1))


def test_a_query_never_retrieves_itself(vectors):
    index = ExactIndex(vectors)
    scores, rows = search_excluding(index, vectors[:4], 3, exclude=np.arange(4))
    assert not np.any(rows == np.arange(4)[:, None]) and rows.shape == (4, 3)
    _, with_self = index.search(vectors[:4], 4)
    np.testing.assert_array_equal(with_self[:, 0], np.arange(4))
    np.testing.assert_array_equal(rows, with_self[:, 1:])


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_faiss_indexes_find_the_exact_neighbours_on_clustered_data(kind):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 32))
    data = (centres[rng.integers(0, 20, 2000)] + 0.05 * rng.normal(size=(2000, 32))).astype(np.float32)
    _, exact = ExactIndex(data).search(data[:50], 1)
    scores, rows = build_index(data, kind, **({"pq_m": 8} if kind == "ivfpq" else {})).search(data[:50], 1)
    assert scores.shape == (50, 1)
    found = np.mean(rows[:, 0] == exact[:, 0]) if kind != "ivfpq" else np.mean(scores[:, 0] > 0.9)
    assert found >= 0.9


def test_a_saved_index_records_its_table_and_is_refused_for_other_rows(vectors, tmp_path):
    table = tmp_path / "embeddings.parquet"
    settings = {"model_sha256": "abc"}
    fingerprint = table_fingerprint(["a", "b"], settings)
    path = save_index(build_index(vectors, "hnsw"), table, fingerprint)
    assert path == index_file(table, "hnsw") and path.parent == tmp_path
    assert '"table": "' + str(table) in path.with_suffix(".json").read_text()
    loaded = load_index(table, "hnsw", fingerprint)
    assert loaded is not None and len(loaded) == len(vectors)
    assert load_index(table, "hnsw", table_fingerprint(["a", "b", "c"], settings)) is None


def test_an_empty_table_cannot_be_indexed():
    with pytest.raises(CTFMError, match="empty"):
        build_index(np.zeros((0, 8), dtype=np.float32))


def test_cli_search_by_row_and_by_scan(sample_nifti, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.embedding_table import embed_to_parquet
    from ctfm.hub import save_pretrained
    from ctfm.nn import ct_fm_encoder

    torch.manual_seed(0)
    encoder = ct_fm_encoder(init_filters=4).eval()
    model_dir = save_pretrained(encoder, tmp_path / "model")
    scans = []
    for index in range(3):
        scans.append(tmp_path / f"s{index}.nii.gz")
        scans[-1].write_bytes(sample_nifti.read_bytes())
    table = tmp_path / "embeddings.parquet"
    embed_to_parquet(scans, table, model=str(model_dir), patch_size=(8, 32, 32))
    out = tmp_path / "neighbours.csv"
    assert main(["search", str(scans[0]), "--table", str(table), "-k", "5", "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert list(rows.columns) == ["query", "rank", "path", "similarity"]
    assert list(rows["rank"]) == [1, 2] and str(scans[0]) not in set(rows["path"])
    np.testing.assert_allclose(rows["similarity"], 1.0, atol=1e-5)  # identical scans
    # A scan not in the table is embedded with the table's model (from its metadata) and finds all three.
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(sample_nifti.read_bytes())
    capsys.readouterr()
    assert main(["search", str(outside), "--table", str(table), "-k", "3", "--index", "hnsw"]) == 0
    assert capsys.readouterr().out.count("1.0000") == 3 and (tmp_path / "embeddings.parquet.hnsw.faiss").exists()


def test_cli_refuses_a_query_model_other_than_the_tables(sample_nifti, tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.embedding_table import embed_to_parquet
    from ctfm.hub import save_pretrained
    from ctfm.nn import ct_fm_encoder

    torch.manual_seed(0)
    table = tmp_path / "t.parquet"
    embed_to_parquet([sample_nifti], table, model=ct_fm_encoder(init_filters=4), patch_size=(8, 32, 32))
    other = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "other")
    outside = tmp_path / "q.nii.gz"
    outside.write_bytes(sample_nifti.read_bytes())
    assert main(["search", str(outside), "--table", str(table), "--model", str(other)]) == 1
    assert "query model differs from the table's" in capsys.readouterr().err
