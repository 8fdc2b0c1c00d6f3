"""``ctfm embed`` given one bad input beside a good scan: the good one is embedded, the bad one named in one line.

Each case is a real file on disk (a damaged NIfTI, a degenerate volume, a header with a wrong spacing, ...) passed to
the command line next to one good scan. Whatever the problem, the run writes the good scan's row, names the bad
input and its problem in one line, prints no traceback and leaves no half-written part behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bad_inputs import (
    all_air,
    corrupt,
    empty_folder,
    fine_spacing,
    huge_resample,
    image_2d,
    image_4d,
    missing,
    nan_voxels,
    odd_name,
    tiny_volume,
    truncated_gzip,
    unreadable,
)

import ctfm.io.reader as reader
from ctfm.cli import main
from ctfm.data.sample import generate_ct, write_nifti
from ctfm.embedding_table import read_table, scan_key
from ctfm.hub.saving import save_pretrained
from ctfm.nn import ct_fm_encoder

PATCH = ["8", "32", "32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_pretrained(ct_fm_encoder(init_filters=4), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A small synthetic torso CT (16 x 48 x 48 voxels of 2.5 x 1 x 1 mm)."""
    return write_nifti(
        generate_ct((16, 48, 48), (2.5, 1.0, 1.0), seed=3), tmp_path_factory.mktemp("good") / "good.nii.gz"
    )


CASES: dict[str, tuple[Callable[[Path, Path], Path], str | None]] = {
    "corrupt file": (corrupt, "cannot be read"),
    "truncated gzip": (truncated_gzip, "corrupt or truncated"),
    "2D image": (image_2d, "2D"),
    "4D image": (image_4d, "4D"),
    "NaN voxels": (nan_voxels, "non-finite voxels"),
    "all air": (all_air, "empty scan"),
    "3x3x3": (tiny_volume, "too small"),
    "0.01 mm spacing": (fine_spacing, "finer than"),
    "resample too large": (huge_resample, "would make"),
    "missing path": (missing, "no such file"),
    "empty folder": (empty_folder, "DICOM"),
    "unreadable file": (unreadable, "ermission denied"),
    "spaces and unicode": (odd_name, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_bad_input_costs_only_itself(case, good, model_dir, tmp_path, capsys, monkeypatch):
    make, problem = CASES[case]
    bad = make(tmp_path, good)
    if case == "unreadable file" and os.geteuid() == 0:  # root reads a mode-000 file: make the read fail as it would
        real_load = reader.nib.load

        def denied(path, *args, **kwargs):
            if Path(path) == bad:
                raise PermissionError(13, "Permission denied", str(path))
            return real_load(path, *args, **kwargs)

        monkeypatch.setattr(reader.nib, "load", denied)
    out = tmp_path / "embeddings.parquet"
    code = main(["embed", str(good), str(bad), "--out", str(out), "--model", str(model_dir), "--patch-size", *PATCH])
    printed = capsys.readouterr()
    paths = set(read_table(out, columns=["path"])[0]["path"])
    assert scan_key(good) in paths
    assert "Traceback" not in printed.err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    if problem is None:
        assert code == 0 and scan_key(bad) in paths and "  skipped" not in printed.out
        return
    assert scan_key(bad) not in paths
    named = [line for line in printed.out.splitlines() if str(bad) in line]
    assert len(named) == 1 and problem in named[0], printed.out


def test_a_run_where_every_scan_fails_exits_nonzero(model_dir, tmp_path, capsys):
    bad = all_air(tmp_path, tmp_path)
    code = main(["embed", str(bad), str(tmp_path / "gone.nii.gz"), "--out", str(tmp_path / "t.parquet"),
                 "--model", str(model_dir), "--patch-size", *PATCH])  # fmt: skip
    printed = capsys.readouterr()
    assert code != 0 and "0 embedded" in printed.out and "empty scan" in printed.out and "no such file" in printed.out
    assert "Traceback" not in printed.err
