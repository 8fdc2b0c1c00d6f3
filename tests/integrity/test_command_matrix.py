"""Every per-scan command given one bad input beside a good scan: the good one is done, the bad one named.

``ctfm segment``, ``ctfm semantic-search`` and ``ctfm pseudo-label`` each get the same corpus of bad inputs that
``test_table_matrix.py`` builds for ``ctfm embed``. Whatever the problem, the command processes the good scan,
names the bad input in one line, prints no traceback, exits 3 (some items skipped) and writes nothing for the bad
input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bad_inputs import (
    all_air,
    corrupt,
    empty_folder,
    image_2d,
    image_4d,
    missing,
    nan_voxels,
    truncated_gzip,
)

from ctfm.cli import main
from ctfm.data.sample import LABEL, generate_ct, write_labels_nifti, write_nifti
from ctfm.hub.saving import save_pretrained
from ctfm.nn import ct_fm_encoder, ct_fm_segresnet

BAD_INPUTS = [corrupt, truncated_gzip, image_2d, image_4d, nan_voxels, all_air, missing, empty_folder]
PATCH = ["8", "32", "32"]
#: Reasons a skipped scan may give that are not a first line of a traceback.
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A good scan, its tissue labels, a tiny encoder and a tiny 3-class segmenter."""
    folder = tmp_path_factory.mktemp("corpus")
    sample = generate_ct((16, 48, 48), (2.5, 1.0, 1.0), seed=3)
    good = write_nifti(sample, folder / "good" / "good.nii.gz")
    labels = write_labels_nifti(sample, folder / "good_labels.nii.gz")
    torch.manual_seed(0)
    encoder = save_pretrained(ct_fm_encoder(init_filters=4), folder / "encoder")
    segmenter = save_pretrained(ct_fm_segresnet(init_filters=4, out_channels=3), folder / "segmenter")
    (segmenter / "classes.json").write_text(json.dumps(["background", "body", "bone"]))
    return good, labels, encoder, segmenter


def _check(code: int, printed, bad: Path, out: Path, good_output: Path) -> None:
    assert code == 3, printed.out + printed.err
    assert TRACEBACK not in printed.err and TRACEBACK not in printed.out
    text = printed.out + printed.err
    named = [line for line in text.splitlines() if str(bad) in line or bad.name in line]
    assert named, f"{bad.name} is not named:\n{text}"
    assert good_output.is_file()
    stem = bad.name.split(".")[0]
    written = [p.name for p in out.rglob("*") if p.name.startswith((f"{stem}.", f"{stem}_"))]
    assert not written, f"outputs for the bad input: {written}"


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__ for f in BAD_INPUTS])
def test_segment(make_bad, corpus, tmp_path, capsys):
    good, _, _, segmenter = corpus
    bad = make_bad(tmp_path, good)
    out = tmp_path / "out"
    code = main(["segment", str(bad), str(good), "--model", str(segmenter), "--out", str(out), "--roi", "16", "32",
                 "32"])  # fmt: skip
    _check(code, capsys.readouterr(), bad, out, out / "good.nii.gz")


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__ for f in BAD_INPUTS])
def test_semantic_search(make_bad, corpus, tmp_path, capsys):
    good, _, encoder, _ = corpus
    bad = make_bad(tmp_path, good)
    out = tmp_path / "out"
    point = ["0", "0", "0"]
    code = main(["semantic-search", str(good), str(bad), str(good), "--point", *point, "--model", str(encoder),
                 "--out", str(out), "--patch-size", *PATCH, "--overlap", "0"])  # fmt: skip
    _check(code, capsys.readouterr(), bad, out, out / "matches.csv")


@pytest.fixture(scope="module")
def prototypes(corpus, tmp_path_factory):
    good, labels, encoder, _ = corpus
    path = tmp_path_factory.mktemp("prototypes") / "prototypes.pt"
    args = ["prototypes", "--images", str(good), "--labels", str(labels), "--classes", f"{LABEL['liver']}=liver",
            f"{LABEL['muscle']}=muscle", "--model", str(encoder), "--out", str(path), "--patch-size", "4", "16",
            "16", "--overlap", "0.5"]  # fmt: skip
    assert main(args) == 0
    return path


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__ for f in BAD_INPUTS])
def test_pseudo_label(make_bad, corpus, prototypes, tmp_path, capsys):
    good, _, encoder, _ = corpus
    bad = make_bad(tmp_path, good)
    out = tmp_path / "out"
    code = main(["pseudo-label", str(bad), str(good), "--prototypes", str(prototypes), "--model", str(encoder),
                 "--out", str(out), "--no-preview"])  # fmt: skip
    _check(code, capsys.readouterr(), bad, out, out / "good.nii.gz")
