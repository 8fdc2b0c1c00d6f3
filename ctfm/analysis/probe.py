"""Linear probes on frozen features, as FMCIB evaluates them: standardise, logistic regression, bootstrap CIs.

The regularisation strength is chosen by stratified cross-validation on the training part only; the test part is
scored once, with 95% confidence intervals from a seeded bootstrap of the test rows (1,000 resamples). A
training-fraction curve refits on 10 / 25 / 50 / 100% of the training rows (stratified, seeded) to show how the
features do with fewer labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctfm.errors import CTFMError

logger = logging.getLogger(__name__)

C_GRID = tuple(10.0**k for k in range(-4, 3))
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
N_BOOTSTRAP = 1000
METRICS = ("auroc", "balanced_accuracy", "map")


@dataclass(frozen=True)
class ProbeData:
    features: np.ndarray
    labels: np.ndarray
    classes: list[Any]
    train: np.ndarray
    test: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)


def read_features(source: str | Path) -> pd.DataFrame:
    """The table a probe reads: a ``ctfm embed`` table (damaged parts and unusable rows left out, each named), a
    ``ctfm features`` Parquet file, or a CSV of ``feature*`` columns. Anything else is one error naming it.

    Args:
        source: the table's path (a Parquet folder or file, or a CSV / TSV).

    Returns:
        Its rows, with an ``embedding`` column of vectors or ``feature*`` columns, and the label columns.
    """
    from ctfm.embedding_table import METADATA_KEY, read_table

    source = Path(source)
    if not source.exists():
        raise CTFMError(f"{source}: no such features table")
    where = f"{source}: "
    if source.suffix.lower() in (".csv", ".tsv", ".txt") and source.is_file():
        try:
            table = pd.read_csv(source, sep="\t" if source.suffix.lower() == ".tsv" else ",")
        except (OSError, ValueError) as err:
            raise CTFMError(f"{where}cannot be read as a CSV ({' '.join(str(err).split())})") from err
        if "embedding" in table.columns:
            raise CTFMError(
                f"{where}a CSV holds the 'embedding' column as text, not vectors; give the Parquet table that "
                "`ctfm embed` or `ctfm features` wrote"
            )
        return table
    import pyarrow.parquet as pq

    try:
        ctfm_table = source.is_dir() or METADATA_KEY in (pq.read_schema(source).metadata or {})
        if ctfm_table:
            return read_table(source)[0]
        return pd.read_parquet(source)
    except (OSError, ValueError) as err:
        raise CTFMError(f"{where}cannot be read as a Parquet features table ({' '.join(str(err).split())})") from err


def _feature_matrix(table: pd.DataFrame, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, usable): each row's features and whether they are a finite, non-empty vector of the common width.

    ``embedding`` lists are used when present, else the ``feature*`` columns (which must be numeric).
    """
    if "embedding" in table.columns:
        vectors = table["embedding"].to_numpy()
        try:
            rows = [np.asarray([] if v is None else v, dtype=np.float64).ravel() for v in vectors]
        except (TypeError, ValueError) as err:
            raise CTFMError(f"{where}the 'embedding' column does not hold numbers ({err})") from err
        lengths = np.array([len(r) for r in rows])
        width = int(np.bincount(lengths).argmax()) if len(lengths) else 0
        if width == 0:
            raise CTFMError(f"{where}every embedding is empty")
        odd = np.flatnonzero((lengths != width) & (lengths > 0))
        if len(odd):
            raise CTFMError(
                f"{where}embeddings of different widths: row {odd[0]} has {lengths[odd[0]]} values, most have {width}"
            )
        features = np.zeros((len(rows), width))
        usable = lengths == width
        for i in np.flatnonzero(usable):
            features[i] = rows[i]
    else:
        columns = [c for c in table.columns if str(c).startswith("feature")]
        if not columns:
            raise CTFMError(f"{where}no 'embedding' column and no feature* columns to probe")
        try:
            features = table[columns].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise CTFMError(f"{where}feature columns must hold numbers ({err})") from err
        usable = np.ones(len(table), dtype=bool)
    return features, usable & np.isfinite(features).all(axis=1)


