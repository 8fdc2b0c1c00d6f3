"""Compare encoders with frozen linear probes under one stated protocol (the CVPR 2026 CT foundation-model challenge).

The challenge "Foundation Models for General CT Image Diagnosis" scores an encoder by frozen linear probing:
every scan is embedded once with the same preprocessing for every model (orientation SPL, 1 mm isotropic,
[-1024, 2048] HU scaled to [0, 1]; the whole scan padded or cropped to 320^3, or for "ROI" diseases a 160^3 crop
centred on an organ mask; one forward pass, global average pooling of the deepest map), a logistic regression is
fitted per disease with its C chosen on a validation split, and the test split is scored by balanced accuracy, then
AUROC, F1, average precision, sensitivity and specificity. This module runs that protocol for any models
``ctfm.load`` reads, plus the baselines that give every number a floor (the same architecture with random
weights: ``random:<model>``), and writes per-model metrics with bootstrap 95% CIs, per-sample predictions, a
markdown table and a figure.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError
from ctfm.transforms.preprocess import PATCH_SIZE, CTPreprocessing

#: The challenge's preprocessing: 1 mm isotropic, the CT-FM HU range; the whole scan, not a body crop.
CHALLENGE_PREPROCESSING = CTPreprocessing(spacing=(1.0, 1.0, 1.0), crop_foreground=False)
#: The challenge's whole-scan input and the crop around a mask for ROI diseases (voxels at 1 mm).
WHOLE_SIZE = (320, 320, 320)
CROP_SIZE = (160, 160, 160)
#: Inverse regularisation strengths tried on the validation split.
C_GRID = tuple(10.0**k for k in range(-4, 3))
METRICS = ("balanced_accuracy", "auroc", "f1", "average_precision", "sensitivity", "specificity")
RANDOM_PREFIX = "random:"
#: Columns of the labels CSV that are not targets.
RESERVED = ("image", "mask", "labels", "split")
#: What a run writes besides its embedding cache (which later runs reuse).
RESULT_FILES = ("metrics.csv", "predictions.csv", "results.md", "results.png", "benchmark.json")
Protocol = Literal["global", "roi"]
Mode = Literal["whole", "tiled"]


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything that decides an embedding: identical for every model of one benchmark, recorded with it.

    Attributes:
        protocol: ``"global"`` embeds the whole scan; ``"roi"`` a region given by the CSV's ``mask``.
        mode: ``"whole"``: one forward pass over ``whole_size`` (or ``crop_size`` around the region), the
            challenge's protocol; ``"tiled"``: the mean over ``patch_size`` tiles.
        preprocessing: the preprocessing of every scan (the challenge's: 1 mm isotropic, no body crop).
        whole_size: the whole-scan input (z, y, x) in voxels.
        crop_size: the box around a region in voxels.
        patch_size: the tile of ``tiled`` mode in voxels.
    """

    protocol: Protocol = "global"
    mode: Mode = "whole"
    preprocessing: CTPreprocessing = CHALLENGE_PREPROCESSING
    whole_size: tuple[int, ...] = WHOLE_SIZE
    crop_size: tuple[int, ...] = CROP_SIZE
    patch_size: tuple[int, ...] = PATCH_SIZE

    def describe(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class BenchmarkResult:
    """The benchmark's tables, and the rows it could not use (``skipped``: (CSV row, reason))."""

    metrics: pd.DataFrame
    predictions: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_labels: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- models


def model_slug(reference: str) -> str:
    """A file-name-safe name for a model reference (a registry name, a folder, ``random:<model>``)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", reference.strip("/")).strip("_")[-40:]
    return f"{readable}-{hashlib.sha256(reference.encode()).hexdigest()[:8]}"


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with freshly initialised weights (seeded): the floor every encoder must beat."""
    twin = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in twin.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    return twin.eval()


def load_reference(reference: str, device: str = "cpu") -> nn.Module:
    """``ctfm.load`` of a name or folder; ``random:<name or folder>`` is that architecture with random weights."""
    from ctfm.hub.loading import load

    if reference.startswith(RANDOM_PREFIX):
        return randomised(load(reference[len(RANDOM_PREFIX) :], device=device))
    return load(reference, device=device)


# -------------------------------------------------------------------------------------------- labels CSV


def read_labels(csv: str | Path, settings: BenchmarkSettings, targets: Sequence[str] | None = None) -> tuple[
    pd.DataFrame, list[str], list[tuple[str, str]]
]:  # fmt: skip
    """The usable rows of a labels CSV, its target columns, and the rows skipped with their reasons.

    Paths resolve against the CSV's folder. A row without its image (or, for the ROI protocol, its mask) is
    skipped and named; a ``split`` value other than train / val / test stops with the row named.
    """
    csv = Path(csv)
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CTFMError(f"{csv}: not a readable CSV ({err})") from err
    if "image" not in table.columns:
        raise CTFMError(f"{csv}: no 'image' column (columns: {', '.join(table.columns)})")
    if settings.protocol == "roi" and "mask" not in table.columns:
        raise CTFMError(f"{csv}: the ROI protocol needs a 'mask' column (a label map or mask folder per scan)")
    chosen = list(targets) if targets else [c for c in table.columns if c not in RESERVED]
    missing = [t for t in chosen if t not in table.columns]
    if missing or not chosen:
        raise CTFMError(f"{csv}: no target column {', '.join(missing) or '(every column is reserved)'}")
    if "split" in table.columns:
        bad = table.index[~table["split"].str.strip().isin(["train", "val", "test"])]
        if len(bad):
            row = int(bad[0]) + 2
            raise CTFMError(f"{csv} line {row}: split {table.at[bad[0], 'split']!r} is not train, val or test")
    skipped = []
    keep = []
    for position, (index, row) in enumerate(table.iterrows()):
        line = f"{csv} line {position + 2}"
        for column in ("image", "mask") if settings.protocol == "roi" else ("image",):
            value = str(row[column]).strip()
            path = Path(value) if Path(value).is_absolute() else csv.parent / value
            if not value or not path.exists():
                skipped.append((line, f"{column} {value!r} does not exist"))
                break
            table.at[index, column] = str(path)
        else:
            keep.append(index)
    return table.loc[keep].reset_index(drop=True), chosen, skipped


# --------------------------------------------------------------------------------------------- embedding


def embed_row(model: nn.Module, row: pd.Series, settings: BenchmarkSettings) -> np.ndarray:
    """One scan's (or one region's) embedding under ``settings``."""
    from ctfm.embedding import RegionPool, embed

    pre = settings.preprocessing
    if settings.protocol == "roi":
        labels = [s.strip() for s in str(row.get("labels", "")).split(";") if s.strip()] or None
        pool: RegionPool = "crop" if settings.mode == "whole" else "mean"
        vector = embed(
            model, row["image"], mask=row["mask"], labels=labels, pool=pool, crop_size=settings.crop_size,
            patch_size=settings.patch_size, preprocess=pre,
        )  # fmt: skip
    elif settings.mode == "whole":
        vector = embed(model, row["image"], whole_volume=settings.whole_size, preprocess=pre)
    else:
        vector = embed(model, row["image"], patch_size=settings.patch_size, preprocess=pre)
    return np.asarray(vector, dtype=np.float32)


def _row_key(row: pd.Series) -> str:
    return json.dumps([row["image"], row.get("mask", ""), row.get("labels", "")])


def embed_table(
    model: nn.Module, rows: pd.DataFrame, settings: BenchmarkSettings, cache: Path, *, name: str = ""
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """Embeddings of every row (key -> vector), kept in ``cache`` (an ``.npz``) so a re-run embeds only new rows.

    A row that fails (unreadable scan, empty region) is returned as skipped with its reason; the rest go on.
    """
    from ctfm.errors import InvalidScanError

    fingerprint = json.dumps(settings.describe(), sort_keys=True)
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if str(stored["settings"]) == fingerprint:
                known = dict(zip(stored["keys"].tolist(), stored["vectors"]))
    skipped = []
    todo = [row for _, row in rows.iterrows() if _row_key(row) not in known]
    for row in tqdm(todo, desc=f"embedding {name}".strip(), unit="scan", disable=len(todo) < 2):
        try:
            known[_row_key(row)] = embed_row(model, row, settings)
        except (CTFMError, InvalidScanError, ValueError, RuntimeError, OSError) as err:
            skipped.append((str(row["image"]), str(err).splitlines()[0]))
    if todo and known:
        keys = np.array(list(known))
        vectors = np.stack(list(known.values()))
        cache.parent.mkdir(parents=True, exist_ok=True)

        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, keys=keys, vectors=vectors, settings=np.array(fingerprint))

        write_atomically(cache, save)
    return known, skipped


# ------------------------------------------------------------------------------------------------ probes


def split_rows(labels: np.ndarray, split: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    """Row indices of train / val / test: the given split, else a stratified, seeded 60 / 20 / 20 split."""
    if split is not None:
        return {part: np.flatnonzero(split == part) for part in ("train", "val", "test")}
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    rest, test = train_test_split(rows, test_size=0.2, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=0.25, stratify=labels[rest], random_state=seed)
    return {"train": train, "val": val, "test": test}


def fit_probe(x: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray], c_grid: Sequence[float] = C_GRID) -> Any:
    """Standardise + logistic regression; C is the grid value with the best validation balanced accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def probe(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(
            x[parts["train"]], y[parts["train"]]
        )

    if len(parts["val"]) == 0:
        return probe(1.0)
    scores = [balanced_accuracy_score(y[parts["val"]], probe(c).predict(x[parts["val"]])) for c in c_grid]
    return probe(c_grid[int(np.argmax(scores))])


def metrics(y: np.ndarray, probabilities: np.ndarray, classes: Sequence[Any]) -> dict[str, float]:
    """The challenge's six metrics; one-vs-rest macro averages for more than two classes."""
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        recall_score,
        roc_auc_score,
    )

    predicted = np.asarray(classes)[probabilities.argmax(1)]
    onehot = (y[:, None] == np.asarray(classes)[None, :]).astype(int)
    matrix = confusion_matrix(y, predicted, labels=list(classes))
    true_negatives = matrix.sum() - matrix.sum(0) - matrix.sum(1) + np.diag(matrix)
    specificity = true_negatives / np.maximum(true_negatives + matrix.sum(0) - np.diag(matrix), 1)
    if len(classes) == 2:
        positive = classes[1]
        return {
            "balanced_accuracy": balanced_accuracy_score(y, predicted),
            "auroc": roc_auc_score(onehot[:, 1], probabilities[:, 1]),
            "f1": f1_score(y, predicted, pos_label=positive, zero_division=0),
            "average_precision": average_precision_score(onehot[:, 1], probabilities[:, 1]),
            "sensitivity": recall_score(y, predicted, pos_label=positive, zero_division=0),
            "specificity": float(specificity[1]),
        }
    return {
        "balanced_accuracy": balanced_accuracy_score(y, predicted),
        "auroc": roc_auc_score(onehot, probabilities, average="macro", multi_class="ovr"),
        "f1": f1_score(y, predicted, average="macro", zero_division=0),
        "average_precision": average_precision_score(onehot, probabilities, average="macro"),
        "sensitivity": recall_score(y, predicted, average="macro", zero_division=0),
        "specificity": float(specificity.mean()),
    }


