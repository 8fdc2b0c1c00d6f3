"""The zero-shot analyses from files to files: what ``ctfm analyse`` runs (saliency, PCA concepts, t-SNE, stability).

Each reads scans (or a table), runs its analysis with the model and writes its picture, plus a NIfTI on the scan's
grid (saliency) or a CSV of numbers (stability) where the result is more than a picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError
from ctfm.io.naming import output_names
from ctfm.io.reader import read_ct
from ctfm.transforms.preprocess import CTPreprocessing


def _centre_mm(scan) -> np.ndarray:
    from ctfm.analysis.tiles import voxel_to_world

    return voxel_to_world(scan.affine, (np.array(scan.shape[1:]) - 1) / 2)[0]


def saliency_picture(
    model: nn.Module,
    scan_path: str | Path,
    out: str | Path,
    *,
    point_mm: Sequence[float] | None = None,
    patch_size: Sequence[int] = (24, 64, 64),
    window: Sequence[int] = (8, 8, 8),
    preprocess: CTPreprocessing = CTPreprocessing(),
) -> tuple[Path, Path]:
    """Occlusion saliency of the patch at ``point_mm`` (RAS; default the scan centre): ``saliency.nii.gz`` on the
    scan's grid (0 outside the patch) and ``saliency.png`` over the preprocessed CT through the point, marked, its
    colour bar in 1 - cosine; a map whose range is float noise (below :data:`ctfm.plotting.NOISE_FLOOR`) is said to
    be so in the title and a warning.

    Args:
        model: the encoder.
        scan_path: the CT.
        out: the output folder.
        point_mm: the patch's centre (x, y, z) in RAS mm; default the scan's centre.
        patch_size: the patch (z, y, x) in voxels of the preprocessed scan.
        window: the occluding box (z, y, x) in voxels, slid over the patch.
        preprocess: the preprocessing of the scan.

    Returns:
        The paths of ``saliency.nii.gz`` and ``saliency.png``.
    """
    import nibabel as nib

    from ctfm.analysis.saliency import occlusion_saliency
    from ctfm.analysis.semantic_search import check_inside, patch_at
    from ctfm.analysis.tiles import resample_to_grid, world_to_voxel
    from ctfm.plotting import heat_range, noise_checked_title, orthogonal_slices, scaled_window

    out = Path(out)
    scan = read_ct(scan_path)
    point = _centre_mm(scan) if point_mm is None else np.asarray(point_mm, dtype=np.float64)
    check_inside(scan, point, scan_path)
    volume = preprocess(scan)
    crop, start = patch_at(volume, point, patch_size)
    saliency = occlusion_saliency(model, crop[0], window=window)
    full = np.zeros(volume.shape[1:], dtype=np.float32)
    size = np.array(patch_size)
    low, high = np.maximum(start, 0), np.minimum(start + size, full.shape)
    full[tuple(slice(a, b) for a, b in zip(low, high))] = saliency[
        tuple(slice(a, b) for a, b in zip(low - start, high - start))
    ]
    on_scan = resample_to_grid(full, volume.affine, scan)
    image = nib.Nifti1Image(on_scan, np.asarray(scan.affine, dtype=np.float64))
    nifti = write_atomically(out / "saliency.nii.gz", lambda tmp: nib.save(image, str(tmp)))
    query = np.clip(np.round(world_to_voxel(volume.affine, point)[0]).astype(int), 0, np.array(full.shape) - 1)
    title = noise_checked_title("occlusion saliency (1 - cosine)", saliency, f"saliency of {scan_path}")
    png = orthogonal_slices(
        np.asarray(volume[0]), out / "saliency.png", point=query, markers=[("query point", query, "cyan")],
        overlay=full, overlay_kind="heat",
        value_range=heat_range(saliency, low=0.0), colorbar_label="1 - cosine (embedding change when occluded)",
        window=scaled_window(preprocess.hu_range), spacing=preprocess.spacing or (1.0, 1.0, 1.0), title=title,
    )  # fmt: skip
    return nifti, png


def pca_picture(
    model: nn.Module,
    scans: Sequence[str | Path],
    out: str | Path,
    *,
    patch_size: Sequence[int] = (24, 64, 64),
    overlap: float = 0.75,
    preprocess: CTPreprocessing = CTPreprocessing(),
) -> Path:
    """``pca_concepts.png``: the scans side by side coloured by one PCA of their patch embeddings.

    One PCA over both scans gives the same colour to what the encoder sees alike (lightness PC1, a* PC2, b* PC3).

    Args:
        model: the encoder.
        scans: the CT scans, usually two.
        out: the output folder.
        patch_size: the sliding window (z, y, x) in voxels of the preprocessed scans.
        overlap: fraction of a window shared by its neighbours; more gives finer colour maps.
        preprocess: the preprocessing of the scans.

    Returns:
        The path of ``pca_concepts.png``.
    """
    from ctfm.analysis.pca_concepts import pca_concepts
    from ctfm.plotting import concept_pair, scaled_window

    volumes = [preprocess(read_ct(s)) for s in scans]
    maps = pca_concepts(
        model, volumes, patch_size=patch_size, overlap=overlap, body_threshold=preprocess.body_threshold
    )
    return concept_pair(
        [m.volume for m in maps], [m.rgb for m in maps], Path(out) / "pca_concepts.png",
        titles=output_names(scans), window=scaled_window(preprocess.hu_range),
        spacing=[float(s) for s in volumes[0].pixdim],
        title="colour = one PCA of both scans' patch embeddings (lightness PC1, a* PC2, b* PC3); air uncoloured",
    )  # fmt: skip


def tsne_picture(table: str | Path, labels: str | Path, column: str, out: str | Path) -> Path:
    """``tsne.png``: t-SNE of a table's scan embeddings coloured by ``column`` of a CSV keyed by ``path``.

    Args:
        table: an embedding table written by ``ctfm embed``.
        labels: a CSV with a ``path`` column (as the table records it) and the label column.
        column: the label column of ``labels``.
        out: the output folder.

    Returns:
        The path of ``tsne.png``.
    """
    from ctfm.analysis.tsne import tsne_map
    from ctfm.data.datalist import read_csv_table
    from ctfm.embedding_table import embedding_matrix, read_table, scan_key
    from ctfm.plotting import scatter_by_label

    frame, _ = read_table(table, columns=["path", "embedding"])
    names = read_csv_table(labels, "label table")
    if "path" not in names or column not in names:
        raise CTFMError(f"{labels}: needs columns 'path' and {column!r} (found {list(names.columns)})")
    stored = set(frame["path"])  # the table holds resolved paths; a relative one is the CSV's folder's
    base = Path(labels).resolve().parent
    names["path"] = [p if p in stored else scan_key(base / str(p)) for p in names["path"]]
    merged = frame.merge(names[["path", column]], on="path", how="inner")
    if len(merged) < 3:
        raise CTFMError(f"{labels}: only {len(merged)} of the table's paths have a {column!r}; t-SNE needs 3")
    points = tsne_map(embedding_matrix(merged))
    return scatter_by_label(points, merged[column], Path(out) / "tsne.png", title=f"t-SNE of {Path(table).name}")


def stability_picture(
    model: nn.Module,
    first: str | Path,
    second: str | Path,
    out: str | Path,
    *,
    world_transform: np.ndarray | None = None,
    patch_size: Sequence[int] = (24, 64, 64),
    preprocess: CTPreprocessing = CTPreprocessing(),
) -> tuple[dict[str, float], Path]:
    """``stability.png`` (histogram) and ``stability.csv`` (summary) of corresponding-patch similarities.

    Args:
        model: the encoder.
        first: a scan.
        second: a scan of the same subject (a rescan, or the first with noise or another grid).
        out: the output folder.
        world_transform: 4 x 4 matrix (RAS mm) taking a point of ``first`` to the same anatomy in ``second``;
            default identity (scans already registered).
        patch_size: the patch (z, y, x) in voxels of the preprocessed scans.
        preprocess: the preprocessing of both scans.

    Returns:
        The summary of the cosine similarities (``patches``, ``mean``, ``median``, ``p5``, ``min``) and the path
        of ``stability.png``.
    """
    from ctfm.analysis.stability import corresponding_patch_similarity, summary
    from ctfm.plotting import similarity_histogram

    out = Path(out)
    a, b = (preprocess(read_ct(s)) for s in (first, second))
    similarities = corresponding_patch_similarity(model, a, b, world_transform=world_transform, patch_size=patch_size)
    numbers = summary(similarities)
    frame = pd.DataFrame([numbers])
    write_atomically(out / "stability.csv", lambda tmp: frame.to_csv(tmp, index=False))
    title = " vs ".join(output_names([first, second]))
    return numbers, similarity_histogram(similarities, out / "stability.png", title=title)
