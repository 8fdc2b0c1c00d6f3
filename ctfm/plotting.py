"""Every picture ctfm draws, and the only module that imports matplotlib.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, no display needed) and written
atomically, so a picture that exists is complete. Volumes are ``(z, y, x)`` arrays in SPL orientation, the order
the canonical preprocessing produces: axial slices are ``volume[z]``, coronal ``volume[:, y]``, sagittal
``volume[:, :, x]``, each shown with the patient's superior side up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    views = [
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


def concept_pair(volumes: Sequence[np.ndarray], colours: Sequence[np.ndarray], path: str | Path, *,
                 titles: Sequence[str] = (), window: tuple[float, float] = (0.0, 1.0)) -> Path:  # fmt: skip
    """Middle axial and coronal slices of ``(z, y, x)`` volumes side by side, RGB ``(z, y, x, 3)`` (NaN clear) over."""
    figure = Figure(figsize=(4 * len(volumes), 7))
    for column, (volume, rgb) in enumerate(zip(volumes, colours)):
        for row, where in enumerate((np.s_[volume.shape[0] // 2], np.s_[::-1, volume.shape[1] // 2])):
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
    labels = np.asarray([str(label) for label in labels])
    for index, label in enumerate(sorted(set(labels))):
        chosen = labels == label
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
    return tuple((w - low) / (high - low) for w in CT_DISPLAY_WINDOW)
