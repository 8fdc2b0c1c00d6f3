"""Every picture ctfm draws, and the only module that imports matplotlib.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, no display needed) and written
atomically, so a picture that exists is complete. Volumes are ``(z, y, x)`` arrays in SPL orientation, the order
the canonical preprocessing produces: axial slices are ``volume[z]``, coronal ``volume[:, y]``, sagittal
``volume[:, :, x]``, each shown with the patient's superior side up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ctfm.atomic import write_atomically

logger = logging.getLogger(__name__)

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


#: Dynamic range (max - min) below which a cosine-based map is float noise, not signal.
NOISE_FLOOR = 1e-5
NO_SIGNAL = "(below noise floor: no signal)"
#: A marker drawn on slices: (legend label, (z, y, x) voxel, colour).
Marker = tuple[str, Sequence[float], str]


def below_noise_floor(values: np.ndarray, floor: float = NOISE_FLOOR) -> bool:
    """Whether the finite values of a map span less than ``floor``: no picture of them can show a signal."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return finite.size == 0 or float(finite.max() - finite.min()) < floor


def noise_checked_title(title: str, values: np.ndarray, what: str, floor: float = NOISE_FLOOR) -> str:
    """``title``, with :data:`NO_SIGNAL` appended and a warning logged when ``values`` lie below ``floor``."""
    if not below_noise_floor(values, floor):
        return title
    finite = np.asarray(values, dtype=np.float64)
    spread = float(np.nanmax(finite) - np.nanmin(finite)) if np.isfinite(finite).any() else 0.0
    logger.warning("%s spans only %.2g (noise floor %.0e): the picture shows no signal", what, spread, floor)
    return f"{title} {NO_SIGNAL}".strip()


