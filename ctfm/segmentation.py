"""``ctfm.segment``: a CT in, a label map on the CT's own grid out, with any Hub-format SegResNetDS.

The published whole-body card's pipeline (orientation SPL, [-1024, 2048] HU -> [0, 1], crop to the body, Gaussian
sliding window 96 x 160 x 160 with overlap 0.625, softmax, argmax, largest component per class, inverse of the
preprocessing), with one change of method and none of result: the tiles are stitched slab by slab along z.
A voxel's label is the argmax of the Gaussian-weighted sum of its tiles' logits (softmax and the division by the
weight sum do not change an argmax), and once every tile starting at or before a slice has run, the slices before
the next tile start are final. So only one tile's depth of class scores is ever held, instead of the whole
scan's (118 channels of a 300 x 512 x 512 scan are 37 GB in float32), and the tiles and their weights are
MONAI's own, so the labels agree with ``SlidingWindowInferer`` up to float rounding.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.networks.nets.segresnet_ds import SegResNetDS
from monai.transforms import Invertd, KeepLargestConnectedComponent
from torch import nn

from ctfm.errors import CTFMError
from ctfm.hub.format import CLASSES_FILE
from ctfm.transforms.dictionary import CTPreprocessingd
from ctfm.transforms.preprocess import CTPreprocessing

#: The whole-body card's sliding-window tile (z, y, x) and overlap.
ROI_SIZE = (96, 160, 160)
OVERLAP = 0.625
#: The card does not resample.
CARD_PREPROCESSING = CTPreprocessing(spacing=None)
#: A Hub folder may name its output channels (background first) in this file.


@dataclasses.dataclass
class Segmenter:
    """A segmentation network with the names of its outputs and the preprocessing its inputs need."""

    network: nn.Module
    class_names: tuple[str, ...]
    preprocessing: CTPreprocessing = CARD_PREPROCESSING


def load_segmenter(model: str | Path | nn.Module | Segmenter, device: str | torch.device = "cpu") -> Segmenter:
    """A :class:`Segmenter` from a registry name, a Hub-format folder or repo id, or a network.

    Class names come from the registry, else a ``classes.json`` list beside the weights, else the TotalSegmentator
    "total" order for 118 outputs, else ``class_1...``.
    """
    if isinstance(model, Segmenter):
        return model
    from ctfm.hub import load
    from ctfm.hub.registry import find_spec, spec_of

    spec = find_spec(str(model)) if isinstance(model, (str, Path)) else None
    network = load(model, device=device) if isinstance(model, (str, Path)) else model
    spec = spec or spec_of(network)
    if not isinstance(network, SegResNetDS):
        raise CTFMError(
            f"{model if isinstance(model, (str, Path)) else type(model).__name__}: is a "
            f"{type(network).__name__}, not a segmentation model (a SegResNetDS)"
        )
    out_channels = int(network.out_channels)
    names: Sequence[str] | None = spec.classes if spec is not None else None
    folder = Path(str(model)) if isinstance(model, (str, Path)) else None
    if names is None and folder is not None and (folder / CLASSES_FILE).is_file():
        names = _read_class_names(folder / CLASSES_FILE)
    if names is None and out_channels == 118:
        from ctfm.data.classes import TOTALSEGMENTATOR_CLASSES

        names = ("background", *TOTALSEGMENTATOR_CLASSES)
    names = tuple(names) if names is not None else ("background", *(f"class_{i}" for i in range(1, out_channels)))
    if len(names) != out_channels:
        raise CTFMError(f"{model}: {len(names)} class names for {out_channels} output channels")
    preprocessing = spec.preprocessing if spec is not None else CARD_PREPROCESSING
    return Segmenter(network.to(device).eval(), names, preprocessing)


def _read_class_names(path: Path) -> list[str]:
    """The names in a model folder's ``classes.json`` (a JSON list of strings, background first)."""
    try:
        names = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CTFMError(f"{path}: cannot be read as a JSON list of class names: {err}") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise CTFMError(f"{path}: class names must be a JSON list of strings, background first")
    return names


@torch.no_grad()
def stitched_argmax(
    network: nn.Module,
    volume: torch.Tensor,
    roi_size: Sequence[int] = ROI_SIZE,
    overlap: float = OVERLAP,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    stitch_device: str | torch.device | None = None,
) -> torch.Tensor:
    """Labels ``(z, y, x)`` (int64) of a ``(1, z, y, x)`` volume at least ``roi_size`` large, as described above."""
    shape = tuple(volume.shape[1:])
    roi = tuple(int(r) for r in roi_size)
    if any(s < r for s, r in zip(shape, roi, strict=True)):
        raise ValueError(f"volume {shape} is smaller than the tile {roi}; pad it first")
    stitch_device = torch.device(stitch_device or device)
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for r, s in zip(roi, shape, strict=True)]
    tiles = dense_patch_slices(shape, roi, interval)
    weight = compute_importance_map(roi, mode="gaussian", device=stitch_device)
    weight = weight.clamp(min=max(float(weight[weight > 0].min()), 1e-3))
    starts = sorted({tile[0].start for tile in tiles})
    labels = torch.zeros(shape, dtype=torch.int64)
    buffer: torch.Tensor | None = None
    for index, z0 in enumerate(starts):
        row = [tile for tile in tiles if tile[0].start == z0]
        for first in range(0, len(row), batch_size):
            chunk = row[first : first + batch_size]
            batch = torch.stack([volume[(slice(None),) + tile] for tile in chunk]).to(device, torch.float32)
            logits = network(batch)
            logits = (logits[0] if isinstance(logits, (list, tuple)) else logits).to(stitch_device, torch.float32)
            if buffer is None:
                buffer = torch.zeros((logits.shape[1], roi[0], *shape[1:]), device=stitch_device)
            for scores, tile in zip(logits, chunk, strict=True):
                buffer[:, :, tile[1], tile[2]].addcmul_(scores, weight)
        assert buffer is not None
        z1 = starts[index + 1] if index + 1 < len(starts) else shape[0]
        done = z1 - z0
        labels[z0:z1] = buffer[:, :done].argmax(dim=0).cpu()
        _shift_out(buffer, done)
    return labels


