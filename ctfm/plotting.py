"""Every picture ctfm draws, and the only module that imports matplotlib.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, no display needed) and written
atomically, so a picture that exists is complete. Volumes are ``(z, y, x)`` arrays in SPL orientation, the order
the canonical preprocessing produces: axial slices are ``volume[z]``, coronal ``volume[:, y]``, sagittal
``volume[:, :, x]``, each shown with the patient's superior side up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ctfm.atomic import write_atomically

#: Display window (HU) for CT slices: soft tissue and lungs both readable.
CT_DISPLAY_WINDOW = (-1000.0, 1000.0)


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``figure`` as PNG at ``path`` atomically."""
    FigureCanvasAgg(figure)
    return write_atomically(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def loss_curve(losses: Sequence[float], path: str | Path, *, chance: float | None = None, title: str = "") -> Path:
    """Training loss per epoch, with the chance level as a dashed line when given."""
    figure = Figure(figsize=(5, 3.2))
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses, marker="o", label="training loss")
    if chance is not None:
        axes.axhline(chance, linestyle="--", color="grey", label=f"chance ({chance:.3f})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend()
    return save_figure(figure, path)


def orthogonal_slices(
    volume: np.ndarray,
    path: str | Path,
    *,
    point: Sequence[int] | None = None,
    overlay: np.ndarray | None = None,
    overlay_kind: str = "labels",
    window: tuple[float, float] = CT_DISPLAY_WINDOW,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> Path:
    """Axial, coronal and sagittal slices of a ``(z, y, x)`` volume through ``point`` (default: the centre).

    ``overlay`` on the same grid is drawn over the CT: integer labels in distinct colours (``overlay_kind="labels"``,
    0 transparent) or a heat map in [0, 1] (``"heat"``). ``spacing`` (z, y, x mm) keeps anatomy in proportion.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {volume.shape}")
    if overlay is not None and np.shape(overlay) != volume.shape:
        raise ValueError(f"overlay shape {np.shape(overlay)} differs from the volume's {volume.shape}")
    if overlay_kind not in ("labels", "heat"):
        raise ValueError(f"overlay_kind must be 'labels' or 'heat', got {overlay_kind!r}")
    z, y, x = (s // 2 for s in volume.shape) if point is None else (int(p) for p in point)
    dz, dy, dx = (float(s) for s in spacing)
    views: list[tuple[str, tuple[Any, ...], float]] = [
        ("axial", np.s_[z, :, :], dy / dx),  # rows y (posterior down), columns x
        ("coronal", np.s_[::-1, y, :], dz / dx),  # rows z flipped: superior up
        ("sagittal", np.s_[::-1, :, x], dz / dy),
    ]
    figure = Figure(figsize=(12, 4.2))
    for index, (name, where, aspect) in enumerate(views, start=1):
        axes = figure.add_subplot(1, 3, index)
        axes.imshow(volume[where], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        if overlay is not None:
            layer = np.asarray(overlay)[where]
            if overlay_kind == "labels":
                masked = np.ma.masked_equal(layer.astype(np.int64), 0)
                axes.imshow(
                    masked % 20, cmap="tab20", vmin=0, vmax=19, alpha=0.5, aspect=aspect, interpolation="nearest"
                )
            else:
                axes.imshow(layer, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.5, aspect=aspect)
        axes.set_title(name)
        axes.set_axis_off()
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


# ---- diffusion
def image_grid(
    images: Sequence[np.ndarray],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    columns: int = 4,
    title: str = "",
) -> Path:
    """2D images (a volume's middle axial slice for 3D ones) side by side, in grey over ``value_range``."""
    count = len(images)
    if count == 0:
        raise ValueError("image_grid needs at least one image")
    columns = min(columns, count)
    rows = -(-count // columns)
    figure = Figure(figsize=(3 * columns, 3 * rows + (0.4 if title else 0)))
    for index, image in enumerate(images):
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3:
            image = image[image.shape[0] // 2]
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(image, cmap="gray", vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
        if titles is not None:
            axes.set_title(titles[index], fontsize=9)
        axes.set_axis_off()
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


# ---- segmentation


def segmentation_preview(
    volume: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> Path:
    """Orthogonal slices of a ``(z, y, x)`` CT with its label map coloured over it, through the labels' centre."""
    labelled = np.argwhere(np.asarray(labels) > 0)
    point = labelled.mean(axis=0).round().astype(int) if len(labelled) else None
    return orthogonal_slices(volume, path, point=point, overlay=labels, spacing=spacing, title=title)


def pseudo_label_overlay(
    volume: np.ndarray,
    labels: np.ndarray,
    heat: np.ndarray,
    path: str | Path,
    *,
    class_names: Sequence[str],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> Path:
    """Two rows through the labels' centre of a ``(z, y, x)`` CT: pseudo-labels (legend: ``class_names``,
    background first) and the strongest class similarity map in [0, 1]."""
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    volume, labels, heat = np.asarray(volume, np.float32), np.asarray(labels), np.asarray(heat, np.float32)
    labelled = np.argwhere(labels > 0)
    z, y, x = labelled.mean(axis=0).round().astype(int) if len(labelled) else [s // 2 for s in volume.shape]
    dz, dy, dx = (float(s) for s in spacing)
    views = [(np.s_[z, :, :], dy / dx), (np.s_[::-1, y, :], dz / dx), (np.s_[::-1, :, x], dz / dy)]
    colours = colormaps["tab10"]
    figure = Figure(figsize=(10, 6.4))
    for row, (kind, overlay) in enumerate((("labels", labels), ("heat", heat))):
        for column, (where, aspect) in enumerate(views):
            axes = figure.add_subplot(2, 3, row * 3 + column + 1)
            axes.imshow(volume[where], cmap="gray", vmin=CT_DISPLAY_WINDOW[0], vmax=CT_DISPLAY_WINDOW[1],
                        aspect=aspect, interpolation="nearest")  # fmt: skip
            layer = overlay[where]
            if kind == "labels":
                masked = np.ma.masked_equal(layer.astype(np.int64), 0)
                axes.imshow(masked % 10, cmap="tab10", vmin=0, vmax=9, alpha=0.55, aspect=aspect,
                            interpolation="nearest")  # fmt: skip
            else:
                axes.imshow(layer, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55, aspect=aspect)
            axes.set_axis_off()
            if column == 0:
                axes.set_title("pseudo-labels" if kind == "labels" else "best class similarity", fontsize=9)
    handles = [Patch(color=colours(value % 10), label=name) for value, name in enumerate(class_names) if value]
    figure.legend(handles=handles, loc="lower center", ncol=max(len(handles), 1), fontsize=9, frameon=False)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


# ---- classification


def roc_curves(curves: dict[str, dict[str, Sequence[float]]], path: str | Path, *, title: str = "") -> Path:
    """ROC curves (``{name: {"fpr": [...], "tpr": [...]}}``) with the chance diagonal."""
    figure = Figure(figsize=(4.2, 4.0))
    axes = figure.add_subplot()
    for name, curve in curves.items():
        axes.plot(curve["fpr"], curve["tpr"], label=name)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    return save_figure(figure, path)


def training_fraction_curve(
    points: Sequence[dict], path: str | Path, *, metrics: Sequence[str] = ("auroc", "balanced_accuracy", "map")
) -> Path:
    """Each metric (value with its 95% CI band) against the fraction of training rows used, as FMCIB plots it."""
    figure = Figure(figsize=(5, 3.4))
    axes = figure.add_subplot()
    fractions = [100 * p["fraction"] for p in points]
    for metric in metrics:
        values = [p[metric]["value"] for p in points]
        low = [p[metric]["ci_low"] for p in points]
        high = [p[metric]["ci_high"] for p in points]
        (line,) = axes.plot(fractions, values, marker="o", label=metric)
        axes.fill_between(fractions, low, high, color=line.get_color(), alpha=0.15)
    axes.set_xlabel("training rows used (%)")
    axes.set_ylabel("test metric (95% CI)")
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize="small")
    return save_figure(figure, path)


# ---- search


def retrieval_grid(
    queries: Sequence[np.ndarray],
    neighbours: Sequence[Sequence[np.ndarray]],
    query_labels: Sequence[object],
    neighbour_labels: Sequence[Sequence[object]],
    path: str | Path,
    *,
    window: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """One row per query: its middle axial slice, then its neighbours', framed green when the label matches."""
    columns = 1 + max(len(row) for row in neighbours)
    figure = Figure(figsize=(1.6 * columns, 1.7 * len(queries)))
    for r, (query, row, label, labels) in enumerate(zip(queries, neighbours, query_labels, neighbour_labels)):
        for c, (volume, shown) in enumerate([(query, label), *zip(row, labels)]):
            axes = figure.add_subplot(len(queries), columns, r * columns + c + 1)
            volume = np.asarray(volume)
            axes.imshow(volume[volume.shape[0] // 2], cmap="gray", vmin=window[0], vmax=window[1])
            axes.set_xticks([])
            axes.set_yticks([])
            colour = "black" if c == 0 else ("tab:green" if shown == label else "tab:red")
            for spine in axes.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(1 if c == 0 else 3)
            axes.set_title(("query " if c == 0 else f"#{c} ") + str(shown), fontsize=8)
    return save_figure(figure, path)


def concept_pair(
    volumes: Sequence[np.ndarray],
    colours: Sequence[np.ndarray],
    path: str | Path,
    *,
    titles: Sequence[str] = (),
    window: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """Middle axial and coronal slices of ``(z, y, x)`` volumes side by side, RGB ``(z, y, x, 3)`` (NaN clear) over."""
    figure = Figure(figsize=(4 * len(volumes), 7))
    for column, (volume, rgb) in enumerate(zip(volumes, colours)):
        slices: tuple[Any, ...] = (np.s_[volume.shape[0] // 2], np.s_[::-1, volume.shape[1] // 2])
        for row, where in enumerate(slices):
            axes = figure.add_subplot(2, len(volumes), row * len(volumes) + column + 1)
            axes.imshow(volume[where], cmap="gray", vmin=window[0], vmax=window[1], aspect="auto")
            layer = rgb[where]
            alpha = np.where(np.isnan(layer[..., 0]), 0.0, 0.6)
            axes.imshow(np.nan_to_num(layer), alpha=alpha, aspect="auto", interpolation="nearest")
            axes.set_axis_off()
            if row == 0 and column < len(titles):
                axes.set_title(titles[column])
    return save_figure(figure, path)


def scatter_by_label(points: np.ndarray, labels: Sequence[object], path: str | Path, *, title: str = "") -> Path:
    """2-D points (e.g. t-SNE) coloured by label, with a legend."""
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.add_subplot()
    names = np.asarray([str(label) for label in labels])
    for index, label in enumerate(sorted(set(names))):
        chosen = names == label
        axes.scatter(points[chosen, 0], points[chosen, 1], s=18, color=f"C{index % 10}", label=label)
    axes.legend(fontsize=8, loc="best")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title)
    return save_figure(figure, path)


def similarity_histogram(similarities: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """Histogram of cosine similarities with the median marked."""
    figure = Figure(figsize=(5, 3.2))
    axes = figure.add_subplot()
    axes.hist(similarities, bins=30, color="tab:blue")
    median = float(np.median(similarities))
    axes.axvline(median, color="black", linestyle="--", label=f"median {median:.3f}")
    axes.set_xlabel("cosine similarity of corresponding patches")
    axes.set_ylabel("patches")
    axes.legend()
    axes.set_title(title)
    return save_figure(figure, path)


def scaled_window(hu_range: tuple[float, float]) -> tuple[float, float]:
    """:data:`CT_DISPLAY_WINDOW` on the [0, 1] scale that preprocessing maps ``hu_range`` to."""
    low, high = hu_range
    bottom, top = CT_DISPLAY_WINDOW
    return (bottom - low) / (high - low), (top - low) / (high - low)


def plot_encoder_benchmark(table: Any, path: str | Path, *, metric: str = "balanced_accuracy") -> Path:
    """Targets x models: ``metric`` per model as grouped bars with 95% CI whiskers, chance as a dashed line.

    ``table`` has the columns of ``metrics.csv`` (model, target, metric, value, ci_low, ci_high).
    """
    part = table[table["metric"] == metric]
    targets = list(dict.fromkeys(part["target"]))
    models = list(dict.fromkeys(part["model"]))
    figure = Figure(figsize=(max(5.0, 1.2 * len(targets) * max(1, len(models)) / 2 + 2), 3.6))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        rows = part[part["model"] == model].set_index("target").reindex(targets)
        x = np.arange(len(targets)) + (index - (len(models) - 1) / 2) * width
        error = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]]).clip(min=0)
        axes.bar(x, rows["value"], width, yerr=error, capsize=3, label=model)
    if metric in ("balanced_accuracy", "auroc"):
        axes.axhline(0.5, linestyle="--", color="grey", linewidth=1, label="chance (binary)")
    axes.set_xticks(np.arange(len(targets)), targets)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(f"{metric.replace('_', ' ')} (test, 95% CI)")
    axes.set_title("frozen linear probe per target")
    axes.legend(fontsize="small", loc="lower right")
    return save_figure(figure, path)
