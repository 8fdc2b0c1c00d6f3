import errno
import json
import multiprocessing

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
    with pytest.raises(TableMismatchError, match="--reduce .mean., not .max."):
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


def test_any_failure_of_one_scan_costs_only_that_scan(encoder, scans, tmp_path, monkeypatch):
    out = tmp_path / "embeddings.parquet"
    real = embedding_table.embed_patches
    failures = {2: MemoryError(), 3: OSError(errno.ENOSPC, "No space left on device")}
    calls = []

    def fails_on_some(*args, **kwargs):
        calls.append(1)
        if len(calls) in failures:
            raise failures[len(calls)]
        return real(*args, **kwargs)

    monkeypatch.setattr(embedding_table, "embed_patches", fails_on_some)
    report = embed_to_parquet(scans, out, model=encoder, patch_size=PATCH)  # one part of 16: nothing lost
    assert report.embedded_paths == [str(scans[0]), str(scans[3])]
    assert report.skipped == [
        (str(scans[1]), "MemoryError"),
        (str(scans[2]), "OSError: [Errno 28] No space left on device"),
    ]
    assert sorted(pd.read_parquet(out)["path"]) == [str(scans[0]), str(scans[3])]
    assert not (out / embedding_table.CLAIMS).exists()  # every claim given back, and their folder removed


def test_a_part_that_cannot_be_written_skips_its_scans_and_the_run_goes_on(encoder, scans, tmp_path, monkeypatch):
    out = tmp_path / "embeddings.parquet"
    real = embedding_table._write_part
    writes = []

    def disk_full_once(*args, **kwargs):
        writes.append(1)
        if len(writes) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(embedding_table, "_write_part", disk_full_once)
    report = embed_to_parquet(scans[:3], out, model=encoder, patch_size=PATCH, scans_per_part=2)
    assert report.embedded_paths == [str(scans[2])]
    assert [path for path, _ in report.skipped] == [str(scans[0]), str(scans[1])]
    assert "No space left on device" in report.skipped[0][1] and str(out) in report.skipped[0][1]
    monkeypatch.setattr(embedding_table, "_write_part", real)
    again = embed_to_parquet(scans[:3], out, model=encoder, patch_size=PATCH)
    assert again.embedded_paths == [str(scans[0]), str(scans[1])] and len(pd.read_parquet(out)) == 3


def test_an_interrupt_writes_the_scans_embedded_before_it(encoder, scans, tmp_path, monkeypatch):
    out = tmp_path / "embeddings.parquet"
    real = embedding_table.embed_patches
    calls = []

    def interrupted_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embedding_table, "embed_patches", interrupted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        embed_to_parquet(scans, out, model=encoder, patch_size=PATCH)  # 16 scans a part: the two are pending
    assert sorted(pd.read_parquet(out)["path"]) == [str(scans[0]), str(scans[1])]


def test_one_scan_is_one_row_however_its_path_is_written(encoder, scans, tmp_path, monkeypatch):
    out = tmp_path / "embeddings.parquet"
    monkeypatch.chdir(scans[0].parent)
    spellings = [f"./{scans[0].name}", scans[0].name, f"{scans[0].parent}//{scans[0].name}"]
    report = embed_to_parquet(spellings, out, model=encoder, patch_size=PATCH)
    assert report.embedded_paths == [str(scans[0])] and report.already == [str(scans[0])] * 2
    again = embed_to_parquet([f"../{scans[0].parent.name}/{scans[0].name}"], out, model=encoder, patch_size=PATCH)
    assert again.already == [str(scans[0])] and list(pd.read_parquet(out)["path"]) == [str(scans[0])]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"patches": True}, "--patches False, not True"),
        ({"native_spacing": True}, "spacing (--native-spacing) [3.0, 1.0, 1.0], not None"),
        ({"overlap": 0.5}, "--overlap 0.0, not 0.5"),
        ({"patch_size": (8, 32, 48)}, "--patch-size [8, 32, 32], not [8, 32, 48]"),
    ],
)
def test_appending_with_other_settings_names_the_setting_and_both_values(encoder, scans, tmp_path, change, words):
    out = tmp_path / "t.parquet"
    embed_to_parquet(scans[:1], out, model=encoder, patch_size=PATCH)
    options = {"patch_size": PATCH, **change}
    with pytest.raises(TableMismatchError) as refused:
        embed_to_parquet(scans[1:2], out, model=encoder, **options)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert len(pd.read_parquet(out)) == 1


