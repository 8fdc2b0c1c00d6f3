"""The encoder benchmark end to end on a tiny synthetic corpus, its metrics recomputed from its own files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

TINY = ["--spacing", "5", "4", "4", "--crop-size", "8", "16", "16", "--whole-size", "8", "24", "24",
        "--patch-size", "4", "16", "16", "--bootstrap", "20"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ctfm.data.sample_layouts import make_probe_corpus

    return make_probe_corpus(tmp_path_factory.mktemp("corpus"), n_scans=15, shape=(16, 48, 48), spacing=(5, 2, 2))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from ctfm.hub.saving import save_pretrained
    from ctfm.nn import ct_fm_encoder

    folder = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(1)
    return [str(save_pretrained(ct_fm_encoder(init_filters=4), folder / name)) for name in ("a", "b")]


def test_roi_benchmark_writes_tables_that_agree_with_its_predictions(corpus, encoders, tmp_path, capsys):
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from ctfm.cli import main

    out = tmp_path / "bench"
    models = [encoders[0], f"random:{encoders[0]}"]
    code = main(["benchmark", "probe", str(corpus), "--models", *models, "--protocol", "roi", "--out", str(out),
                 *TINY])  # fmt: skip
    assert code == 0
    metrics = pd.read_csv(out / "metrics.csv")
    predictions = pd.read_csv(out / "predictions.csv", dtype={"label": str, "predicted": str})
    assert len(metrics) == 2 * 2 * 6  # models x targets x metrics
    assert set(metrics["metric"]) == {"balanced_accuracy", "auroc", "f1", "average_precision", "sensitivity",
                                      "specificity"}  # fmt: skip
    for (model, target), rows in predictions.groupby(["model", "target"]):
        scored = metrics[(metrics["model"] == model) & (metrics["target"] == target)].set_index("metric")["value"]
        assert scored["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(rows["label"], rows["predicted"]))
        if target == "lesion_present":
            assert scored["auroc"] == pytest.approx(roc_auc_score(rows["label"] == "1", rows["p_1"]))
            positive, negative = rows[rows["label"] == "1"], rows[rows["label"] == "0"]
            assert scored["sensitivity"] == pytest.approx((positive["predicted"] == "1").mean())
            assert scored["specificity"] == pytest.approx((negative["predicted"] == "0").mean())
        assert len(rows) == 3 * (1 if target == "lesion_present" else 1)  # the test split: one scan of each kind
    assert (metrics["ci_low"] <= metrics["value"] + 1e-9).all() and (
        metrics["value"] <= metrics["ci_high"] + 1e-9
    ).all()
    record = json.loads((out / "benchmark.json").read_text())
    assert record["protocol"]["protocol"] == "roi" and record["protocol"]["crop_size"] == [8, 16, 16]
    assert "| lesion_kind |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 1000
    assert "lesion_present" in capsys.readouterr().out


def test_embeddings_are_cached_per_model(corpus, encoders, tmp_path, monkeypatch):
    from ctfm.analysis import encoder_benchmark as bench
    from ctfm.analysis.encoder_benchmark import BenchmarkSettings, compare_encoders
    from ctfm.transforms.preprocess import CTPreprocessing

    settings = BenchmarkSettings(mode="tiled", preprocessing=CTPreprocessing(spacing=(5, 4, 4)),
                                 patch_size=(4, 16, 16))  # fmt: skip
    first = compare_encoders(corpus, encoders[:1], tmp_path, settings=settings, n_bootstrap=5)
    calls = []
    original = bench.embed_row
    monkeypatch.setattr(bench, "embed_row", lambda *a: calls.append(1) or original(*a))
    again = compare_encoders(corpus, encoders, tmp_path, settings=settings, n_bootstrap=5)
    assert len(calls) == 15  # only the second model embedded anything
    pd.testing.assert_frame_equal(first.metrics, again.metrics[again.metrics["model"] == encoders[0]])


def test_bad_rows_are_named_and_blank_labels_counted(corpus, encoders, tmp_path):
    from ctfm.analysis.encoder_benchmark import BenchmarkSettings, compare_encoders
    from ctfm.errors import CTFMError
    from ctfm.transforms.preprocess import CTPreprocessing

    table = pd.read_csv(corpus)
    table["image"] = [str(corpus.parent / p) for p in table["image"]]
    table["mask"] = [str(corpus.parent / p) for p in table["mask"]]
    table.loc[0, "image"] = str(tmp_path / "gone.nii.gz")
    table["lesion_kind"] = table["lesion_kind"].astype(object)
    table.loc[3, "lesion_kind"] = ""
    labels = tmp_path / "labels.csv"
    table.to_csv(labels, index=False)
    settings = BenchmarkSettings(mode="tiled", preprocessing=CTPreprocessing(spacing=(5, 4, 4)),
                                 patch_size=(4, 16, 16))  # fmt: skip
    result = compare_encoders(labels, encoders[:1], tmp_path / "out", settings=settings, n_bootstrap=5)
    assert result.skipped == [(f"{labels} line 2", f"image {str(tmp_path / 'gone.nii.gz')!r} does not exist")]
    assert result.dropped_labels == {"lesion_present": 0, "lesion_kind": 1}
    table.loc[5, "split"] = "training"
    table.to_csv(labels, index=False)
    with pytest.raises(CTFMError, match=r"labels.csv line 7: split 'training' is not train, val or test"):
        compare_encoders(labels, encoders[:1], tmp_path / "out2", settings=settings)


def test_metrics_match_their_definitions():
    from ctfm.analysis.encoder_benchmark import metrics

    y = np.array(["a", "a", "a", "b", "b"])
    p_b = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    scored = metrics(y, np.stack([1 - p_b, p_b], axis=1), ["a", "b"])
    # predicted: a b a b a -> TP 1, FN 1, TN 2, FP 1
    assert scored["sensitivity"] == pytest.approx(0.5) and scored["specificity"] == pytest.approx(2 / 3)
    assert scored["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert scored["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert scored["auroc"] == pytest.approx(5 / 6)  # pairs (b, a) ranked right: 0.9 > all, 0.4 > 0.1 and 0.2


def test_random_baseline_keeps_the_architecture_and_changes_the_weights(encoders):
    from ctfm.analysis.encoder_benchmark import load_reference

    trained, floor = load_reference(encoders[0]), load_reference(f"random:{encoders[0]}")
    assert floor.state_dict().keys() == trained.state_dict().keys()
    assert not torch.equal(floor.conv_init.weight, trained.conv_init.weight)
    torch.testing.assert_close(load_reference(f"random:{encoders[0]}").conv_init.weight, floor.conv_init.weight)