def bootstrap_ci(
    y: np.ndarray, probabilities: np.ndarray, classes: Sequence[Any], n: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile 95% CI of each metric over ``n`` seeded resamples of the test rows (resamples that miss a class
    are drawn again, at most ``10 n`` draws)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in METRICS}
    attempts = 0
    while len(draws[METRICS[0]]) < n and attempts < 10 * n:
        attempts += 1
        sample = rng.integers(0, len(y), len(y))
        if len(np.unique(y[sample])) < len(classes):
            continue
        for name, value in metrics(y[sample], probabilities[sample], classes).items():
            draws[name].append(value)
    return {m: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (np.nan, np.nan)
            for m, v in draws.items()}  # fmt: skip


def probe_target(
    vectors: np.ndarray, rows: pd.DataFrame, target: str, *, seed: int = 0, n_bootstrap: int = 1000
) -> tuple[dict[str, Any], pd.DataFrame, int]:
    """Fit and score one target: (metrics with CIs, per-sample predictions, rows dropped for a blank label)."""
    labels = rows[target].astype(str).str.strip()
    usable = (labels != "").to_numpy()
    y = labels.to_numpy()[usable]
    x = vectors[usable]
    split = rows["split"].str.strip().to_numpy()[usable] if "split" in rows.columns else None
    classes = sorted(np.unique(y).tolist())
    if len(classes) < 2:
        raise CTFMError(f"target {target!r}: one class only ({classes}); a probe needs two")
    parts = split_rows(y, split, seed)
    for part in ("train", "test"):
        present = set(y[parts[part]])
        if present != set(classes):
            raise CTFMError(f"target {target!r}: the {part} split lacks class {sorted(set(classes) - present)}")
    probe = fit_probe(x, y, parts)
    order = [list(probe.classes_).index(c) for c in classes]
    probabilities = probe.predict_proba(x[parts["test"]])[:, order]
    truth = y[parts["test"]]
    scored = metrics(truth, probabilities, classes)
    intervals = bootstrap_ci(truth, probabilities, classes, n=n_bootstrap, seed=seed)
    result = {"classes": classes, "n_train": len(parts["train"]), "n_val": len(parts["val"]),
              "n_test": len(truth), "metrics": scored, "ci": intervals}  # fmt: skip
    images = rows["image"].to_numpy()[usable][parts["test"]]
    predictions = pd.DataFrame({"image": images, "target": target, "label": truth,
                                "predicted": np.asarray(classes)[probabilities.argmax(1)]})  # fmt: skip
    for index, name in enumerate(classes):
        predictions[f"p_{name}"] = probabilities[:, index]
    return result, predictions, int((~usable).sum())


