"""Multi-channel probability maps of a target scan from its patch similarity to class prototypes.

The tiled probability maps of J. Kim's proposal "Leveraging Foundation Models, Knowledge Distillation, and
Pseudo-Labeling for Robust Lung Segmentation in Computed Tomography Scans" (UCLA), in 3D, with image prototypes in
place of text embeddings. Every tile of the target gets its cosine similarity to each class
(the best of the class's prototypes); overlapping tiles are aggregated per voxel (mean or max), the map is
normalised to [0, 1] (min-max, ``(P - min P) / (max P - min P)``; a temperature sigmoid; or a temperature softmax
across channels: all three keep the channels on one scale, so a voxel's highest channel is its nearest prototype)
and resampled onto the target's own grid. Voxels the preprocessing cropped away (air around the body) are
background with certainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from torch import nn

from ctfm.analysis.prototypes import PrototypeMismatchError, Prototypes
from ctfm.analysis.tiles import Aggregation, TargetCache, aggregate_tiles, resample_to_grid
from ctfm.nn.encoder import pooled_features
from ctfm.transforms.preprocess import CTPreprocessing

Normalisation = Literal["minmax", "sigmoid", "softmax"]
NORMALISATIONS = ("minmax", "sigmoid", "softmax")


@dataclass
class SimilarityMaps:
    """Normalised maps, background first: ``maps`` on the target's grid ``(C, I, J, K)``, ``preprocessed`` on the
    tiles' grid ``(C, z, y, x)`` with ``volume`` (the preprocessed target, for pictures); ``scan`` as read."""

    maps: np.ndarray
    preprocessed: np.ndarray
    class_names: tuple[str, ...]
    scan: MetaTensor
    volume: MetaTensor


def encoder_width(model: nn.Module, patch_size: Sequence[int]) -> int:
    """Width of the model's pooled embedding, from one forward pass of an empty patch."""
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            probe = torch.zeros((1, 1, *patch_size), device=parameter.device, dtype=parameter.dtype)
            return int(pooled_features(model, probe).shape[1])
    finally:
        model.train(was_training)


def class_similarity(prototypes: Prototypes, embeddings: torch.Tensor) -> np.ndarray:
    """``(tiles, classes)``: cosine of each tile to each class, the best of that class's prototype rows."""
    cosine = (
        torch.nn.functional.normalize(embeddings.float(), dim=1)
        @ torch.nn.functional.normalize(prototypes.vectors.float(), dim=1).T
    )
    out = torch.full((len(embeddings), len(prototypes.class_names)), -torch.inf)
    out.scatter_reduce_(1, prototypes.owner.expand(len(embeddings), -1), cosine, reduce="amax")
    return out.numpy()


def normalise(maps: np.ndarray, how: Normalisation = "minmax", temperature: float = 0.01) -> np.ndarray:
    """Channels ``(C, ...)`` to [0, 1], every channel on one scale so the nearest prototype stays the highest
    channel: min-max over the whole map, ``1 / (1 + exp(-(P - mean) / t))`` (the proposal's sigmoid
    ``1 / (1 + exp(-alpha (P - beta)))`` with alpha = 1/t and beta the map's mean), or softmax of ``P / t`` across
    channels."""
    maps = np.asarray(maps, dtype=np.float64)
    if how == "minmax":
        low, high = maps.min(), maps.max()
        return ((maps - low) / (high - low if high > low else 1.0)).astype(np.float32)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if how == "sigmoid":
        return (1.0 / (1.0 + np.exp(-(maps - maps.mean()) / temperature))).astype(np.float32)
    if how == "softmax":
        scaled = maps / temperature
        scaled = np.exp(scaled - scaled.max(axis=0, keepdims=True))
        return (scaled / scaled.sum(axis=0, keepdims=True)).astype(np.float32)
    raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {how!r}")


def prototype_cache(
    model: nn.Module,
    prototypes: Prototypes,
    *,
    preprocess: CTPreprocessing | None = None,
    patch_size: Sequence[int] | None = None,
    overlap: float | None = None,
    where: str | Path = "prototypes",
) -> TargetCache:
    """The sliding window of the prototypes (their preprocessing, patch size and overlap unless given: then they
    must agree); refuses a model other than theirs, or one whose embedding width is not their vectors'."""
    settings = prototypes.settings
    patch_size = tuple(settings["patch_size"]) if patch_size is None else tuple(patch_size)
    preprocess = prototypes.preprocessing if preprocess is None else replace(preprocess, min_size=patch_size)
    cache = TargetCache(
        model, preprocess, patch_size, settings["overlap"] if overlap is None else overlap, batch_size=8
    )
    check_cache(prototypes, cache, where)
    width = encoder_width(model, cache.patch_size)
    if width != prototypes.dim:
        raise PrototypeMismatchError(f"{where}: reference vectors are {prototypes.dim}-d, the model embeds {width}-d")
    return cache


def check_cache(prototypes: Prototypes, cache: TargetCache, where: str | Path = "prototypes") -> None:
    """:meth:`Prototypes.check_compatible` against the model and tile settings of ``cache``."""
    settings = cache.settings
    prototypes.check_compatible(
        {"model_sha256": settings["model"], "preprocessing": asdict(cache.preprocess),
         "patch_size": list(cache.patch_size), "overlap": settings["overlap"]},
        where,
    )  # fmt: skip


def similarity_maps(
    model: nn.Module,
    target: str | Path,
    prototypes: Prototypes,
    *,
    aggregation: Aggregation = "mean",
    normalisation: Normalisation = "minmax",
    temperature: float = 0.01,
    cache: TargetCache | None = None,
) -> SimilarityMaps:
    """Probability maps of ``target`` for every class of ``prototypes`` (see the module docstring)."""
    if cache is None:
        cache = prototype_cache(model, prototypes)
    else:
        check_cache(prototypes, cache)
    scan, volume = cache.load(target)
    patches = cache.get(target, volume)
    per_tile = class_similarity(prototypes, patches.embeddings)
    raw = aggregate_tiles(patches, per_tile, volume.shape[1:], how=aggregation)
    preprocessed = normalise(raw, normalisation, temperature)
    maps = resample_to_grid(preprocessed, volume.affine, scan, fill=np.nan)
    outside = np.isnan(maps)
    maps[0][outside[0]] = 1.0
    maps[1:][outside[1:]] = 0.0
    return SimilarityMaps(maps, preprocessed, prototypes.class_names, scan, volume)
