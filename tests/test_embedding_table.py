import json

import numpy as np
import pandas as pd
import pytest
import torch

import ctfm.embedding_table as embedding_table
from ctfm.embedding import embed
from ctfm.embedding_table import TableMismatchError, embed_to_parquet, read_settings, read_table
from ctfm.nn import ct_fm_encoder

PATCH = (8, 32, 32)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()


@pytest.fixture(scope="module")
def scans(sample_nifti, tmp_path_factory):
    """Four distinct files of the sample scan (the table is keyed by path)."""
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for index in range(4):
        path = folder / f"scan{index}.nii.gz"
        path.write_bytes(sample_nifti.read_bytes())
        paths.append(path)
    return paths


def test_rerun_skips_scans_already_in_the_table_and_appends_the_rest(encoder, scans, tmp_path):
    out = tmp_path / "embeddings.parquet"
    first = embed_to_parquet(scans[:2], out, model=encoder, patch_size=PATCH)
    second = embed_to_parquet(scans, out, model=encoder, patch_size=PATCH)
    assert first.embedded == 2 and second.embedded == 2 and second.already == [str(p) for p in scans[:2]]
    table = pd.read_parquet(out)
    assert sorted(table["path"]) == sorted(map(str, scans))
    expected = embed(encoder, scans[3], patch_size=PATCH)
    row = table[table["path"] == str(scans[3])]["embedding"].iloc[0]
    torch.testing.assert_close(torch.tensor(row, dtype=torch.float32), expected, rtol=1e-4, atol=1e-5)


def test_a_killed_run_keeps_every_finished_part(encoder, scans, tmp_path, monkeypatch):
    out = tmp_path / "embeddings.parquet"
    real = embedding_table.embed_patches
    calls = []

    def dies_on_the_third_scan(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embedding_table, "embed_patches", dies_on_the_third_scan)
    with pytest.raises(KeyboardInterrupt):
        embed_to_parquet(scans, out, model=encoder, patch_size=PATCH, scans_per_part=1)
    assert list(pd.read_parquet(out)["path"]) == [str(scans[0]), str(scans[1])]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(embedding_table, "embed_patches", real)
    report = embed_to_parquet(scans, out, model=encoder, patch_size=PATCH)
    assert report.embedded_paths == [str(scans[2]), str(scans[3])] and len(pd.read_parquet(out)) == 4


def test_metadata_names_model_preprocessing_and_reduction(encoder, scans, tmp_path):
    out = tmp_path / "t.parquet"
    embed_to_parquet(scans[:1], out, model=encoder, model_name="tiny", reduce="min", patch_size=PATCH)
    settings = read_settings(out)
    assert settings["model"] == "tiny" and settings["reduction"] == "min" and settings["embedding_dim"] == 64
    assert settings["preprocessing"]["spacing"] == [3.0, 1.0, 1.0] and settings["patch_size"] == list(PATCH)
    assert len(settings["model_sha256"]) == 64
    assert json.loads(embedding_table.pq.read_schema(next(out.glob("part-*"))).metadata[b"ctfm"]) == settings


def test_appending_with_another_model_or_reduction_is_refused(encoder, scans, tmp_path):
    out = tmp_path / "t.parquet"
    embed_to_parquet(scans[:1], out, model=encoder, patch_size=PATCH)
    torch.manual_seed(1)
    other = ct_fm_encoder(init_filters=4).eval()
    with pytest.raises(TableMismatchError, match="another model"):
        embed_to_parquet(scans[1:2], out, model=other, patch_size=PATCH)
    with pytest.raises(TableMismatchError, match="reduction"):
        embed_to_parquet(scans[1:2], out, model=encoder, patch_size=PATCH, reduce="max")
    assert len(pd.read_parquet(out)) == 1


def test_patches_keep_each_patch_embedding_with_its_world_centre(encoder, scans, tmp_path):
    out = tmp_path / "t.parquet"
    embed_to_parquet(scans[:1], out, model=encoder, patch_size=PATCH, patches=True)
    frame, settings = read_table(out)
    expected = embed(encoder, scans[0], patch_size=PATCH, reduce=None)
    stored = np.stack(frame["patch_embeddings"][0])
    centres = np.stack(frame["patch_centers_mm"][0])
    assert settings["patches"] and stored.shape == tuple(expected.embeddings.shape)
    np.testing.assert_allclose(centres, expected.centers_mm.numpy(), atol=1e-9)
    np.testing.assert_allclose(stored.mean(0), frame["embedding"][0], rtol=1e-5, atol=1e-6)


def test_an_empty_or_missing_table_is_one_clear_error(tmp_path):
    from ctfm.errors import CTFMError

    (tmp_path / "empty.parquet").mkdir()
    with pytest.raises(CTFMError, match="empty.parquet: no embedding table"):
        read_table(tmp_path / "empty.parquet")