def probe_data(
    table: pd.DataFrame, label: str, *, test_size: float = 0.2, seed: int = 0, source: str = ""
) -> ProbeData:
    """Features (``embedding`` lists or ``feature*`` columns), encoded labels and a train / test split.

    A ``split`` column (train / test) is used when present, else a stratified, seeded ``test_size`` split.
    """
    from sklearn.model_selection import train_test_split

    where = f"{source}: " if source else ""
    if label not in table.columns:
        raise CTFMError(f"{where}no label column {label!r}; found {list(table.columns)}")
    blank = table[label].isna().to_numpy() | table[label].astype(str).str.strip().eq("").to_numpy()
    features, usable = _feature_matrix(table, where)
    dropped = {"blank label": int(blank.sum()), "empty or non-finite features": int((~usable & ~blank).sum())}
    for reason, count in dropped.items():
        if count:
            logger.warning("%sleft out %d row(s) with %s", where, count, reason)
    keep = usable & ~blank
    table, features = table[keep].reset_index(drop=True), features[keep]
    if table.empty:
        raise CTFMError(f"{where}no row has both a label and usable features")
    classes, labels = np.unique(
        table[label].astype(str) if table[label].dtype == object else table[label], return_inverse=True
    )
    if len(classes) < 2:
        raise CTFMError(f"{where}label column {label!r} has a single class ({classes.tolist()}); a probe needs two")
    counts = np.bincount(labels)
    if counts.min() < 2:
        raise CTFMError(
            f"{where}class {classes[counts.argmin()]!r} of {label!r} has one row; each class needs two or more"
        )
    index = np.arange(len(labels))
    if "split" in table.columns:
        split = table["split"].astype(str).str.lower()
        train, test = index[split.isin(["train", "training"]).to_numpy()], index[split.eq("test").to_numpy()]
        if not len(train) or not len(test):
            raise CTFMError(f"{where}the split column needs both train and test rows")
        for part, rows in (("train", train), ("test", test)):
            absent = [str(classes[c]) for c in range(len(classes)) if not (labels[rows] == c).any()]
            if absent:
                raise CTFMError(f"{where}no {part} rows of class {', '.join(absent)} of {label!r} in the split column")
    else:
        try:
            train, test = train_test_split(index, test_size=test_size, stratify=labels, random_state=seed)
        except ValueError as err:
            raise CTFMError(
                f"{where}{len(labels)} labelled rows of {len(classes)} classes are too few to hold out {test_size:g} "
                f"of them as a test set with every class ({err})"
            ) from err
    return ProbeData(features, labels, classes.tolist(), np.sort(train), np.sort(test), dropped)


