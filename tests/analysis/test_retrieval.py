import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.analysis.retrieval import evaluate_retrieval, majority_label, retrieval_metrics

# Two queries worked by hand (see the definitions in ctfm.analysis.retrieval):
# query "a" retrieves a b a a b: P@3 2/3, AP@3 (1 + 2/3) / 2 = 5/6, HR@3 1; P@5 3/5, AP@5 (1 + 2/3 + 3/4) / 3 = 29/36
# query "b" retrieves a a a b b: P@3 0, AP@3 0, HR@3 0;                  P@5 2/5, AP@5 (1/4 + 2/5) / 2 = 13/40
# Majority votes are a and a at both k: F1 of "a" = 2/3, of "b" = 0, macro F1 = 1/3.
LABELS = ["a", "b"]
RETRIEVED = np.array([list("abaab"), list("aaabb")])


def test_metrics_equal_the_hand_computed_example():
    per_query, summary = retrieval_metrics(LABELS, RETRIEVED, ks=(3, 5))
    np.testing.assert_allclose(per_query["P@3"], [2 / 3, 0])
    np.testing.assert_allclose(per_query["AP@3"], [5 / 6, 0])
    np.testing.assert_allclose(per_query["HR@3"], [1, 0])
    np.testing.assert_allclose(per_query["P@5"], [3 / 5, 2 / 5])
    np.testing.assert_allclose(per_query["AP@5"], [29 / 36, 13 / 40])
    np.testing.assert_allclose(per_query["HR@5"], [1, 1])
    assert list(per_query["label@3"]) == ["a", "a"]
    three, five = summary.to_dict("records")
    assert three["k"] == 3 and three["AP"] == pytest.approx(5 / 12) and three["HR"] == pytest.approx(0.5)
    assert three["F1"] == pytest.approx(1 / 3) and five["P"] == pytest.approx(0.5)
    assert five["AP"] == pytest.approx((29 / 36 + 13 / 40) / 2)


def test_a_tie_goes_to_the_label_ranked_first():
    assert majority_label(list("baab")) == "b" and majority_label(list("abba")) == "a"


def test_too_few_neighbours_for_k_is_refused():
    with pytest.raises(ValueError, match="at least 10"):
        retrieval_metrics(LABELS, RETRIEVED, ks=(10,))


def test_leave_one_out_never_retrieves_the_query():
    # Two tight clusters: each point's neighbours are the other points of its own cluster, never itself.
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(size=(4, 8)) * 0.01 + 5, rng.normal(size=(4, 8)) * 0.01 - 5])
    data[:, 0] += np.arange(8)  # distinct points
    labels = [0] * 4 + [1] * 4
    per_query, summary, rows = evaluate_retrieval(data, labels, ks=(3,))
    assert not np.any(rows == np.arange(8)[:, None])
    assert summary["P"].iloc[0] == 1.0 and summary["F1"].iloc[0] == 1.0


def test_queries_without_their_labels_are_refused():
    data = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(ValueError, match="queries need their query_labels"):
        evaluate_retrieval(data, [0, 1] * 3, queries=data[:2], ks=(3,))


def _fake_organmnist(path, shape=(12, 12, 12)):
    """Two classes that differ in where the bright block sits; 6 train, 2 val, 2 test volumes."""
    rng = np.random.default_rng(0)

    def volumes(n):
        images = rng.integers(0, 30, size=(n, *shape)).astype(np.uint8)
        labels = np.arange(n) % 2
        for image, label in zip(images, labels):
            image[:, : shape[1] // 2] += 200 if label == 0 else 0
            image[:, shape[1] // 2 :] += 0 if label == 0 else 200
        return images, labels[:, None]

    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = volumes(n)
    np.savez(path, **arrays)
    return path


def test_medmnist_reader_scales_images_and_flattens_labels(tmp_path):
    from ctfm.data.medmnist import read_medmnist3d

    splits = read_medmnist3d(_fake_organmnist(tmp_path / "organmnist3d.npz"))
    images, labels = splits["train"]
    assert images.shape == (6, 12, 12, 12) and images.dtype == np.float32 and images.max() <= 1.0
    assert labels.shape == (6,) and list(labels) == [0, 1, 0, 1, 0, 1]


def test_medmnist_reader_names_the_file_and_the_missing_split(tmp_path):
    from ctfm.data.medmnist import read_medmnist3d
    from ctfm.errors import CTFMError

    np.savez(tmp_path / "bad.npz", train_images=np.zeros((1, 4, 4, 4)), train_labels=np.zeros((1, 1)))
    with pytest.raises(CTFMError, match="bad.npz: no val_images"):
        read_medmnist3d(tmp_path / "bad.npz")


def test_cli_retrieval_eval_writes_metrics_and_the_thumbnail_figure(tmp_path, capsys):
    from ctfm.cli import main
    from ctfm.hub import save_pretrained
    from ctfm.nn import ct_fm_encoder

    torch.manual_seed(0)
    model = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "model")
    data = _fake_organmnist(tmp_path / "organmnist3d.npz")
    out = tmp_path / "eval"
    assert main(["retrieval-eval", str(data), "--model", str(model), "--out", str(out), "-k", "1", "3"]) == 0
    summary = pd.read_csv(out / "metrics.csv")
    assert list(summary.columns) == ["k", "P", "AP", "HR", "F1"] and list(summary["k"]) == [1, 3]
    assert len(pd.read_csv(out / "per_query.csv")) == 4
    assert (out / "neighbours.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
