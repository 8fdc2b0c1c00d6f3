import shutil

import numpy as np
import pandas as pd
import pytest

from ctfm.data.mir3d import read_3dmir
from ctfm.data.sample_layouts import make_msd_sample
from ctfm.errors import CTFMError


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory):
    """An MSD root holding one tiny task, plus two test images that are copies of training cases 0 and 2."""
    root = tmp_path_factory.mktemp("msd")
    task = make_msd_sample(root / "Task03_Liver", n_cases=4, shape=(16, 48, 48))
    for case in (0, 2):
        shutil.copy(task / "imagesTr" / f"liver_{case}.nii.gz", task / "imagesTr" / f"copy_{case}.nii.gz")
    return root


def write(rows, path):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def lesion_rows(split=True):
    """Cases 0 and 1 labelled lesion 1, cases 2 and 3 lesion 0; the copies of 0 and 2 as the test queries."""
    rows = [
        {"image": f"Task03_Liver/imagesTr/liver_{i}.nii.gz", "lesion": str(int(i < 2)), "split": "train"}
        for i in range(4)
    ]
    rows += [
        {"image": f"Task03_Liver/imagesTr/copy_{i}.nii.gz", "lesion": str(int(i < 2)), "split": "test"} for i in (0, 2)
    ]
    return rows if split else [{k: v for k, v in r.items() if k != "split"} for r in rows]


def test_one_csv_with_a_split_column(msd_root, tmp_path):
    csv = write(lesion_rows(), tmp_path / "lesions.csv")
    splits = read_3dmir([csv], msd_root, label_column="lesion")
    assert sorted(splits) == ["test", "train"]
    paths, labels = splits["train"]
    assert paths[0] == msd_root / "Task03_Liver" / "imagesTr" / "liver_0.nii.gz" and all(p.exists() for p in paths)
    assert labels.tolist() == ["1", "1", "0", "0"] and splits["test"][1].tolist() == ["1", "0"]


def test_one_csv_per_split_named_in_the_file(msd_root, tmp_path):
    rows = lesion_rows(split=False)
    train = write(rows[:4], tmp_path / "liver_train.csv")
    test = write(rows[4:], tmp_path / "liver_test.csv")
    splits = read_3dmir([train, test], msd_root, label_column="lesion")
    assert [len(splits[s][0]) for s in ("train", "test")] == [4, 2]
    with pytest.raises(CTFMError, match="liver.csv: no split column, and the file name names no single split"):
        read_3dmir([write(rows, tmp_path / "liver.csv")], msd_root, label_column="lesion")


def test_bad_rows_name_the_file_and_row(msd_root, tmp_path):
    rows = lesion_rows()
    rows[2]["image"] = "Task03_Liver/imagesTr/missing.nii.gz"
    with pytest.raises(CTFMError, match=r"bad.csv, row 4: image 'Task03_Liver/imagesTr/missing.nii.gz' not found"):
        read_3dmir([write(rows, tmp_path / "bad.csv")], msd_root, label_column="lesion")
    with pytest.raises(CTFMError, match=r"bad.csv: no column \['organ'\]"):
        read_3dmir([write(lesion_rows(), tmp_path / "bad.csv")], msd_root, label_column="organ")
    rows = lesion_rows()
    rows[0]["split"] = "holdout"
    with pytest.raises(CTFMError, match="row 2: split 'holdout' is not one of train, val, test"):
        read_3dmir([write(rows, tmp_path / "bad.csv")], msd_root, label_column="lesion")
    only_train = [r for r in lesion_rows() if r["split"] == "train"]
    with pytest.raises(CTFMError, match="need a train split and a val or test split"):
        read_3dmir([write(only_train, tmp_path / "train_only.csv")], msd_root, label_column="lesion")


@pytest.mark.slow
def test_cli_retrieval_eval_on_3dmir_csvs_finds_each_querys_copy(msd_root, tmp_path, capsys):
    import torch

    from ctfm.cli import main
    from ctfm.hub import save_pretrained
    from ctfm.nn import ct_fm_encoder

    torch.manual_seed(0)
    model = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "model")
    csv = write(lesion_rows(), tmp_path / "lesions.csv")
    args = ["retrieval-eval", str(csv), "--msd-root", str(msd_root), "--label-column", "lesion", "-k", "1", "3"]
    assert main([*args, "--model", str(model), "--out", str(tmp_path / "out"), "--patch-size", "8", "32", "32"]) == 0
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert list(metrics["k"]) == [1, 3]
    # Each query is a copy of a training scan, so its nearest scan is that copy and shares its label.
    assert metrics.loc[0, "P"] == 1.0 and metrics.loc[0, "HR"] == 1.0
    per_query = pd.read_csv(tmp_path / "out" / "per_query.csv")
    assert per_query["label"].tolist() == [1, 0] and np.all(per_query["label@1"] == per_query["label"])
    assert (tmp_path / "out" / "neighbours.png").read_bytes()[:4] == b"\x89PNG"