def fit_probe(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, folds: int = 5) -> Any:
    """StandardScaler + LogisticRegression with C chosen by stratified CV (AUROC, one-vs-rest for several classes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = int(min(folds, np.bincount(labels).min()))
    if folds < 2:
        return pipeline.fit(features, labels)  # too few rows of a class to cross-validate: the default C
    scoring = "roc_auc" if labels.max() == 1 else "roc_auc_ovr"
    search = GridSearchCV(
        pipeline,
        {"logisticregression__C": list(C_GRID)},
        scoring=scoring,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    return search.fit(features, labels).best_estimator_


def scores(labels: np.ndarray, probabilities: np.ndarray, n_classes: int) -> dict[str, float]:
    """AUROC (one-vs-rest macro for several classes), balanced accuracy and mean average precision."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    predicted = probabilities.argmax(1)
    if n_classes == 2:
        auroc = roc_auc_score(labels, probabilities[:, 1])
        mean_ap = average_precision_score(labels, probabilities[:, 1])
    else:
        onehot = np.eye(n_classes)[labels]
        auroc = roc_auc_score(labels, probabilities, multi_class="ovr", labels=list(range(n_classes)))
        mean_ap = average_precision_score(onehot, probabilities, average="macro")
    return {"auroc": float(auroc), "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "map": float(mean_ap)}  # fmt: skip


def bootstrap(
    labels: np.ndarray, probabilities: np.ndarray, n_classes: int, *, n: int = N_BOOTSTRAP, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Each metric with its seeded bootstrap 95% CI; resamples missing a class are redrawn (AUROC needs all)."""
    rng = np.random.default_rng(seed)
    point = scores(labels, probabilities, n_classes)
    draws: list[dict[str, float]] = []
    attempts = 0
    while len(draws) < n and attempts < 20 * n:
        attempts += 1
        sample = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[sample])) < n_classes:
            continue
        draws.append(scores(labels[sample], probabilities[sample], n_classes))
    out = {}
    for metric in METRICS:
        values = np.array([d[metric] for d in draws])
        low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
        out[metric] = {"value": point[metric], "ci_low": float(low), "ci_high": float(high)}
    return out


def subsample(labels: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified ``fraction`` of ``train`` (at least two rows of every class that has two)."""
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(labels[train]):
        rows = train[labels[train] == cls]
        picked.append(rng.choice(rows, size=min(len(rows), max(2, round(fraction * len(rows)))), replace=False))
    return np.sort(np.concatenate(picked))


def run_probe(
    table: pd.DataFrame,
    label: str,
    *,
    fractions: Sequence[float] = FRACTIONS,
    test_size: float = 0.2,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    source: str = "",
) -> dict[str, Any]:
    """A linear probe of one label on frozen features, scored on held-out rows.

    Args:
        table: rows with features (an ``embedding`` column or ``feature*`` columns, see :func:`read_features`)
            and the ``label`` column; a ``split`` column (train / test) fixes the split. Rows with a blank label
            or unusable features are left out and counted.
        label: the column to predict (two or more classes, each with two rows or more).
        fractions: fractions of the training rows for the training-fraction curve (1.0 is always added).
        test_size: fraction held out for the test when there is no ``split`` column (stratified).
        n_bootstrap: bootstrap resamples of the test rows for the 95% confidence intervals.
        seed: seeds the split, the subsamples, the cross-validation and the bootstrap.
        source: the table's name, used in messages.

    Returns:
        ``label``, ``classes``, ``n_train``, ``n_test``, ``dropped_rows``, ``n_bootstrap``, ``seed``, the chosen
        ``C``, ``metrics`` (AUROC, balanced accuracy, mAP, each ``{value, ci_low, ci_high}``), ``roc`` points,
        the ``training_fraction`` curve, and the test rows' ``predictions`` (see :func:`test_predictions`).

    Raises:
        CTFMError: no such label column, a single class, or too few rows to hold out every class.

    Examples:
        >>> import numpy as np, pandas as pd
        >>> from ctfm.analysis import run_probe
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat(["benign", "malignant"], 20)
        >>> features = rng.normal(size=(40, 8)) + (labels == "malignant")[:, None]  # e.g. ctfm features output
        >>> table = pd.DataFrame(features, columns=[f"feature_{i}" for i in range(8)]).assign(label=labels)
        >>> result = run_probe(table, "label", n_bootstrap=50)
        >>> result["classes"], result["n_train"], result["n_test"], sorted(result["metrics"])
        (['benign', 'malignant'], 32, 8, ['auroc', 'balanced_accuracy', 'map'])
    """
    data = probe_data(table, label, test_size=test_size, seed=seed, source=source)
    n_classes = len(data.classes)
    curve = []
    results: dict[str, Any] = {}
    for fraction in sorted(set(float(f) for f in fractions) | {1.0}):
        rows = data.train if fraction >= 1.0 else subsample(data.labels, data.train, fraction, seed)
        model = fit_probe(data.features[rows], data.labels[rows], seed=seed)
        probabilities = model.predict_proba(data.features[data.test])
        metrics = bootstrap(data.labels[data.test], probabilities, n_classes, n=n_bootstrap, seed=seed)
        curve.append({"fraction": fraction, "train_rows": int(len(rows)), **metrics})
        if fraction >= 1.0:
            results = {"metrics": metrics, "C": float(model[-1].C), "probabilities": probabilities}
    return {
        "label": label,
        "classes": [str(c) for c in data.classes],
        "n_train": int(len(data.train)),
        "n_test": int(len(data.test)),
        "dropped_rows": data.dropped,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "C": results["C"],
        "metrics": results["metrics"],
        "roc": roc_points(data.labels[data.test], results["probabilities"], data.classes),
        "training_fraction": curve,
        "predictions": test_predictions(table, label, data, results["probabilities"]),
    }


def test_predictions(table: pd.DataFrame, label: str, data: ProbeData, probabilities: np.ndarray) -> pd.DataFrame:
    """The scored test rows: ``row`` (position among the rows with a label), ``path`` when the table has one, the
    true ``label`` and ``p_<class>`` per class: everything the test metrics are computed from."""
    labelled = table[table[label].notna()].reset_index(drop=True)
    frame = pd.DataFrame({"row": data.test})
    if "path" in labelled.columns:
        frame["path"] = labelled["path"].to_numpy()[data.test]
    frame["label"] = [data.classes[i] for i in data.labels[data.test]]
    for index, name in enumerate(data.classes):
        frame[f"p_{name}"] = probabilities[:, index]
    return frame


def roc_points(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[Any]) -> dict[str, dict[str, list]]:
    """ROC curves: the positive class for a binary probe, else each class against the rest."""
    from sklearn.metrics import roc_curve

    targets = [1] if len(classes) == 2 else range(len(classes))
    curves = {}
    for cls in targets:
        fpr, tpr, _ = roc_curve(labels == cls, probabilities[:, cls])
        curves[str(classes[cls])] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return curves
