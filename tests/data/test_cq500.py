"""CQ500 reads: any finding of any reader makes a scan positive; scan names match the download's folder names."""

import pandas as pd
import pytest

from ctfm.data.cq500 import cq500_datalist, cq500_labels, scan_key
from ctfm.errors import CTFMError


def test_scan_names_match_files_and_folders():
    assert scan_key("CQ500-CT-12") == scan_key("CQ500CT12 CQ500CT12") == scan_key("cq500-ct-12.nii.gz") == "cq500ct12"
    assert scan_key("CQ500-CT-1") != scan_key("CQ500-CT-12")


def test_labels_and_datalist(tmp_path):
    reads = tmp_path / "reads.csv"
    pd.DataFrame({"name": ["CQ500-CT-0", "CQ500-CT-1"], "R1:SDH": [0, 0], "R3:MassEffect": [0, 1]}).to_csv(reads)
    assert cq500_labels(reads)["label"].tolist() == [0, 1]
    (tmp_path / "scans" / "CQ500CT1 CQ500CT1").mkdir(parents=True)
    table = pd.read_csv(cq500_datalist(reads, tmp_path / "scans", tmp_path / "out.csv"))
    assert table["name"].tolist() == ["CQ500-CT-1"] and table["label"].tolist() == [1]
    assert table["image"][0].endswith("CQ500CT1 CQ500CT1")


def test_not_a_reads_csv(tmp_path):
    bad = tmp_path / "reads.csv"
    pd.DataFrame({"image": ["a"], "label": [1]}).to_csv(bad, index=False)
    with pytest.raises(CTFMError, match="not a CQ500 reads.csv"):
        cq500_labels(bad)
