"""The preprocessing cache: hits, misses, invalidation, atomic writes, bad scans, and ``ctfm prepare``."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import ctfm.data.cache as cache_module
from ctfm.cli import main
from ctfm.data.cache import PreprocessCache
from ctfm.data.sample import generate_ct, write_nifti
from ctfm.errors import InvalidScanError
from ctfm.transforms.preprocess import CTPreprocessing
from ctfm.transforms.quantise import dequantise

PATCH = (8, 32, 32)
SETTINGS = CTPreprocessing(min_size=PATCH)


def write_scan(path, seed=0, shape=(16, 48, 48)):
    return write_nifti(generate_ct(shape, (3.0, 1.0, 1.0), seed=seed), path)


def write_volume(path, hu, spacing=(1.0, 1.0, 3.0)):
    """A NIfTI of an (x, y, z) array, for volumes no sample generator makes (NaN, empty, tiny)."""
    nib.save(nib.Nifti1Image(hu, np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.fixture
def cache(tmp_path):
    return PreprocessCache(tmp_path / "cache", SETTINGS)


def test_miss_then_hit_and_the_entry_holds_the_preprocessed_scan(tmp_path, cache):
    scan = write_scan(tmp_path / "a.nii.gz")
    first = cache.prepare([scan], progress=False)
    assert first.prepared == [str(scan)] and not first.cached and not first.skipped
    second = cache.prepare([scan], progress=False)
    assert second.cached == [str(scan)] and not second.prepared
    entry = second.scans[0]
    assert entry.array_path == first.scans[0].array_path
    array = entry.load()
    assert isinstance(array, np.memmap) and array.dtype == np.uint16
    expected = SETTINGS(scan).numpy()
    assert array.shape == expected.shape and all(a >= p for a, p in zip(array.shape[1:], PATCH))
    assert np.abs(dequantise(np.asarray(array)).numpy() - expected).max() <= 0.5 / 65535 + 1e-7
    meta = entry.metadata()
    assert meta["source"] == str(scan) and meta["shape"] == list(expected.shape)
    assert meta["spacing"] == pytest.approx([3.0, 1.0, 1.0])
    assert np.allclose(meta["affine"], SETTINGS(scan).affine.numpy())


def test_a_changed_source_is_preprocessed_again(tmp_path, cache):
    scan = write_scan(tmp_path / "a.nii.gz", seed=0)
    old = cache.prepare([scan], progress=False).scans[0]
    write_scan(scan, seed=1)
    os.utime(scan, ns=(1, os.stat(scan).st_mtime_ns + 10**9))  # a rewrite within the same tick still changes mtime
    report = cache.prepare([scan], progress=False)
    assert report.prepared == [str(scan)]
    assert report.scans[0].array_path != old.array_path
    assert not np.array_equal(np.asarray(report.scans[0].load()), np.asarray(old.load()))


def test_other_settings_use_other_entries(tmp_path, cache):
    scan = write_scan(tmp_path / "a.nii.gz", shape=(16, 96, 96))
    cache.prepare([scan], progress=False)
    coarse = PreprocessCache(cache.root, CTPreprocessing(spacing=(3.0, 2.0, 2.0), min_size=PATCH))
    assert coarse.lookup(scan) is None
    report = coarse.prepare([scan], progress=False)
    assert report.prepared == [str(scan)]
    assert report.scans[0].metadata()["spacing"] == pytest.approx([3.0, 2.0, 2.0])
    assert cache.lookup(scan) is not None  # the first entry is still valid for its own settings


def test_an_interrupted_write_leaves_no_entry_and_no_partial_file(tmp_path, cache, monkeypatch):
    scan = write_scan(tmp_path / "a.nii.gz")
    real_save = np.save

    def crash_halfway(file, array, **kwargs):
        real_save(file, array[:, : array.shape[1] // 2], **kwargs)  # some bytes reach the disk, then it dies
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        cache.write(scan)
    assert cache.lookup(scan) is None
    assert [p for p in cache.root.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    assert cache.prepare([scan], progress=False).prepared == [str(scan)]


def test_bad_scans_are_skipped_with_their_reason_and_not_read_again(tmp_path, cache, monkeypatch):
    good = write_scan(tmp_path / "good.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(good.read_bytes()[:300])  # truncated download
    nan = np.full((48, 48, 16), -1000.0, dtype=np.float32)
    nan[10:30, 10:30, :] = np.nan
    empty = np.full((48, 48, 16), -1024, dtype=np.int16)
    tiny = empty.copy()
    tiny[20:24, 20:24, 6:9] = 40  # 4 x 4 mm of body: less than half a patch after cropping
    bad = {
        corrupt: "cannot be read",
        write_volume(tmp_path / "nan.nii.gz", nan): "non-finite",
        write_volume(tmp_path / "empty.nii.gz", empty): "empty scan",
        write_volume(tmp_path / "tiny.nii.gz", tiny): "too small after cropping",
        tmp_path / "missing.nii.gz": "no such file",
    }
    report = cache.prepare([good, *bad], progress=False)
    assert [s.source for s in report.scans] == [str(good)] and report.prepared == [str(good)]
    assert set(report.skipped) == {str(path) for path in bad}
    for path, reason in bad.items():
        assert reason in report.skipped[str(path)]
    assert "1 prepared, 0 already cached, 5 skipped" in report.summary()

    reads = []

    def recording_read(path, **kwargs):
        reads.append(path)
        raise InvalidScanError(path, "still bad")

    monkeypatch.setattr(cache_module, "read_ct", recording_read)
    again = cache.prepare([good, *bad], progress=False)
    assert again.cached == [str(good)] and again.skipped == report.skipped
    assert reads == []  # known failures are not read again
    retried = cache.prepare(bad, progress=False, retry_failed=True)
    assert len(reads) == 4 and retried.skipped[str(corrupt)] == "still bad"


def test_duplicates_share_one_entry(tmp_path, cache):
    scan = write_scan(tmp_path / "a.nii.gz")
    report = cache.prepare([scan, scan], progress=False)
    assert report.prepared == [str(scan)]
    assert [s.array_path for s in report.scans] == [report.scans[0].array_path] * 2


def test_prepare_command(tmp_path, capsys):
    for i in range(2):
        write_scan(tmp_path / "scans" / f"s{i}.nii.gz", seed=i)
    (tmp_path / "scans" / "broken.nii.gz").write_bytes(b"not a scan")
    datalist = tmp_path / "datalist.csv"
    datalist.write_text("image\nscans/s0.nii.gz\nscans/s1.nii.gz\nscans/broken.nii.gz\n")
    report = tmp_path / "report.csv"
    args = ["prepare", str(datalist), "--patch-size", *map(str, PATCH), "--report", str(report)]
    assert main(args) == 3  # done, one scan skipped
    out = capsys.readouterr().out
    assert f"cache: {tmp_path / 'ctfm_cache'}" in out and "2 prepared, 0 already cached, 1 skipped" in out
    rows = report.read_text().splitlines()
    assert rows[0] == "image,status,reason" and rows[1].endswith(",prepared,")
    assert ",skipped,cannot be read" in rows[3]
    assert main(args) == 3 and "0 prepared, 2 already cached, 1 skipped" in capsys.readouterr().out
    record = json.loads((tmp_path / "ctfm_cache" / "provenance.json").read_text())
    assert [Path(entry["path"]).name for entry in record["inputs"]] == ["s0.nii.gz", "s1.nii.gz", "broken.nii.gz"]
    assert len(record["earlier_runs"]) == 1 and record["preprocessing"]["min_size"] == list(PATCH)
    good = tmp_path / "good.csv"
    good.write_text("image\nscans/s0.nii.gz\n")
    assert (
        main(["prepare", str(good), "--patch-size", *map(str, PATCH), "--cache-dir", str(tmp_path / "ctfm_cache")]) == 0
    )

    only_bad = tmp_path / "bad.csv"
    only_bad.write_text("image\nscans/broken.nii.gz\n")
    assert main(["prepare", str(only_bad), "--cache-dir", str(tmp_path / "c2")]) == 1
    assert "none of the 1 scans could be preprocessed" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_prepare_in_worker_processes(tmp_path, cache):
    scans = [write_scan(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(2)]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    report = cache.prepare([broken, *scans], workers=2, progress=False)
    assert sorted(report.prepared) == sorted(map(str, scans)) and list(report.skipped) == [str(broken)]
    assert [s.source for s in report.scans] == [str(s) for s in scans]  # input order, whatever finished first
    for scan, entry in zip(scans, report.scans):
        expected = np.rint(SETTINGS(scan).numpy() * 65535).astype(np.uint16)
        assert np.array_equal(entry.load(), expected)
