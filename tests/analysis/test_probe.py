"""``ctfm probe``: separable features score near 1 with tight CIs, noise near chance; seeded; bad labels named."""

import json

import numpy as np
import pandas as pd
import pytest

from ctfm.analysis.probe import bootstrap, run_probe
from ctfm.cli import main
from ctfm.errors import CTFMError


def table(n=120, classes=2, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    features = rng.standard_normal((n, 8))
    features[:, 0] += signal * labels
    return pd.DataFrame({"embedding": list(features), "site": [f"c{k}" for k in labels]})


def test_probe_cli_binary(tmp_path, capsys):
    table().to_parquet(tmp_path / "features.parquet")
    code = main(["probe", str(tmp_path / "features.parquet"), "--label", "site", "--out", str(tmp_path / "probe"),
                 "--bootstrap", "100"])  # fmt: skip
    assert code == 0 and "auroc" in capsys.readouterr().out
    results = json.loads((tmp_path / "probe" / "probe.json").read_text())
    auroc = results["metrics"]["auroc"]
    assert auroc["value"] > 0.9 and auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"] <= 1.0
    assert (results["n_train"], results["n_test"]) == (96, 24)
    assert [p["fraction"] for p in results["training_fraction"]] == [0.1, 0.25, 0.5, 1.0]
    assert [p["train_rows"] for p in results["training_fraction"]] == [10, 24, 48, 96]
    assert (tmp_path / "probe" / "roc.png").stat().st_size > 0
    assert (tmp_path / "probe" / "training_fraction.png").stat().st_size > 0
    record = json.loads((tmp_path / "probe" / "provenance.json").read_text())
    assert record["inputs"][0]["path"] == str(tmp_path / "features.parquet") and record["settings"]["label"] == "site"
    # The same --out again: one line naming the file, the results kept; --overwrite re-runs.
    args = ["probe", str(tmp_path / "features.parquet"), "--label", "site", "--out", str(tmp_path / "probe")]
    assert (
        main([*args, "--bootstrap", "10"]) == 1 and "probe.json (and 2 more): exists already" in capsys.readouterr().err
    )
    assert json.loads((tmp_path / "probe" / "probe.json").read_text()) == results
    assert main([*args, "--bootstrap", "10", "--overwrite"]) == 0


def test_multiclass_and_chance():
    strong = run_probe(table(classes=4), "site", fractions=[1.0], n_bootstrap=50)
    assert strong["classes"] == ["c0", "c1", "c2", "c3"] and strong["metrics"]["balanced_accuracy"]["value"] > 0.7
    noise = run_probe(table(classes=4, signal=0.0), "site", fractions=[1.0], n_bootstrap=50)
    assert (
        noise["metrics"]["balanced_accuracy"]["ci_low"] < 0.25 + 0.05 < strong["metrics"]["balanced_accuracy"]["ci_low"]
    )
    assert set(noise["roc"]) == {"c0", "c1", "c2", "c3"}


def test_bootstrap_is_seeded():
    labels = np.array([0, 1] * 20)
    probabilities = np.random.default_rng(1).dirichlet([1, 1], size=40)
    assert bootstrap(labels, probabilities, 2, n=50, seed=3) == bootstrap(labels, probabilities, 2, n=50, seed=3)
    assert bootstrap(labels, probabilities, 2, n=50, seed=3) != bootstrap(labels, probabilities, 2, n=50, seed=4)


def test_bad_labels_are_named():
    with pytest.raises(CTFMError, match="single class"):
        run_probe(table().assign(site="c0"), "site", source="f.parquet")
    with pytest.raises(CTFMError, match="f.parquet: no label column 'kind'"):
        run_probe(table(), "kind", source="f.parquet")


def test_a_split_column_with_a_rare_class_gives_a_curve_or_a_named_error():
    rare = table(n=40).assign(split=["test" if i % 5 == 0 else "train" for i in range(40)])
    rare.loc[rare.index[(rare["split"] == "train") & (rare["site"] == "c1")][1:], "site"] = "c0"  # one c1 to train
    results = run_probe(rare, "site", fractions=[0.1, 1.0], n_bootstrap=20)
    assert [p["train_rows"] for p in results["training_fraction"]] == [4, 32]  # 3 of c0, the only c1
    with pytest.raises(CTFMError, match="f.parquet: no train rows of class c1 of 'site' in the split column"):
        run_probe(rare.assign(site=np.where(rare["split"] == "train", "c0", rare["site"])), "site", source="f.parquet")


def test_blank_labels_and_unusable_embeddings_are_left_out_and_counted(tmp_path, capsys):
    rows = table(n=60)
    rows.loc[[0, 1], "site"] = None
    rows.loc[2, "site"] = " "
    rows.at[3, "embedding"] = np.full(8, np.nan)
    rows.at[4, "embedding"] = np.array([])
    rows.to_parquet(tmp_path / "features.parquet")
    code = main(["probe", str(tmp_path / "features.parquet"), "--label", "site", "--out", str(tmp_path / "probe"),
                 "--bootstrap", "20", "--fractions", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "left out 3 row(s) with blank label" in printed
    assert "left out 2 row(s) with empty or non-finite features" in printed
    results = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert results["n_train"] + results["n_test"] == 55
    assert results["dropped_rows"] == {"blank label": 3, "empty or non-finite features": 2}


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda t, d: t.assign(embedding=[np.ones(8 if i else 5) for i in range(len(t))]).to_parquet(d / "f.parquet"),
         "f.parquet: embeddings of different widths: row 0 has 5 values, most have 8"),
        (lambda t, d: t.assign(embedding=[np.array([])] * len(t)).to_parquet(d / "f.parquet"),
         "f.parquet: every embedding is empty"),
        (lambda t, d: t.to_csv(d / "f.csv"), "f.csv: a CSV holds the 'embedding' column as text"),
        (lambda t, d: (d / "f.parquet").write_bytes(b"PAR1 not really"),
         "f.parquet: cannot be read as a Parquet features table"),
        (lambda t, d: t.head(4).to_parquet(d / "f.parquet"), "f.parquet: 4 labelled rows of 2 classes are too few"),
    ],
)  # fmt: skip
def test_a_table_a_probe_cannot_use_is_one_line(tmp_path, capsys, make, words):
    make(table(), tmp_path)
    source = next(tmp_path.glob("f.*"))
    code = main(["probe", str(source), "--label", "site", "--out", str(tmp_path / "probe"), "--bootstrap", "20"])
    err = capsys.readouterr().err
    assert code == 1 and words in err and len(err.strip().splitlines()) == 1, err