def _embed_in_a_process(paths, out, model_dir, barrier, results):
    from ctfm.embedding_table import embed_to_parquet

    barrier.wait()
    report = embed_to_parquet(paths, out, model=str(model_dir), patch_size=PATCH, scans_per_part=1)
    results.put(report.embedded_paths)


def test_two_runs_into_one_table_at_once_embed_each_scan_once(encoder, scans, tmp_path):
    from ctfm.hub.saving import save_pretrained

    model_dir = save_pretrained(encoder, tmp_path / "model")
    out = tmp_path / "embeddings.parquet"
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    runs = [
        context.Process(target=_embed_in_a_process, args=(order, out, model_dir, barrier, results))
        for order in (scans, scans[::-1])
    ]
    for run in runs:
        run.start()
    embedded = [results.get(timeout=600) for _ in runs]
    for run in runs:
        run.join(timeout=60)
    assert all(run.exitcode == 0 for run in runs)
    table = pd.read_parquet(out)
    assert sorted(table["path"]) == sorted(map(str, scans))  # each scan once
    assert sorted(embedded[0] + embedded[1]) == sorted(map(str, scans))


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_damaged_part_is_named_and_the_rest_of_the_table_is_used(encoder, scans, tmp_path, caplog, damage):
    from ctfm.analysis.neighbours import search_table
    from ctfm.analysis.probe import read_features

    out = tmp_path / "embeddings.parquet"
    embed_to_parquet(scans[:3], out, model=encoder, patch_size=PATCH, scans_per_part=1)
    part = sorted(out.glob("part-*.parquet"))[1]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(len(data)))
    frame, _ = read_table(out)
    assert len(frame) == 2
    warned = [r.getMessage() for r in caplog.records if str(part) in r.getMessage()]
    assert len(warned) == 1 and "damaged table part skipped" in warned[0] and f"rm {part}" in warned[0]
    hits = search_table(frame["path"][0], out, k=5, kind="exact")
    assert len(hits) == 1 and set(hits["path"]) <= set(frame["path"])
    assert len(read_features(out)) == 2
    report = embed_to_parquet(scans[:3], out, model=encoder, patch_size=PATCH)  # appending reads it too
    assert len(report.already) == 2 and len(report.embedded_paths) == 1


def test_rows_without_a_direction_are_left_out_and_named(encoder, scans, tmp_path, caplog):
    from ctfm.analysis.neighbours import search_table

    out = tmp_path / "embeddings.parquet"
    embed_to_parquet(scans[:2], out, model=encoder, patch_size=PATCH)
    settings = read_settings(out)
    bad = [
        {"path": "/zero.nii.gz", "embedding": [0.0] * 64},
        {"path": "/nan.nii.gz", "embedding": [float("nan")] * 64},
        {"path": "/short.nii.gz", "embedding": [1.0] * 3},
    ]
    embedding_table._write_part(out, bad, settings)
    frame, _ = read_table(out)
    assert sorted(frame["path"]) == sorted(map(str, scans[:2]))
    message = next(r.getMessage() for r in caplog.records if "unusable" in r.getMessage())
    assert "/zero.nii.gz: all zeros" in message and "/nan.nii.gz: 64 non-finite" in message
    assert "/short.nii.gz: 3 values, not 64" in message
    hits = search_table(str(scans[0]), out, k=10, kind="exact")
    assert list(hits["path"]) == [str(scans[1])]