def _shift_out(buffer: torch.Tensor, done: int) -> None:
    """Drop the first ``done`` slices of ``buffer`` (class, z, y, x) in place and zero the freed ones at its end.

    Copied ``done`` slices at a time, so no copy reads slices it has already overwritten and nothing is allocated.
    """
    depth = buffer.shape[1]
    for first in range(0, depth - done, done):
        last = min(first + done, depth - done)
        buffer[:, first:last].copy_(buffer[:, first + done : last + done])
    buffer[:, max(depth - done, 0) :].zero_()


def segment(
    model: str | Path | nn.Module | Segmenter,
    image: str | Path | MetaTensor,
    *,
    roi_size: Sequence[int] = ROI_SIZE,
    overlap: float = OVERLAP,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    stitch_device: str | torch.device | None = None,
    classes: Sequence[str] | None = None,
    largest_component: bool = True,
) -> MetaTensor:
    """Segment one CT into a label map on the CT's own grid.

    The label map is on the input's grid (its shape and affine) with the values of the model's classes
    (``load_segmenter(model).class_names[value]``).

    Args:
        model: a registry name (e.g. ``"ct-fm-whole-body"``, see ``ctfm.list_models()``), a Hub-format folder or
            repo id, a SegResNetDS, or a :class:`Segmenter`.
        image: a path (NIfTI, NRRD, MHA), a DICOM series folder, or an HU MetaTensor.
        roi_size: the sliding window (z, y, x) in voxels of the preprocessed scan; a multiple of the network's
            downsampling factor (16 for CT-FM's five levels).
        overlap: fraction of a tile shared by its neighbours; more is smoother and slower.
        batch_size: tiles per forward pass.
        device: where the network runs, e.g. ``"cuda"``.
        stitch_device: where the class scores are summed; ``"cpu"`` keeps them in host memory when the
            accelerator is small (default ``device``).
        classes: keep only these class names (the others become 0).
        largest_component: keep each class's largest connected component only, as the published pipeline does.

    Returns:
        An int64 ``(1, I, J, K)`` MetaTensor with the input's affine; ``meta["class_names"]`` lists the names of
        the values, background first.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.nn import ct_fm_segresnet
        >>> scan = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> network = ct_fm_segresnet(init_filters=4, out_channels=3)  # or "ct-fm-whole-body"
        >>> labels = ctfm.segment(network, scan, roi_size=(16, 32, 32))
        >>> tuple(labels.shape), labels.dtype, labels.meta["class_names"]
        ((1, 64, 64, 24), torch.int64, ['background', 'class_1', 'class_2'])
    """
    segmenter = load_segmenter(model, device=device)
    keep = _class_values(segmenter.class_names, classes)
    factor = segmenter.network.shape_factor() if isinstance(segmenter.network, SegResNetDS) else [1, 1, 1]
    if any(int(r) % f for r, f in zip(roi_size, factor, strict=True)):
        raise CTFMError(f"the tile {tuple(roi_size)} must be a multiple of {tuple(factor)} voxels for this network")
    settings = dataclasses.replace(segmenter.preprocessing, min_size=tuple(int(r) for r in roi_size))
    preprocess = CTPreprocessingd(settings)
    item = preprocess({"image": image})
    labels = stitched_argmax(segmenter.network, item["image"], roi_size, overlap, batch_size, device, stitch_device)
    labels = labels[None]
    present = [int(v) for v in labels.unique().tolist() if v != 0]
    if largest_component and present:
        # a tensor in gives a tensor out
        labels = cast(torch.Tensor, KeepLargestConnectedComponent(applied_labels=present, independent=True)(labels))
    if keep is not None:
        labels = torch.where(torch.isin(labels, torch.tensor(keep)), labels, torch.zeros_like(labels))
    # The copied meta carries the affine; passing it again makes MONAI warn that it overwrites it.
    item["pred"] = MetaTensor(labels.float(), meta=dict(item["image"].meta))
    inverted = Invertd(keys="pred", transform=preprocess, orig_keys="image", nearest_interp=True)(item)["pred"]
    out = MetaTensor(inverted.as_tensor().round().to(torch.int64), meta=dict(inverted.meta))
    out.meta["class_names"] = list(segmenter.class_names)
    return out


def _class_values(names: Sequence[str], classes: Sequence[str] | None) -> list[int] | None:
    if classes is None:
        return None
    unknown = [c for c in classes if c not in names[1:]]
    if unknown:
        raise CTFMError(f"the model has no classes {unknown}; it has {', '.join(names[1:6])}, ... ({len(names) - 1})")
    return [names.index(c) for c in classes]