# ------------------------------------------------------------------------------------------------ runner


def compare_encoders(
    labels_csv: str | Path,
    models: Sequence[str],
    out_dir: str | Path,
    *,
    settings: BenchmarkSettings = BenchmarkSettings(),
    targets: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    load_model: Callable[[str, str], nn.Module] = load_reference,
) -> BenchmarkResult:
    """Embed every row with every model under ``settings``, probe every target, write the results.

    Writes into ``out_dir``: ``metrics.csv`` (model, target, metric, value, ci_low, ci_high, n_test),
    ``predictions.csv`` (model, target, image, label, predicted, p_<class>...), ``results.md`` (targets x models),
    ``results.png`` and ``benchmark.json`` (the protocol and the models); embeddings are cached per model under
    ``embeddings/``, so adding a model re-embeds nothing else.

    Args:
        labels_csv: an ``image`` column (paths against the CSV's folder), for the ROI protocol ``mask`` (and
            optionally ``labels``), optionally ``split`` (train / val / test), and one column per target.
        models: names or folders ``ctfm.load`` reads; ``random:<model>`` is that architecture with random weights,
            the floor every encoder must beat.
        out_dir: the output folder.
        settings: the embedding protocol, the same for every model.
        targets: the target columns to probe; default every column that is not reserved.
        n_bootstrap: bootstrap resamples of the test rows for the 95% confidence intervals.
        seed: seeds the split (without a ``split`` column) and the bootstrap.
        device: where the models run.
        load_model: ``(reference, device) -> model``; default ``ctfm.load`` with the ``random:`` prefix.

    Returns:
        The metrics and predictions tables, the rows skipped with their reasons and the rows dropped per target.

    Examples:
        ``compare_encoders("labels.csv", ["ct-fm", "random:ct-fm"], "bench/")`` compares the published encoder with
        its random floor; here a tiny encoder on six synthetic scans:

        >>> import os, tempfile, ctfm, pandas as pd
        >>> from ctfm.analysis import BenchmarkSettings, compare_encoders
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.nn import ct_fm_encoder
        >>> folder = tempfile.mkdtemp()
        >>> encoder = ctfm.save_pretrained(ct_fm_encoder(init_filters=4), folder + "/encoder")
        >>> scans = [write_nifti(generate_ct((16, 32, 32), seed=s), f"{folder}/s{s}.nii.gz") for s in range(6)]
        >>> splits = ["train", "train", "val", "val", "test", "test"]
        >>> labels = pd.DataFrame({"image": scans, "finding": list("ababab"), "split": splits})
        >>> labels.to_csv(folder + "/labels.csv", index=False)
        >>> settings = BenchmarkSettings(mode="tiled", patch_size=(16, 32, 32))
        >>> result = compare_encoders(folder + "/labels.csv", [str(encoder)], folder + "/out", settings=settings,
        ...                           n_bootstrap=20)
        >>> list(result.metrics.columns)
        ['model', 'target', 'metric', 'value', 'ci_low', 'ci_high', 'n_test']
        >>> sorted(os.listdir(folder + "/out"))
        ['benchmark.json', 'embeddings', 'metrics.csv', 'predictions.csv', 'results.md', 'results.png']
    """
    from ctfm.plotting import plot_encoder_benchmark

    out = Path(out_dir)
    rows, chosen, skipped = read_labels(labels_csv, settings, targets)
    if rows.empty:
        raise CTFMError(f"{labels_csv}: no usable row ({len(skipped)} skipped)")
    metric_rows, predictions, dropped = [], [], {}
    for reference in models:
        model = load_model(reference, device)
        found, failed = embed_table(model, rows, settings, out / "embeddings" / f"{model_slug(reference)}.npz",
                                    name=reference)  # fmt: skip
        skipped += [(image, f"{reference}: {reason}") for image, reason in failed]
        usable = rows[[_row_key(row) in found for _, row in rows.iterrows()]].reset_index(drop=True)
        vectors = np.stack([found[_row_key(row)] for _, row in usable.iterrows()])
        for target in chosen:
            result, table, dropped[target] = probe_target(vectors, usable, target, seed=seed, n_bootstrap=n_bootstrap)
            predictions.append(table.assign(model=reference))
            for name in METRICS:
                low, high = result["ci"][name]
                metric_rows.append({"model": reference, "target": target, "metric": name,
                                    "value": result["metrics"][name], "ci_low": low, "ci_high": high,
                                    "n_test": result["n_test"]})  # fmt: skip
    metric_table = pd.DataFrame(metric_rows)
    prediction_table = pd.concat(predictions, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "metrics.csv", lambda tmp: metric_table.to_csv(tmp, index=False))
    write_atomically(out / "predictions.csv", lambda tmp: prediction_table.to_csv(tmp, index=False))
    markdown = results_markdown(metric_table, settings)
    write_atomically(out / "results.md", lambda tmp: tmp.write_text(markdown))
    record = {"protocol": settings.describe(), "models": list(models), "targets": chosen, "seed": seed,
              "bootstrap": n_bootstrap, "c_grid": list(C_GRID), "skipped": skipped}  # fmt: skip
    write_atomically(out / "benchmark.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    plot_encoder_benchmark(metric_table, out / "results.png")
    return BenchmarkResult(metric_table, prediction_table, skipped, dropped)


def results_markdown(table: pd.DataFrame, settings: BenchmarkSettings) -> str:
    """Balanced accuracy (95% CI) per target and model, then AUROC, as markdown tables."""
    pre = settings.preprocessing
    spacing = "native" if pre.spacing is None else " x ".join(f"{s:g}" for s in pre.spacing) + " mm"
    size = settings.crop_size if settings.protocol == "roi" else settings.whole_size
    what = f"{'x'.join(map(str, size))} {'crop on the mask' if settings.protocol == 'roi' else 'whole scan'}"
    how = what if settings.mode == "whole" else f"{'x'.join(map(str, settings.patch_size))} tiles, mean"
    lines = [f"Protocol: {settings.protocol}, {how}; {spacing}, HU {pre.hu_range[0]:g} to {pre.hu_range[1]:g} "
             "-> [0, 1]; frozen linear probe (logistic regression, C chosen on val).", ""]  # fmt: skip
    models = list(dict.fromkeys(table["model"]))
    for metric in ("balanced_accuracy", "auroc"):
        lines += [f"**{metric.replace('_', ' ')}** (95% CI)", "", "| target | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]  # fmt: skip
        part = table[table["metric"] == metric]
        for target in dict.fromkeys(part["target"]):
            cells = []
            for model in models:
                row = part[(part["target"] == target) & (part["model"] == model)].iloc[0]
                cells.append(f"{row['value']:.3f} ({row['ci_low']:.2f}-{row['ci_high']:.2f})")
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