def test_rows_carry_the_series_instance_uid_of_a_dicom_series_or_an_idc_sidecar(
    encoder, scans, sample_dicom_dir, tmp_path
):
    import pydicom

    expected = str(pydicom.dcmread(next(sample_dicom_dir.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    converted = tmp_path / "1.2.3.4.nii.gz"  # as `ctfm idc convert` writes: <uid>.nii.gz beside <uid>.json
    converted.write_bytes(scans[0].read_bytes())
    (tmp_path / "1.2.3.4.json").write_text(json.dumps({"SeriesInstanceUID": "1.2.3.4", "collection_id": "x"}))
    out = tmp_path / "embeddings.parquet"
    embed_to_parquet([sample_dicom_dir, converted, scans[1]], out, model=encoder, patch_size=PATCH)
    frame, _ = read_table(out)
    uids = dict(zip(frame["path"], frame["SeriesInstanceUID"]))
    assert uids == {str(sample_dicom_dir): expected, str(converted): "1.2.3.4", str(scans[1]): None}


def test_whole_volume_rows_are_one_forward_pass_and_recorded(encoder, scans, tmp_path):
    out = tmp_path / "t.parquet"
    embed_to_parquet(scans[:1], out, model=encoder, patch_size=PATCH, whole_volume=True)
    frame, settings = read_table(out)
    expected = embed(encoder, scans[0], patch_size=PATCH, whole_volume=True)
    torch.testing.assert_close(torch.tensor(frame["embedding"][0], dtype=torch.float32), expected, rtol=1e-4, atol=1e-5)
    assert settings["mode"] == "whole" and settings["crop_size"] is None and settings["pool"] is None
    with pytest.raises(TableMismatchError, match="mode .*'whole', not 'tiled'"):
        embed_to_parquet(scans[1:2], out, model=encoder, patch_size=PATCH)


def test_a_table_written_before_modes_existed_still_takes_tiled_scans(encoder, scans, tmp_path):
    out = tmp_path / "t.parquet"
    embed_to_parquet(scans[:1], out, model=encoder, patch_size=PATCH)
    part = next(out.glob("part-*"))
    table = embedding_table.pq.read_table(part)
    settings = json.loads(table.schema.metadata[b"ctfm"])
    old = {k: v for k, v in settings.items() if k not in ("mode", "crop_size", "pool")}
    embedding_table.pq.write_table(table.replace_schema_metadata({b"ctfm": json.dumps(old).encode()}), part)
    assert embed_to_parquet(scans[1:2], out, model=encoder, patch_size=PATCH).embedded == 1


def test_the_patch_size_defaults_to_the_models_own(scans, tmp_path):
    """A saved model whose spec says 8x32x32 tiles embeds with them when --patch-size is not given."""
    from ctfm.cli import main
    from ctfm.hub import ModelSpec, save_pretrained
    from ctfm.hub.registry import attach_spec

    spec = ModelSpec("mine", "", "SegResEncoder", {}, "", embedding_dim=64, patch_size=PATCH)
    torch.manual_seed(0)
    folder = save_pretrained(attach_spec(ct_fm_encoder(init_filters=4), spec), tmp_path / "mine")
    out = tmp_path / "t.parquet"
    assert main(["embed", str(scans[0]), "--model", str(folder), "--out", str(out)]) == 0
    assert read_settings(out)["patch_size"] == list(PATCH)


def test_the_table_preprocesses_as_the_models_spec_says_as_ctfm_embed_does(scans, tmp_path):
    """A model made at 2 mm isotropic is embedded at 2 mm, not at CT-FM's 3 x 1 x 1 mm; the row equals ctfm.embed."""
    import ctfm
    from ctfm.hub import ModelSpec
    from ctfm.hub.registry import attach_spec
    from ctfm.transforms.preprocess import CTPreprocessing

    spec = ModelSpec("iso", "", "SegResEncoder", {}, "", CTPreprocessing(spacing=(2.0, 2.0, 2.0)), patch_size=PATCH)
    torch.manual_seed(0)
    model = attach_spec(ct_fm_encoder(init_filters=4).eval(), spec)
    out = tmp_path / "t.parquet"
    embed_to_parquet(scans[:1], out, model=model)
    assert read_settings(out)["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]
    row = np.asarray(pd.read_parquet(out)["embedding"][0])
    np.testing.assert_allclose(row, ctfm.embed(model, scans[0]).numpy(), rtol=1e-4, atol=1e-5)
    embed_to_parquet(scans[:1], tmp_path / "native.parquet", model=model, native_spacing=True)
    assert read_settings(tmp_path / "native.parquet")["preprocessing"]["spacing"] is None