def heat_range(values: np.ndarray, floor: float = NOISE_FLOOR, low: float | None = None) -> tuple[float, float]:
    """Colour scale of a heat map: its minimum (or ``low``) to its maximum, never narrower than ``floor``, so
    float noise is drawn as the flat map it is rather than stretched into a pattern."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    bottom = float(finite.min()) if low is None and finite.size else float(low or 0.0)
    top = float(finite.max()) if finite.size else bottom
    return bottom, max(top, bottom + floor)


def class_colours(values: Iterable[int]) -> dict[int, tuple[float, float, float, float]]:
    """A distinct colour per label value (tab20 up to 20 values, else evenly spaced hues)."""
    from matplotlib import colormaps

    values = sorted(int(v) for v in values)
    if len(values) <= 20:
        return {value: colormaps["tab20"](index) for index, value in enumerate(values)}
    hues = colormaps["hsv"]
    return {value: hues(index / len(values)) for index, value in enumerate(values)}


def _label_rgba(layer: np.ndarray, colours: dict[int, tuple[float, float, float, float]], alpha: float) -> np.ndarray:
    rgba = np.zeros((*layer.shape, 4))
    for value, colour in colours.items():
        rgba[layer == value] = (*colour[:3], alpha)
    return rgba


def _views(shape: Sequence[int], point: Sequence[int], spacing: Sequence[float]):
    """(name, slice, aspect, voxel -> (column, row) in the shown image) of the three orthogonal views."""
    z, y, x = (int(p) for p in point)
    dz, dy, dx = (float(s) for s in spacing)
    top = shape[0] - 1
    return [
        ("axial", np.s_[z, :, :], dy / dx, lambda p: (p[2], p[1])),  # rows y (posterior down), columns x
        ("coronal", np.s_[::-1, y, :], dz / dx, lambda p: (p[2], top - p[0])),  # rows z flipped: superior up
        ("sagittal", np.s_[::-1, :, x], dz / dy, lambda p: (p[1], top - p[0])),
    ]


def _draw_slices(
    figure: Figure,
    row: int,
    rows: int,
    volume: np.ndarray,
    point: Sequence[int],
    *,
    overlay: np.ndarray | None = None,
    overlay_kind: str = "labels",
    window: tuple[float, float] = CT_DISPLAY_WINDOW,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    value_range: tuple[float, float] = (0.0, 1.0),
    colours: dict[int, tuple[float, float, float, float]] | None = None,
    markers: Sequence[Marker] = (),
    label: str = "",
) -> tuple[list[Any], Any]:
    """One row of axial, coronal and sagittal slices through ``point``; returns its axes and the heat image."""
    heat = None
    axes_row = []
    for column, (name, where, aspect, place) in enumerate(_views(volume.shape, point, spacing)):
        axes = figure.add_subplot(rows, 3, row * 3 + column + 1)
        axes.imshow(volume[where], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        if overlay is not None:
            layer = np.asarray(overlay)[where]
            if overlay_kind == "labels":
                colours = colours or class_colours(np.unique(overlay)[np.unique(overlay) > 0])
                axes.imshow(_label_rgba(layer.astype(np.int64), colours, 0.5), aspect=aspect, interpolation="nearest")
            else:
                heat = axes.imshow(layer, cmap="inferno", vmin=value_range[0], vmax=value_range[1], alpha=0.55,
                                   aspect=aspect, interpolation="nearest")  # fmt: skip
        for text, voxel, colour in markers:
            column_index, row_index = place(voxel)
            axes.plot(column_index, row_index, marker="+", markersize=14, markeredgewidth=2, color=colour,
                      label=text if column == 0 else None)  # fmt: skip
        axes.set_title(f"{label} {name}".strip(), fontsize=9)
        axes.set_axis_off()
        axes_row.append(axes)
    return axes_row, heat


def slices_figure(
    volume: np.ndarray,
    *,
    point: Sequence[int] | None = None,
    overlay: np.ndarray | None = None,
    overlay_kind: str = "labels",
    window: tuple[float, float] = CT_DISPLAY_WINDOW,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    value_range: tuple[float, float] = (0.0, 1.0),
    colorbar_label: str = "",
    class_names: Sequence[str] | None = None,
    markers: Sequence[Marker] = (),
    title: str = "",
) -> Figure:
    """The figure :func:`orthogonal_slices` writes (see there)."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {volume.shape}")
    if overlay is not None and np.shape(overlay) != volume.shape:
        raise ValueError(f"overlay shape {np.shape(overlay)} differs from the volume's {volume.shape}")
    if overlay_kind not in ("labels", "heat"):
        raise ValueError(f"overlay_kind must be 'labels' or 'heat', got {overlay_kind!r}")
    if overlay_kind == "heat" and overlay is not None and not colorbar_label:
        raise ValueError("a heat overlay needs the colorbar_label that says its scale")
    centre = [s // 2 for s in volume.shape] if point is None else [int(p) for p in point]
    figure = Figure(figsize=(13 if overlay_kind == "heat" else 12, 4.4))
    colours = None
    if overlay is not None and overlay_kind == "labels":
        present = np.unique(np.asarray(overlay).astype(np.int64))
        colours = class_colours(present[present > 0])
    axes, heat = _draw_slices(figure, 0, 1, volume, centre, overlay=overlay, overlay_kind=overlay_kind, window=window,
                              spacing=spacing, value_range=value_range, colours=colours, markers=markers)  # fmt: skip
    if heat is not None:
        figure.colorbar(heat, ax=axes, label=colorbar_label, shrink=0.8)
    handles = _label_handles(colours, class_names) if colours is not None and class_names is not None else []
    handles += [h for h in axes[0].get_legend_handles_labels()[0]]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def _label_handles(colours: dict[int, tuple[float, float, float, float]], class_names: Sequence[str]) -> list[Any]:
    """Legend patches naming each coloured label value (its value where the names have none)."""
    from matplotlib.patches import Patch

    return [
        Patch(color=colour, label=class_names[value] if value < len(class_names) else f"label {value}")
        for value, colour in colours.items()
    ]


def orthogonal_slices(volume: np.ndarray, path: str | Path, **options: Any) -> Path:
    """Axial, coronal and sagittal slices of a ``(z, y, x)`` volume through ``point`` (default: the centre).

    ``overlay`` on the same grid is drawn over the CT: integer labels in distinct colours (``overlay_kind="labels"``,
    0 transparent; with ``class_names`` a legend names each) or a heat map (``"heat"``) over ``value_range`` with a
    colour bar labelled ``colorbar_label`` (its units). ``markers`` are crosses at voxels, in the legend.
    ``spacing`` (z, y, x mm) keeps anatomy in proportion. Options are those of :func:`slices_figure`.
    """
    return save_figure(slices_figure(volume, **options), path)


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


def segmentation_figure(
    volume: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> Figure:
    """Orthogonal slices of a ``(z, y, x)`` CT with its label map coloured over it, through the labels' centre, and
    a legend naming the colour of every class present (``class_names[value]``)."""
    labelled = np.argwhere(np.asarray(labels) > 0)
    point = labelled.mean(axis=0).round().astype(int) if len(labelled) else None
    return slices_figure(volume, point=point, overlay=labels, spacing=spacing, class_names=class_names, title=title)


def segmentation_preview(volume: np.ndarray, labels: np.ndarray, path: str | Path, **options: Any) -> Path:
    """:func:`segmentation_figure` written to ``path``."""
    return save_figure(segmentation_figure(volume, labels, **options), path)


def pseudo_label_figure(
    volume: np.ndarray,
    labels: np.ndarray,
    heat: np.ndarray,
    *,
    class_names: Sequence[str],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> Figure:
    """Two rows through the labels' centre of a ``(z, y, x)`` CT: pseudo-labels (legend: ``class_names``,
    background first) and the strongest normalised class map in [0, 1], with its colour bar."""
    volume, labels, heat = np.asarray(volume, np.float32), np.asarray(labels), np.asarray(heat, np.float32)
    labelled = np.argwhere(labels > 0)
    point = labelled.mean(axis=0).round().astype(int) if len(labelled) else [s // 2 for s in volume.shape]
    colours = class_colours(range(1, len(class_names)))
    figure = Figure(figsize=(11, 7))
    _draw_slices(figure, 0, 2, volume, point, overlay=labels, spacing=spacing, colours=colours, label="pseudo-labels")
    axes, image = _draw_slices(figure, 1, 2, volume, point, overlay=heat, overlay_kind="heat", spacing=spacing,
                               label="best class map")  # fmt: skip
    figure.colorbar(image, ax=axes, label="normalised class similarity (0-1)", shrink=0.8)
    handles = _label_handles(colours, class_names)
    figure.legend(handles=handles, loc="lower center", ncol=max(min(len(handles), 6), 1), fontsize=9, frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def pseudo_label_overlay(
    volume: np.ndarray, labels: np.ndarray, heat: np.ndarray, path: str | Path, **options: Any
) -> Path:
    """:func:`pseudo_label_figure` written to ``path``."""
    return save_figure(pseudo_label_figure(volume, labels, heat, **options), path)


def semantic_search_figure(
    target: np.ndarray,
    heat: np.ndarray,
    match_voxel: Sequence[int],
    *,
    value_range: tuple[float, float],
    source: np.ndarray | None = None,
    query_voxel: Sequence[int] | None = None,
    window: tuple[float, float] = CT_DISPLAY_WINDOW,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    source_spacing: Sequence[float] | None = None,
    title: str = "",
) -> Figure:
    """The query's slices in its source (when given), then the target's slices through the match with the cosine
    heat map over ``value_range`` and its colour bar; both points marked."""
    rows = 1 if source is None or query_voxel is None else 2
    figure = Figure(figsize=(13, 4.4 * rows))
    handles = []
    if source is not None and query_voxel is not None:
        first, _ = _draw_slices(figure, 0, 2, np.asarray(source, np.float32), query_voxel, window=window,
                                spacing=source_spacing or spacing, markers=[("query", query_voxel, "cyan")],
                                label="source")  # fmt: skip
        handles += first[0].get_legend_handles_labels()[0]
    axes, image = _draw_slices(figure, rows - 1, rows, np.asarray(target, np.float32), match_voxel, overlay=heat,
                               overlay_kind="heat", window=window, spacing=spacing, value_range=value_range,
                               markers=[("best match", match_voxel, "lime")], label="target")  # fmt: skip
    figure.colorbar(image, ax=axes, label="cosine similarity to the query", shrink=0.8)
    handles += axes[0].get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    if title:
        figure.suptitle(title)
    return figure


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
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> Path:
    """Middle axial and coronal slices of ``(z, y, x)`` volumes side by side, RGB ``(z, y, x, 3)`` (NaN clear) over;
    ``spacing`` (z, y, x mm) keeps the anatomy in proportion; ``title`` says what the colours mean."""
    depth, height, width = (n * float(s) for n, s in zip(np.shape(volumes[0]), spacing))
    figure = Figure(figsize=(4 * len(volumes), 4 * (height + depth) / width + 0.8))
    grid = figure.add_gridspec(2, len(volumes), height_ratios=[height, depth])
    dz, dy, dx = (float(s) for s in spacing)
    for column, (volume, rgb) in enumerate(zip(volumes, colours)):
        slices: tuple[Any, ...] = (np.s_[volume.shape[0] // 2], np.s_[::-1, volume.shape[1] // 2])
        for row, (where, aspect) in enumerate(zip(slices, (dy / dx, dz / dx))):
            axes = figure.add_subplot(grid[row, column])
            axes.imshow(volume[where], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect)
            layer = rgb[where]
            alpha = np.where(np.isnan(layer[..., 0]), 0.0, 0.6)
            axes.imshow(np.nan_to_num(layer), alpha=alpha, aspect=aspect, interpolation="nearest")
            axes.set_axis_off()
            if row == 0 and column < len(titles):
                axes.set_title(titles[column])
    if title:
        figure.suptitle(title)
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
