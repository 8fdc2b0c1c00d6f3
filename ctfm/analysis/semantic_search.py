"""Semantic search inside scans: where in each target scan does the anatomy of a query point appear?

The query is the embedding of the patch centred at a world point (RAS mm, as :class:`ctfm.embedding.PatchEmbeddings`
centres; LPS on request) of a source scan, or a patch embedded before (:mod:`ctfm.analysis.query_vectors`: a saved
vector or a row of a patch table, refused when another model or other patch settings made it). Each target is
embedded on a dense sliding window once (cached in memory and, with ``cache_dir``, on disk, so ten queries cost one
embedding per target); the cosine similarity of every tile to the query is painted on the voxels nearest its
centre (:func:`ctfm.analysis.tiles.nearest_tile`) and resampled onto the target's own grid, so the map's
brightest voxels surround the best tile's centre, which is the match reported in ``matches.csv`` (a mean over
overlapping tiles would favour the scan's edges, covered by fewer tiles, and put the map's peak elsewhere than
the match). With an organ mask on the target's grid, the organ
centroid distance (OCD) and whether the match lies inside the organ are reported as in the CT-FM paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.data import MetaTensor
from torch import nn

from ctfm.analysis.query_vectors import QueryVector, check_query
from ctfm.analysis.tiles import TargetCache, nearest_tile, resample_to_grid, voxel_to_world, world_to_voxel
from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.io.naming import output_names
from ctfm.io.reader import read_ct
from ctfm.nn.encoder import pooled_features
from ctfm.outputs import output_folder, refuse_overwrite
from ctfm.transforms.preprocess import CTPreprocessing

if TYPE_CHECKING:
    import pandas as pd

#: RAS <-> LPS: negate the first two world axes.
LPS_FLIP = np.array([-1.0, -1.0, 1.0])


def check_inside(scan: MetaTensor, point_mm: np.ndarray, path: str | Path) -> None:
    """Refuse a point that lies outside the scan's voxel grid (half a voxel of slack at each face)."""
    voxel = world_to_voxel(scan.affine, point_mm)[0]
    shape = np.array(scan.shape[1:])
    if np.any(voxel < -0.5) or np.any(voxel > shape - 0.5):
        raise InvalidScanError(path, f"query point {np.round(point_mm, 2).tolist()} mm (RAS) lies outside the scan")


