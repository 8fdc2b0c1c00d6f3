"""Embed a CT scan with a CT-FM encoder: one 512-d vector per scan, or one per patch with its position.

The scan is tiled with pretraining-sized patches (the encoder saw 24x128x128 at 3x1x1 mm), embedded a batch at a
time so memory stays bounded whatever the scan size, and the patch embeddings are reduced to one vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from torch import nn
from tqdm.auto import tqdm

from ctfm.nn.encoder import pooled_features
from ctfm.transforms.preprocess import PATCH_SIZE, CTPreprocessing, as_model_input

Reduction = Literal["mean", "min", "max"]
ImageInput = str | Path | MetaTensor | np.ndarray | torch.Tensor
#: ``preprocess="model"``: the preprocessing the model's own spec names (``ctfm.load`` attaches it), else the
#: canonical CT-FM preprocessing.
FROM_MODEL: Literal["model"] = "model"
Preprocess = CTPreprocessing | None | Literal["model"]
RegionPool = Literal["mean", "max", "min", "crop"]


def model_defaults(
    model: nn.Module, patch_size: Sequence[int] | None, preprocess: Preprocess
) -> tuple[tuple[int, ...], CTPreprocessing | None]:
    """The patch size and preprocessing to use: what the caller gave, else what the model's spec says."""
    from ctfm.hub.registry import spec_of

    spec = spec_of(model)
    size = tuple(int(p) for p in (patch_size or (spec.patch_size if spec is not None else PATCH_SIZE)))
    if isinstance(preprocess, str):  # FROM_MODEL
        return size, spec.preprocessing if spec is not None else CTPreprocessing()
    return size, preprocess


@dataclass
class PatchEmbeddings:
    """Per-patch embeddings of one scan and where each patch sits.

    ``centers_voxel`` are (z, y, x) indices in the preprocessed volume; ``centers_mm`` are the same points in the
    scan's world coordinates (RAS millimetres, MONAI's convention), so results map back onto the original scan.
    """

    embeddings: torch.Tensor
    centers_voxel: torch.Tensor
    centers_mm: torch.Tensor
    patch_size: tuple[int, ...]

    def reduce(self, how: Reduction = "mean") -> torch.Tensor:
        """One vector for the scan from its patches.

        Args:
            how: ``"mean"``, ``"min"`` or ``"max"``, element-wise over the patches.

        Returns:
            ``(D,)``, the embedding width.
        """
        if how == "mean":
            return self.embeddings.mean(dim=0)
        if how == "min":
            return self.embeddings.min(dim=0).values
        if how == "max":
            return self.embeddings.max(dim=0).values
        raise ValueError(f"reduce must be 'mean', 'min', 'max' or None, got {how!r}")


