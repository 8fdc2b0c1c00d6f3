"""Label maps with their names: what the writer puts beside a map, the readers find again."""

import json

import numpy as np
import pytest

from ctfm.data.sample import generate_ct
from ctfm.errors import CTFMError
from ctfm.io.label_maps import label_names_path, read_label_names, write_label_map
from ctfm.io.reader import read_label_map


def test_a_written_label_map_reads_back_with_its_names(tmp_path):
    ct = generate_ct(shape=(8, 24, 24), seed=1)
    labels = np.asarray(ct.labels).transpose(2, 1, 0)  # (I, J, K) as NIfTI stores it
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    names = ["background", *(f"class_{v}" for v in range(1, int(labels.max()) + 1))]
    path = write_label_map(labels, affine, tmp_path / "out" / "case.nii.gz", names)
    assert label_names_path(path) == tmp_path / "out" / "case.json"
    assert read_label_names(path) == dict(enumerate(names))
    assert np.array_equal(np.asarray(read_label_map(path)[0]), labels)


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii", "x.nrrd", "x.mha"])
def test_every_label_map_format_has_its_sidecar_beside_it(tmp_path, name):
    assert label_names_path(tmp_path / name) == tmp_path / "x.json"


def test_a_missing_sidecar_names_nothing_and_a_foreign_one_is_one_line(tmp_path):
    assert read_label_names(tmp_path / "none.nii.gz") == {}
    (tmp_path / "bad.json").write_text(json.dumps({"names": ["a"]}))
    with pytest.raises(CTFMError, match=r"bad.json: not a label sidecar"):
        read_label_names(tmp_path / "bad.nii.gz")