def patch_at(volume: MetaTensor, point_mm: np.ndarray, patch_size: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
    """The ``(1, z, y, x)`` patch of a preprocessed volume centred at a RAS point (air beyond the edges), and its
    first voxel (may be negative)."""
    patch = np.array(patch_size)
    start = np.round(world_to_voxel(volume.affine, point_mm)[0] - (patch - 1) / 2).astype(int)
    padded = torch.nn.functional.pad(volume.as_tensor(), [int(p) for p in np.repeat(patch[::-1], 2)])
    z, y, x = start + patch
    return padded[:, z : z + patch[0], y : y + patch[1], x : x + patch[2]], start


@torch.inference_mode()
def embed_points(
    model: nn.Module, volume: MetaTensor, points_mm: np.ndarray, patch_size: Sequence[int], batch_size: int = 8
) -> torch.Tensor:
    """Embeddings ``(points, dim)`` of the ``patch_size`` patches of a preprocessed volume centred at RAS points."""
    device = next(model.parameters()).device
    points = np.atleast_2d(points_mm)
    was_training = model.training
    model.eval()
    try:
        out = []
        for first in range(0, len(points), batch_size):
            crops = torch.stack([patch_at(volume, p, patch_size)[0] for p in points[first : first + batch_size]])
            out.append(pooled_features(model, crops.to(device)).float().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def embed_point(model: nn.Module, volume: MetaTensor, point_mm: np.ndarray, patch_size: Sequence[int]) -> torch.Tensor:
    """Embedding of the ``patch_size`` patch of a preprocessed volume centred at a RAS point."""
    return embed_points(model, volume, point_mm, patch_size)[0]


@dataclass
class Match:
    """The best tile of one target: its centre (RAS mm), similarity, and the heat maps on both grids."""

    target: str
    point_mm: np.ndarray
    similarity: float
    heat: np.ndarray  # on the target's own grid
    heat_preprocessed: np.ndarray  # on the preprocessed (z, y, x) grid, for pictures
    volume: MetaTensor  # the preprocessed target
    scan: MetaTensor  # the target as read


def search_target(query: torch.Tensor, target: str | Path, cache: TargetCache, query_name: str = "the query") -> Match:
    """Cosine similarity of ``query`` to every tile of ``target``; the best tile and the heat maps."""
    scan, volume = cache.load(target)
    patches = cache.get(target, volume)
    if query.shape != patches.embeddings.shape[1:]:
        raise CTFMError(
            f"{query_name}: a {query.shape[0]}-wide vector; the model embeds {target} in {patches.embeddings.shape[1]}"
        )
    similarity = torch.nn.functional.cosine_similarity(patches.embeddings, query[None], dim=1).numpy()
    best = int(np.argmax(similarity))
    heat_pre = nearest_tile(patches, similarity.astype(np.float32), volume.shape[1:])
    heat = resample_to_grid(heat_pre, volume.affine, scan)
    return Match(str(target), patches.centers_mm[best].numpy(), float(similarity[best]), heat, heat_pre, volume, scan)


def organ_centroid_distance(match_mm: np.ndarray, mask: MetaTensor) -> tuple[float, bool]:
    """Distance in cm from the match to the mask's centroid (world), and whether the match's voxel is in the mask."""
    array = np.asarray(mask[0]) > 0
    if not array.any():
        raise CTFMError(f"{mask.meta.get('filename_or_obj', 'mask')}: the organ mask is empty")
    centroid = voxel_to_world(mask.affine, np.argwhere(array).mean(axis=0))[0]
    voxel = np.round(world_to_voxel(mask.affine, match_mm)[0]).astype(int)
    inside = bool(np.all(voxel >= 0) and np.all(voxel < array.shape) and array[tuple(voxel)])
    return float(np.linalg.norm(match_mm - centroid) / 10.0), inside


def point_query(
    source: str | Path, point: Sequence[float], model: nn.Module, cache: TargetCache, lps: bool = False
) -> QueryVector:
    """The embedding of the patch of ``source`` centred at ``point``, with the record
    :func:`ctfm.analysis.query_vectors.save_query_vector` keeps beside it.

    Args:
        source: the scan holding the anatomy to look for.
        point: its centre (x, y, z) in world mm: RAS, or LPS with ``lps``.
        model: the encoder.
        cache: gives the patch size and preprocessing the targets use, so query and targets match.
        lps: ``point`` is in LPS (DICOM, 3D Slicer) rather than RAS.

    Returns:
        The query vector, named after its source and point.
    """
    point_ras = np.asarray(point, dtype=np.float64) * (LPS_FLIP if lps else np.ones(3))
    scan = read_ct(source, check_hu=cache.preprocess.check_hu)
    check_inside(scan, point_ras, source)
    vector = embed_point(model, cache.preprocess(scan), point_ras, cache.patch_size).numpy()
    settings = {**cache.query_settings(), "source": str(source), "point_mm_ras": point_ras.tolist()}
    return QueryVector(vector, f"{source} @ {np.round(point_ras, 1).tolist()} mm RAS", settings)


def search_outputs(out: str | Path, targets: Sequence[str | Path]) -> list[Path]:
    """Every file :func:`run_semantic_search` writes into ``out`` (``<name>``: :func:`ctfm.io.naming.output_names`)."""
    out = Path(out)
    names = output_names(targets)
    return [out / "matches.csv"] + [out / f"{name}_heatmap{ext}" for name in names for ext in (".nii.gz", ".png")]


def run_semantic_search(
    source: str | Path | None,
    point: Sequence[float] | None,
    targets: Sequence[str | Path],
    model: nn.Module,
    out: str | Path,
    *,
    lps: bool = False,
    mask_dir: str | Path | None = None,
    patch_size: Sequence[int] = (24, 64, 64),
    overlap: float = 0.5,
    preprocess: CTPreprocessing = CTPreprocessing(),
    cache: TargetCache | None = None,
    query: QueryVector | None = None,
    overwrite: bool = False,
    skipped: list[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Search each target for the anatomy at ``point`` of ``source`` (or for ``query``, an embedded patch, with
    ``source`` and ``point`` None); write ``out/matches.csv`` and per target a heat-map NIfTI (the target's shape and
    affine; its peak is the reported match) and a PNG (the query marked in its source, the match in the target, the
    heat map's cosine scale as a colour bar), named as :func:`search_outputs` says (a run that would overwrite one
    stops first, unless ``overwrite``). ``point`` and the csv's ``x_mm, y_mm, z_mm`` are RAS, or LPS with
    ``lps=True``. With ``mask_dir``, the mask named like each target gives ``ocd_cm`` and ``inside_mask``. A
    ``cache`` brings its own model settings (patch size, overlap, preprocessing) and embeddings. With a ``skipped``
    list, an unreadable target is added to it as ``(target, reason)`` and the search goes on; without, it stops the
    search. A ``query`` may come with the ``source`` and ``point`` it was made from, which the pictures then show.

    Args:
        source: the scan holding the anatomy to look for (None with ``query``).
        point: its centre (x, y, z) in world mm (None with ``query``).
        targets: the scans to search.
        model: the encoder.
        out: the output folder.
        lps: points are LPS (DICOM, 3D Slicer) rather than RAS.
        mask_dir: a folder of organ masks named like the targets, to measure each match against.
        patch_size: the patch (z, y, x) in voxels of the preprocessed scans.
        overlap: fraction of a target patch shared by its neighbours; more gives finer heat maps.
        preprocess: the preprocessing of source and targets.
        cache: target volumes and embeddings reused across queries (it brings its own settings).
        query: an embedded patch instead of ``source`` and ``point``.
        overwrite: replace existing outputs.
        skipped: collects unreadable targets instead of stopping.

    Returns:
        The matches table, per target ``target``: the best match's ``x_mm, y_mm, z_mm`` (in the
            points' convention), its cosine ``similarity`` and, with ``mask_dir``, ``ocd_cm`` and ``inside_mask``.
    """
    import nibabel as nib
    import pandas as pd

    from ctfm.io.reader import read_label_map
    from ctfm.plotting import heat_range, noise_checked_title, save_figure, scaled_window, semantic_search_figure

    out = output_folder(out)
    refuse_overwrite(search_outputs(out, targets), overwrite)
    flip = LPS_FLIP if lps else np.ones(3)
    cache = cache or TargetCache(model, preprocess, patch_size, overlap)
    preprocess = cache.preprocess
    if query is None:
        if source is None or point is None:
            raise CTFMError("semantic search needs a source scan and a point, or an embedded query")
        query = point_query(source, point, model, cache, lps)
    shown_source, query_voxel = None, None
    if source is not None and point is not None:
        source_volume = cache.load(source)[1]
        shown_source = np.asarray(source_volume[0])
        point_ras = np.asarray(point, dtype=np.float64) * flip
        query_voxel = np.round(world_to_voxel(source_volume.affine, point_ras)[0]).astype(int)
    elif query.settings is not None:
        check_query(query, len(query.vector), cache.query_settings(), "this search's model and tiles")
    query_vector = torch.from_numpy(np.asarray(query.vector, dtype=np.float32))
    rows = []
    for target, name in zip(targets, output_names(targets)):
        try:
            match = search_target(query_vector, target, cache, query.name)
        except InvalidScanError as err:
            if skipped is None:
                raise
            skipped.append((str(target), err.problem))
            continue
        affine = np.asarray(match.scan.affine, dtype=np.float64)
        image = nib.Nifti1Image(match.heat, affine)
        write_atomically(out / f"{name}_heatmap.nii.gz", partial(nib.save, image))
        best_voxel = np.round(world_to_voxel(match.volume.affine, match.point_mm)[0]).astype(int)
        title = f"{name}: best match {np.round(match.point_mm * flip, 1).tolist()} mm, cosine {match.similarity:.3f}"
        figure = semantic_search_figure(
            np.asarray(match.volume[0]), match.heat_preprocessed, best_voxel,
            value_range=heat_range(match.heat_preprocessed), source=shown_source, query_voxel=query_voxel,
            window=scaled_window(preprocess.hu_range), spacing=preprocess.spacing or (1.0, 1.0, 1.0),
            title=noise_checked_title(title, match.heat_preprocessed, f"heat map of {target}"),
        )  # fmt: skip
        save_figure(figure, out / f"{name}_heatmap.png")
        x, y, z = match.point_mm * flip
        row = {"target": str(target), "x_mm": x, "y_mm": y, "z_mm": z, "similarity": match.similarity}
        if mask_dir is not None:
            mask_path = Path(mask_dir) / Path(target).name
            if not mask_path.exists():
                raise CTFMError(f"{mask_path}: no mask for target {target} in {mask_dir}")
            mask = read_label_map(mask_path, like=match.scan)
            row["mask"] = str(mask_path)
            row["ocd_cm"], row["inside_mask"] = organ_centroid_distance(match.point_mm, mask)
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else ["target", "x_mm", "y_mm", "z_mm", "similarity"])
    write_atomically(out / "matches.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table