def patch_starts(spatial_shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Corners of a grid of patches covering the volume; the last patch on each axis is shifted inside it."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    interval = tuple(max(1, int(round(p * (1.0 - overlap)))) for p in patch_size)
    return [tuple(s.start for s in slices) for slices in dense_patch_slices(spatial_shape, patch_size, interval)]


def to_model_input(image: ImageInput, preprocess: CTPreprocessing | None, patch_size: Sequence[int]) -> MetaTensor:
    """Paths and HU MetaTensors go through ``preprocess``; plain arrays are taken as preprocessed (z, y, x) input."""
    if isinstance(image, (str, Path)) or (isinstance(image, MetaTensor) and preprocess is not None):
        if preprocess is None:
            raise ValueError("a path needs preprocessing; pass preprocess=CTPreprocessing(...)")
        if tuple(preprocess.min_size) != tuple(patch_size):
            preprocess = replace(preprocess, min_size=tuple(patch_size))
        return preprocess(image)
    return as_model_input(image, patch_size)


def _batches(
    volume: torch.Tensor, starts: list[tuple[int, ...]], size: Sequence[int], n: int
) -> Iterator[torch.Tensor]:
    for first in range(0, len(starts), n):
        yield torch.stack(
            [volume[:, z : z + size[0], y : y + size[1], x : x + size[2]] for z, y, x in starts[first : first + n]]
        )


@torch.inference_mode()
def embed_patches(
    model: nn.Module,
    image: ImageInput,
    *,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.0,
    batch_size: int = 4,
    preprocess: Preprocess = FROM_MODEL,
    progress: bool | None = None,
) -> PatchEmbeddings:
    """Embed every patch of a grid over the scan, keeping each patch's embedding and centre.

    Args:
        model: the encoder (its spec gives the default patch size and preprocessing).
        image: a path or HU MetaTensor (preprocessed here), or a ``(z, y, x)`` array already preprocessed.
        patch_size: (z, y, x) patch in voxels of the preprocessed volume; default the model's own.
        overlap: fraction of a patch shared by neighbours along each axis, in [0, 1).
        batch_size: patches per forward pass; bounds memory.
        preprocess: ``"model"``, a :class:`~ctfm.transforms.preprocess.CTPreprocessing`, or ``None`` for model
            input already.
        progress: show a progress bar (default: only for more than 8 batches).

    Returns:
        :class:`PatchEmbeddings`: ``embeddings`` ``(N, D)`` and the patch centres as voxel indices of the
        preprocessed volume and as world RAS mm.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.nn import ct_fm_encoder
        >>> scan = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> patches = ctfm.embed_patches(ct_fm_encoder(init_filters=4), scan, patch_size=(8, 32, 32))
        >>> patches.embeddings.shape[1], patches.centers_mm.shape[1]
        (64, 3)
    """
    patch_size, settings = model_defaults(model, patch_size, preprocess)
    volume = to_model_input(image, settings, patch_size)
    return embed_volume_patches(
        model,
        volume,
        patch_starts(volume.shape[1:], patch_size, overlap),
        patch_size,
        batch_size=batch_size,
        progress=progress,
    )


@torch.inference_mode()
def embed_volume_patches(
    model: nn.Module,
    volume: torch.Tensor,
    starts: list[tuple[int, ...]],
    patch_size: tuple[int, ...],
    *,
    batch_size: int = 4,
    progress: bool | None = None,
) -> PatchEmbeddings:
    """Embed the patches of a preprocessed ``(1, z, y, x)`` volume that start at ``starts``."""
    affine = volume.affine.double() if isinstance(volume, MetaTensor) else torch.eye(4, dtype=torch.float64)
    device = next(model.parameters()).device
    plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
    batches = _batches(plain, starts, patch_size, batch_size)
    n_batches = -(-len(starts) // batch_size)
    show = n_batches > 8 if progress is None else progress
    was_training = model.training
    model.eval()
    try:
        embeddings = [
            pooled_features(model, batch.to(device)).float().cpu()
            for batch in tqdm(batches, total=n_batches, desc="embedding patches", unit="batch", disable=not show)
        ]
    finally:
        model.train(was_training)
    centers = torch.tensor(starts, dtype=torch.float64) + (torch.tensor(patch_size, dtype=torch.float64) - 1) / 2
    homogeneous = torch.cat([centers, torch.ones(len(starts), 1, dtype=torch.float64)], dim=1)
    centers_mm = (homogeneous @ affine.T)[:, :3]
    width = embeddings[0].shape[1] if embeddings else 0
    return PatchEmbeddings(
        torch.cat(embeddings) if embeddings else torch.zeros(0, width), centers, centers_mm, patch_size
    )


def centre_crop_or_pad(
    volume: torch.Tensor, size: Sequence[int], centre: Sequence[float] | None = None
) -> torch.Tensor:
    """A ``size`` box of a ``(C, z, y, x)`` volume centred on ``centre`` (voxels; default the volume's centre),
    padded with 0 (air after preprocessing) where the box leaves the volume."""
    shape = volume.shape[1:]
    centre = [(s - 1) / 2 for s in shape] if centre is None else centre
    out = volume.new_zeros((volume.shape[0], *size))
    source, target = [], []
    for c, s, n in zip(centre, size, shape):
        start = int(round(c - (s - 1) / 2))
        lo, hi = max(start, 0), min(start + s, n)
        if hi <= lo:  # the box misses the volume on this axis: nothing to copy
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    everything = (slice(None),)
    out[everything + tuple(target)] = volume[everything + tuple(source)]
    return out


@torch.inference_mode()
def embed_whole(model: nn.Module, volume: torch.Tensor) -> torch.Tensor:
    """One forward pass over a whole preprocessed ``(1, z, y, x)`` volume, global-average-pooled."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
        return pooled_features(model, plain[None].to(device)).float().cpu()[0]
    finally:
        model.train(was_training)


def whole_volume_box(shape: Sequence[int], size: Sequence[int] | None = None) -> list[int]:
    """The box of a whole-volume pass: ``size``, else the volume padded to a multiple of 16 (the encoder's stride)."""
    return [int(b) for b in size] if size is not None else [-(-int(s) // 16) * 16 for s in shape]


def embed_whole_volume(model: nn.Module, volume: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
    """One forward pass over a preprocessed ``(1, z, y, x)`` volume centre-cropped or padded to ``size`` (default:
    padded to a multiple of 16), global-average-pooled: the CVPR 2026 challenge's whole-scan protocol."""
    return embed_whole(model, centre_crop_or_pad(volume, whole_volume_box(volume.shape[1:], size)))


def embed(
    model: nn.Module,
    image: ImageInput,
    *,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.0,
    reduce: Reduction | None = "mean",
    batch_size: int = 4,
    preprocess: Preprocess = FROM_MODEL,
    progress: bool | None = None,
    whole_volume: Sequence[int] | bool = False,
    mask: ImageInput | None = None,
    labels: Sequence[int | str] | None = None,
    pool: RegionPool = "mean",
    crop_size: Sequence[int] | None = None,
) -> torch.Tensor | PatchEmbeddings:
    """Embed one CT scan with a CT-FM encoder (or a SegResNetDS carrying one).

    Args:
        model: the encoder, e.g. ``ctfm.load("ct-fm")``; it runs on its own device, in eval mode.
        image: a path (NIfTI, NRRD, MHA, DICOM folder) or a MetaTensor in HU, both preprocessed with
            ``preprocess``; or a plain array/tensor ``(z, y, x)`` already preprocessed to [0, 1] (only padded).
        patch_size: (z, y, x) patch in voxels; default the model's own (``model.ctfm_spec``), else the
            pretraining patch.
        overlap: fraction of a patch shared by neighbours (0 computes every voxel once).
        reduce: ``"mean"`` / ``"min"`` / ``"max"`` over patches gives one vector per scan; ``None`` returns
            :class:`PatchEmbeddings` with every patch's embedding and centre.
        batch_size: patches per forward pass; bounds memory.
        preprocess: ``"model"`` (default) takes the model's own preprocessing, else the canonical one; ``None``
            when the MetaTensor is model input already.
        progress: show a progress bar (default: only for scans of more than 8 batches).
        whole_volume: one forward pass instead of tiles: ``True`` feeds the whole preprocessed scan (padded to a
            multiple of 16), a size such as ``(320, 320, 320)`` centre-crops or pads it to that size first (the
            CVPR 2026 challenge protocol); the deepest map is average-pooled.
        mask: a label map on the scan's grid (path, array or MetaTensor, or a folder of per-class masks): embed
            only inside it; see :func:`embed_regions`.
        labels: classes of ``mask`` that make the region, by value or name (default every non-zero value).
        pool: with ``mask``: ``"mean"`` / ``"max"`` / ``"min"`` over the patches centred inside the region (the
            mean weighted by each patch's fraction inside), or ``"crop"``: one forward pass over a ``crop_size``
            box centred on the region.
        crop_size: the box of ``pool="crop"``; default the challenge's 160^3 crop.

    Returns:
        One ``(D,)`` vector (D = 512 for CT-FM) when ``reduce`` is set or a ``mask`` or ``whole_volume`` is
        given; with ``reduce=None``, the :class:`PatchEmbeddings` of every patch.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.nn import ct_fm_encoder
        >>> scan = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> model = ct_fm_encoder(init_filters=4)  # or ctfm.load("ct-fm")
        >>> ctfm.embed(model, scan, patch_size=(8, 32, 32)).shape
        torch.Size([64])
        >>> patches = ctfm.embed(model, scan, patch_size=(8, 32, 32), reduce=None)
        >>> patches.embeddings.shape[1], patches.centers_mm.shape[1]
        (64, 3)
    """
    if mask is not None:
        return embed_region(
            model, image, mask, labels=labels, pool=pool, patch_size=patch_size, overlap=overlap,
            batch_size=batch_size, preprocess=preprocess, progress=progress, crop_size=crop_size,
        )  # fmt: skip
    if whole_volume is not False:
        size, settings = model_defaults(model, patch_size, preprocess)
        volume = to_model_input(image, settings, size)
        return embed_whole_volume(model, volume, None if whole_volume is True else whole_volume)
    patches = embed_patches(
        model,
        image,
        patch_size=patch_size,
        overlap=overlap,
        batch_size=batch_size,
        preprocess=preprocess,
        progress=progress,
    )
    return patches if reduce is None else patches.reduce(reduce)


#: The CVPR 2026 challenge's crop around a region for "ROI" diseases (voxels at its 1 mm isotropic spacing).
REGION_CROP = (160, 160, 160)


@dataclass
class RegionEmbedding:
    """The embedding of one region of a scan and how it was made.

    ``patch_centres_mm`` are the centres (world RAS mm) of the tiles pooled, or of the one crop; ``voxels`` is the
    region's size after preprocessing; ``centre_mm`` is the centre of its bounding box. ``labels`` are the mask's
    values that make the region and ``mask_sha256`` fingerprints the region itself (:func:`region_fingerprint`), so
    a table row says which mask it was cut with.
    """

    embedding: torch.Tensor
    patch_centres_mm: torch.Tensor
    voxels: int
    centre_mm: torch.Tensor
    labels: tuple[int, ...] = ()
    mask_sha256: str = ""

    @property
    def patches(self) -> int:
        """How many forward-pass inputs the embedding pools (1 for a crop)."""
        return len(self.patch_centres_mm)


def _fraction_inside(region: torch.Tensor, starts: Sequence[Sequence[int]], size: Sequence[int]) -> torch.Tensor:
    """Share of each patch's voxels inside ``region``, from a summed-area table (one pass, any patch count)."""
    table = torch.nn.functional.pad(region.double().cumsum(0).cumsum(1).cumsum(2), (1, 0, 1, 0, 1, 0))
    z, y, x = (torch.as_tensor([s[i] for s in starts]) for i in range(3))
    dz, dy, dx = size
    total = (
        table[z + dz, y + dy, x + dx] - table[z, y + dy, x + dx] - table[z + dz, y, x + dx] - table[z + dz, y + dy, x]
        + table[z, y, x + dx] + table[z, y + dy, x] + table[z + dz, y, x] - table[z, y, x]
    )  # fmt: skip
    return (total / float(np.prod(size))).float()


def region_fingerprint(inside: torch.Tensor) -> str:
    """SHA-256 of a region's boolean mask on the scan's own grid (its shape, then its voxels as packed bits): the
    same for any file that marks the same voxels, different as soon as one voxel of this region changes."""
    plain = inside.as_tensor() if isinstance(inside, MetaTensor) else inside
    digest = hashlib.sha256(str(tuple(plain.shape)).encode())
    digest.update(np.packbits(plain.cpu().numpy().astype(bool)).tobytes())
    return digest.hexdigest()


def embed_regions(
    model: nn.Module,
    image: ImageInput,
    mask: ImageInput,
    regions: Mapping[str, Sequence[int | str] | None] | None = None,
    *,
    pool: RegionPool = "mean",
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.0,
    batch_size: int = 4,
    preprocess: Preprocess = FROM_MODEL,
    crop_size: Sequence[int] | None = None,
    progress: bool | None = None,
    skipped: dict[str, str] | None = None,
) -> dict[str, RegionEmbedding]:
    """Embed several regions of one scan, reading and preprocessing the scan and its mask once.

    Args:
        model: the encoder (its spec gives the default patch size and preprocessing).
        image: a path or HU MetaTensor.
        mask: a label map on the scan's grid: a path (with an optional ``.json`` sidecar of names), a folder of
            per-class masks (TotalSegmentator's output), or an array / MetaTensor of the scan's shape.
        regions: region name -> the label values or names that make it (``None``: every non-zero value); default
            one region per value present.
        pool: ``mean`` (weighted by each patch's fraction inside), ``max`` or ``min`` over the patches whose centre
            lies inside the region; ``crop``: one forward pass over a ``crop_size`` box centred on the region's
            bounding box, average-pooled (the challenge's protocol).
        patch_size: tile size of the patch pools; the model's own by default.
        overlap: overlap of the tile grid; more overlap puts more patch centres inside small regions.
        batch_size: patches per forward pass.
        preprocess: the preprocessing of scan and mask (the mask by nearest neighbour); the model's by default.
        crop_size: the box of ``pool="crop"``, default 160^3.
        progress: show a progress bar over patch batches.
        skipped: when given, a region that is empty or names a class the mask lacks is left out of the result and
            recorded here (name -> reason) instead of raising, so one missing organ costs only itself.

    Returns:
        Region name -> :class:`RegionEmbedding`.

    Raises:
        EmptyRegionError: a region has no voxel in the mask, named with the mask and its labels.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.embedding import embed_regions
        >>> from ctfm.nn import ct_fm_encoder
        >>> scan = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> hu = ctfm.read_ct(scan)
        >>> mask = (hu > 0).int() + (hu > 300).int()  # a label map on the scan's grid: 1 soft tissue, 2 bone
        >>> model = ct_fm_encoder(init_filters=4)
        >>> found = embed_regions(model, scan, mask, {"tissue": [1], "bone": [2]}, patch_size=(8, 32, 32))
        >>> {name: tuple(region.embedding.shape) for name, region in found.items()}
        {'tissue': (64,), 'bone': (64,)}
    """
    from ctfm.errors import CTFMError
    from ctfm.io.regions import EmptyRegionError, read_region_labels, region_mask, region_values
    from ctfm.transforms.dictionary import CTPreprocessingd
    from ctfm.transforms.preprocess import LoadCT

    if pool not in ("mean", "max", "min", "crop"):
        raise ValueError(f"pool must be 'mean', 'max', 'min' or 'crop', got {pool!r}")
    size, settings = model_defaults(model, patch_size, preprocess)
    if settings is None:
        raise ValueError("region embedding preprocesses the scan and its mask together: preprocess cannot be None")
    scan = LoadCT(check_hu=settings.check_hu)(image)  # type: ignore[arg-type]
    where = str(mask) if isinstance(mask, (str, Path)) else "mask"
    labels, names = read_region_labels(mask, scan)
    item = CTPreprocessingd(replace(settings, min_size=size), label_keys=("mask",), load=False)(
        {"image": scan, "mask": labels}
    )
    volume, labels_pre = item["image"], item["mask"]
    present = sorted(int(v) for v in torch.unique(labels.as_tensor()).tolist())
    if regions is None:
        regions = {names.get(v, str(v)): [v] for v in present if v != 0}
    affine = volume.affine.double()
    grid = patch_starts(volume.shape[1:], size, overlap)
    centres = torch.tensor(grid, dtype=torch.float64) + (torch.tensor(size, dtype=torch.float64) - 1) / 2
    cache: dict[tuple[int, ...], torch.Tensor] = {}
    out = {}
    for name, selector in regions.items():
        try:
            values = region_values(present, names, None if selector is None else list(selector), where)
            inside = region_mask(labels_pre[0], values)
            voxels = int(inside.sum())
            if voxels == 0:
                raise EmptyRegionError(f"{where}: region {name!r} (labels {values}) holds no voxel")
        except CTFMError as err:
            if skipped is None:
                raise
            skipped[name] = str(err)
            continue
        made_of, fingerprint = tuple(values), region_fingerprint(region_mask(labels[0], values))
        nonzero = inside.nonzero()
        box_centre = (nonzero.min(0).values + nonzero.max(0).values).double() / 2
        centre_mm = (torch.cat([box_centre, torch.ones(1, dtype=torch.float64)]) @ affine.T)[:3]
        if pool == "crop":
            box = [int(c) for c in (crop_size or REGION_CROP)]
            vector = embed_whole(model, centre_crop_or_pad(volume, box, box_centre.tolist()))
            out[name] = RegionEmbedding(vector, centre_mm[None], voxels, centre_mm, made_of, fingerprint)
            continue
        chosen = [i for i, c in enumerate(centres.round().long().tolist()) if inside[tuple(c)]]
        if not chosen:  # a region smaller than the grid's spacing: the one patch centred on it, clamped inside
            limits = torch.tensor(volume.shape[1:]) - torch.tensor(size)
            start = (box_centre - (torch.tensor(size, dtype=torch.float64) - 1) / 2).round().long()
            starts = [tuple(int(s) for s in torch.minimum(torch.clamp(start, min=0), limits))]
        else:
            starts = [grid[i] for i in chosen]
        missing = [s for s in starts if s not in cache]
        if missing:
            done = embed_volume_patches(model, volume, missing, size, batch_size=batch_size, progress=progress)
            cache.update(zip(missing, done.embeddings))
        vectors = torch.stack([cache[s] for s in starts])
        if pool == "mean":
            weights = _fraction_inside(inside, starts, size)
            vector = (vectors * weights[:, None]).sum(0) / weights.sum()
        else:
            vector = vectors.max(0).values if pool == "max" else vectors.min(0).values
        patch_centres = torch.tensor(starts, dtype=torch.float64) + (torch.tensor(size, dtype=torch.float64) - 1) / 2
        homogeneous = torch.cat([patch_centres, torch.ones(len(starts), 1, dtype=torch.float64)], dim=1)
        out[name] = RegionEmbedding(vector, (homogeneous @ affine.T)[:, :3], voxels, centre_mm, made_of, fingerprint)
    return out


def embed_region(
    model: nn.Module,
    image: ImageInput,
    mask: ImageInput,
    *,
    labels: Sequence[int | str] | None = None,
    pool: RegionPool = "mean",
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.0,
    batch_size: int = 4,
    preprocess: Preprocess = FROM_MODEL,
    crop_size: Sequence[int] | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """The embedding of the region of ``mask`` made of ``labels`` (default: every non-zero value) as one vector.

    See :func:`embed_regions` for the arguments; ``ctfm.embed(model, scan, mask=..., labels=..., pool=...)``
    calls this.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.nn import ct_fm_encoder
        >>> scan = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> mask = ctfm.read_ct(scan)[0] > 0  # everything denser than water: a region on the scan's grid
        >>> model = ct_fm_encoder(init_filters=4)
        >>> ctfm.embed(model, scan, mask=mask, patch_size=(8, 32, 32)).shape
        torch.Size([64])
    """
    found = embed_regions(
        model, image, mask, {"region": labels}, pool=pool, patch_size=patch_size, overlap=overlap,
        batch_size=batch_size, preprocess=preprocess, crop_size=crop_size, progress=progress,
    )  # fmt: skip
    return found["region"].embedding
