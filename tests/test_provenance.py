"""provenance.json: version, command, model fingerprint, settings and per-input hashes, written atomically."""

import hashlib
import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from ctfm.embedding_table import model_fingerprint
from ctfm.provenance import PROVENANCE_NAME, provenance_record, record_command, write_provenance


def test_the_record_of_a_command_with_a_model_files_and_a_dicom_series(tmp_path, sample_nifti, sample_dicom_dir):
    model = torch.nn.Linear(3, 2)
    args = Namespace(model="tiny", overlap=0.5, out=tmp_path / "out", func=print, argv=["segment", "x", "--out", "o"])
    path = record_command(
        tmp_path / "out", args, inputs=[sample_nifti, sample_dicom_dir, tmp_path / "missing.nii.gz"],
        output_names=["sample", "series", "missing"], model=model, preprocessing={"spacing": (3.0, 1.0, 1.0)},
    )  # fmt: skip
    assert path == tmp_path / "out" / PROVENANCE_NAME
    record = json.loads(path.read_text())
    assert record["schema"] == 1 and record["ctfm_version"] and record["created_utc"].endswith("Z")
    assert record["command"] == ["ctfm", "segment", "x", "--out", "o"]
    assert record["model"] == {"name": "tiny", "sha256": model_fingerprint(model)}
    assert record["preprocessing"] == {"spacing": [3.0, 1.0, 1.0]}
    assert record["settings"] == {"model": "tiny", "overlap": 0.5, "out": str(tmp_path / "out")}
    nifti, dicom, missing = record["inputs"]
    assert nifti.pop("modified_utc").endswith("Z")
    assert nifti == {
        "path": str(sample_nifti), "output_name": "sample", "size_bytes": sample_nifti.stat().st_size,
        "sha256": hashlib.sha256(sample_nifti.read_bytes()).hexdigest(),
    }  # fmt: skip
    import pydicom

    first = pydicom.dcmread(sorted(sample_dicom_dir.iterdir())[0])
    assert dicom["series_instance_uid"] == first.SeriesInstanceUID and dicom["files"] == len(
        list(sample_dicom_dir.iterdir())
    )
    assert missing["error"] == "no such file or directory"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [PROVENANCE_NAME]  # no temporary file left


def test_a_resumed_run_keeps_the_earlier_inputs_and_commands(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    first = provenance_record(command=["ctfm", "embed", "a"], inputs=[tmp_path / "a.txt"])
    write_provenance(tmp_path / "table", first, merge=True)
    second = provenance_record(command=["ctfm", "embed", "a", "b"], inputs=[tmp_path / "a.txt", tmp_path / "b.txt"])
    record = json.loads(write_provenance(tmp_path / "table", second, merge=True).read_text())
    assert [entry["path"] for entry in record["inputs"]] == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert [run["command"] for run in record["earlier_runs"]] == [["ctfm", "embed", "a"]]
    assert record["command"] == ["ctfm", "embed", "a", "b"]
    # Without merge (a fresh run into its own folder) the record is this run's alone.
    record = json.loads(write_provenance(tmp_path / "table", first).read_text())
    assert "earlier_runs" not in record and len(record["inputs"]) == 1


def test_a_resumed_run_hashes_only_files_that_changed(tmp_path):
    import os

    scan = tmp_path / "a.nii.gz"
    scan.write_bytes(b"scan")
    args = Namespace(argv=["embed", str(scan)])
    record_command(tmp_path / "table", args, inputs=[scan], merge=True)
    path = tmp_path / "table" / PROVENANCE_NAME
    record = json.loads(path.read_text())
    record["inputs"][0]["sha256"] = "kept"  # what a second hash of the unchanged file would not give
    path.write_text(json.dumps(record))
    record = json.loads(record_command(tmp_path / "table", args, inputs=[scan], merge=True).read_text())
    assert record["inputs"][0]["sha256"] == "kept"
    scan.write_bytes(b"other")
    os.utime(scan, (1, 1))
    record = json.loads(record_command(tmp_path / "table", args, inputs=[scan], merge=True).read_text())
    assert record["inputs"][0]["sha256"] == hashlib.sha256(b"other").hexdigest()
    assert len(record["earlier_runs"]) == 2


def test_a_file_output_gets_its_record_beside_it(tmp_path):
    record = provenance_record(command=["ctfm", "features", "x.csv"])
    assert write_provenance(tmp_path / "features.parquet", record, beside_file=True) == (
        tmp_path / "features.parquet.provenance.json"
    )


def test_an_interrupted_write_leaves_the_earlier_record(tmp_path, monkeypatch):
    write_provenance(tmp_path, provenance_record(command=["ctfm", "a"]))
    real_write_text = Path.write_text

    def killed_half_way(self, text, encoding=None):
        real_write_text(self, text[: len(text) // 2], encoding=encoding)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_provenance(tmp_path, provenance_record(command=["ctfm", "b"]))
    monkeypatch.undo()
    assert json.loads((tmp_path / PROVENANCE_NAME).read_text())["command"] == ["ctfm", "a"]
    assert [p.name for p in tmp_path.iterdir()] == [PROVENANCE_NAME]
