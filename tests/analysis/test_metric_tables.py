"""Every number of a written metric table, recomputed independently (numpy, scikit-learn, scikit-image) from the
files the command wrote or the inputs it was given."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.cli import main


def features(n=90, classes=3, signal=1.5, seed=1):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    values = rng.standard_normal((n, 6))
    values[:, 0] += signal * labels
    paths = [f"scan{i:03d}.nii.gz" for i in range(n)]
    return pd.DataFrame({"path": paths, "embedding": list(values), "site": [f"s{k}" for k in labels]})


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_metrics_are_those_of_the_written_test_predictions(tmp_path, classes):
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    table = features(classes=classes)
    table.to_parquet(tmp_path / "features.parquet")
    out = tmp_path / "probe"
    args = ["probe", str(tmp_path / "features.parquet"), "--label", "site", "--out", str(out)]
    assert main([*args, "--bootstrap", "20", "--fractions", "1.0"]) == 0
    results = json.loads((out / "probe.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == results["n_test"] and "predictions" not in results
    # each written row is the table's own row with its own label
    merged = predictions.merge(table[["path", "site"]], on="path")
    assert (merged["label"] == merged["site"]).all() and len(merged) == len(predictions)
    names = results["classes"]
    probabilities = predictions[[f"p_{c}" for c in names]].to_numpy()
    truth = np.array([names.index(v) for v in predictions["label"]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    if classes == 2:
        auroc = roc_auc_score(truth, probabilities[:, 1])
        mean_ap = average_precision_score(truth, probabilities[:, 1])
    else:
        auroc = roc_auc_score(truth, probabilities, multi_class="ovr")
        mean_ap = np.mean([average_precision_score(truth == c, probabilities[:, c]) for c in range(classes)])
    metrics = results["metrics"]
    assert metrics["auroc"]["value"] == pytest.approx(auroc, abs=1e-9)
    assert metrics["map"]["value"] == pytest.approx(mean_ap, abs=1e-9)
    balanced = balanced_accuracy_score(truth, probabilities.argmax(axis=1))
    assert metrics["balanced_accuracy"]["value"] == pytest.approx(balanced, abs=1e-9)


def numpy_retrieval(database, database_labels, queries, query_labels, k):
    """P@k, AP@k, HR@k per query and the macro F1 of majority votes, by brute-force cosine ranking."""
    from sklearn.metrics import f1_score

    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    order = np.argsort(-(unit(queries) @ unit(database).T), axis=1, kind="stable")[:, :k]
    rows = []
    votes = []
    for label, ranked in zip(query_labels, database_labels[order]):
        hits = ranked == label
        precisions = [hits[: i + 1].mean() for i in range(k) if hits[i]]
        rows.append((hits.mean(), np.mean(precisions) if precisions else 0.0, float(hits.any())))
        values, first = np.unique(ranked, return_index=True)
        counts = np.array([np.sum(ranked == v) for v in values])
        tied = values[counts == counts.max()]
        votes.append(min(tied, key=lambda v: first[list(values).index(v)]))
    return np.array(rows), f1_score(query_labels, votes, average="macro")


def test_retrieval_tables_match_a_brute_force_ranking(tmp_path):
    from ctfm.analysis.retrieval_eval import write_retrieval

    rng = np.random.default_rng(3)
    database_labels = np.array(["a", "b", "c"] * 12)
    centres = {"a": 0.0, "b": 1.0, "c": 2.0}
    database = rng.standard_normal((36, 5)) + np.array([[centres[v], 0, 0, 0, 0] for v in database_labels])
    query_labels = np.array(["a", "b", "c"] * 5)
    queries = rng.standard_normal((15, 5)) + np.array([[centres[v], 0, 0, 0, 0] for v in query_labels])
    images = [np.zeros((3, 4, 4))] * 36
    result = write_retrieval(tmp_path, database, database_labels, images, queries, query_labels, images[:15],
                             (3, 5), figure_queries=2)  # fmt: skip
    per_query = pd.read_csv(result.per_query_csv)
    summary = pd.read_csv(result.metrics_csv).set_index("k")
    for k in (3, 5):
        expected, f1 = numpy_retrieval(database, database_labels, queries, query_labels, k)
        np.testing.assert_allclose(per_query[[f"P@{k}", f"AP@{k}", f"HR@{k}"]].to_numpy(), expected, atol=1e-12)
        np.testing.assert_allclose(summary.loc[k, ["P", "AP", "HR"]].to_numpy(dtype=float), expected.mean(axis=0))
        assert summary.loc[k, "F1"] == pytest.approx(f1)


def test_restoration_psnr_ssim_rmse_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from ctfm.image_quality import restoration_metrics

    rng = np.random.default_rng(0)
    reference = rng.uniform(-1100, 2100, (2, 1, 32, 40))
    restored = reference + rng.normal(0, 60, reference.shape)
    metrics = restoration_metrics(torch.from_numpy(restored), torch.from_numpy(reference))
    low, high = -1024.0, 2048.0
    for index in range(2):
        mine, truth = np.clip(restored[index, 0], low, high), np.clip(reference[index, 0], low, high)
        psnr = peak_signal_noise_ratio(truth, mine, data_range=high - low)
        ssim = structural_similarity(truth, mine, data_range=high - low, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)  # fmt: skip
        assert float(metrics["psnr"][index]) == pytest.approx(psnr, abs=1e-3)
        assert float(metrics["rmse"][index]) == pytest.approx(np.sqrt(np.mean((mine - truth) ** 2)), rel=1e-5)
        assert float(metrics["ssim"][index]) == pytest.approx(ssim, abs=2e-3)
