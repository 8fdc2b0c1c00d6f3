"""Class prototypes from a few labelled scans: the reference vectors of similarity maps and pseudo-labels.

Every tile of a reference scan whose centre falls inside a class contributes its embedding to
that class; the prototype is their mean (or ``centres`` k-means centres, for a class whose look varies), and
patches centred on no selected class make the background prototype. Any ``(K, D)`` matrix of reference vectors
(text embeddings, say) becomes :class:`Prototypes` the same way through :meth:`Prototypes.from_matrix`.

The file (``torch.save``, read back with ``weights_only=True``) carries the model's fingerprint and the
preprocessing and tile settings, so maps are only ever computed with the network and geometry that made the
prototypes.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ctfm.analysis.tiles import TargetCache, world_to_voxel
from ctfm.atomic import write_atomically
from ctfm.embedding_table import model_fingerprint
from ctfm.errors import CTFMError
from ctfm.io.label_maps import read_label_names
from ctfm.io.reader import read_ct, read_label_map
from ctfm.transforms.preprocess import CTPreprocessing

BACKGROUND = "background"
#: Tile size and overlap of prototypes unless asked otherwise: a quarter of the pretraining patch's extent, so
#: tiles are small against the organs they describe, at half overlap.
PATCH_SIZE = (16, 64, 64)
OVERLAP = 0.5


class PrototypeMismatchError(CTFMError, ValueError):
    """Prototypes used with another model, preprocessing or tile size than the ones that made them."""


@dataclass
class Prototypes:
    """Reference vectors ``(rows, D)``; row ``i`` belongs to class ``owner[i]`` of ``class_names`` (background 0).

    ``settings`` are the model fingerprint (``model_sha256``, None for vectors from elsewhere), ``preprocessing``
    (:class:`CTPreprocessing` fields), ``patch_size`` and ``overlap`` the maps must use; ``counts`` the patches
    behind each class; ``class_values`` the label value of each class in the reference label maps they were built
    from (background 0 first; None for vectors from elsewhere), which reference maps scored against pseudo-labels
    are read with.

    Attributes:
        vectors: the reference vectors ``(rows, D)``, D the encoder's width.
        owner: ``(rows,)`` class index of each row.
        class_names: the class names, background first.
        settings: the model fingerprint and the geometry the maps must use.
        counts: patches behind each class.
        class_values: the label value of each class in the reference label maps.
    """

    vectors: torch.Tensor
    owner: torch.Tensor
    class_names: tuple[str, ...]
    settings: dict[str, Any]
    counts: tuple[int, ...] = ()
    class_values: tuple[int, ...] | None = None

    def reference_values(self) -> dict[str, int] | None:
        """``{class name: label value}`` of the reference label maps the prototypes were built from (no
        background), or None when they were not built from label maps."""
        if self.class_values is None:
            return None
        return dict(zip(self.class_names[1:], self.class_values[1:]))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def preprocessing(self) -> CTPreprocessing:
        return CTPreprocessing(**self.settings["preprocessing"])

    @classmethod
    def from_matrix(
        cls,
        vectors: torch.Tensor | np.ndarray,
        class_names: Sequence[str],
        *,
        patch_size: Sequence[int] = PATCH_SIZE,
        overlap: float = OVERLAP,
        preprocessing: CTPreprocessing = CTPreprocessing(),
        model: nn.Module | None = None,
    ) -> Prototypes:
        """One reference vector per class, background first (``len(class_names)`` rows). Without ``model`` the
        vectors are not tied to one network; maps then only check their width."""
        matrix = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
        if matrix.ndim != 2 or len(matrix) != len(class_names):
            raise CTFMError(
                f"reference vectors of shape {tuple(matrix.shape)} for {len(class_names)} class names: "
                "need one row per class, background first"
            )
        windowed = dataclasses.replace(preprocessing, min_size=tuple(int(p) for p in patch_size))
        settings = _settings(model, windowed, patch_size, overlap)
        return cls(matrix, torch.arange(len(class_names)), tuple(class_names), settings)

    def check_compatible(self, settings: Mapping[str, Any], where: str | Path) -> None:
        """Refuse, naming the prototypes file and the first difference, maps made with another model
        (``settings["model_sha256"]``) or another preprocessing, patch size or overlap than the prototypes'."""
        expected = self.settings.get("model_sha256")
        if expected is not None and expected != settings["model_sha256"]:
            raise PrototypeMismatchError(f"{where}: prototypes were made with another model (weights differ)")
        for key in ("patch_size", "overlap", "preprocessing"):
            if _plain(settings[key]) != _plain(self.settings[key]):
                raise PrototypeMismatchError(
                    f"{where}: prototypes were made with {key} {_plain(self.settings[key])}, "
                    f"not {_plain(settings[key])}"
                )

    def save(self, path: str | Path) -> Path:
        document = {
            "vectors": self.vectors.float().contiguous(),
            "owner": self.owner.long(),
            "class_names": list(self.class_names),
            "settings": json.dumps(_plain(self.settings)),
            "counts": list(self.counts),
            "class_values": None if self.class_values is None else list(self.class_values),
        }
        return write_atomically(path, lambda tmp: torch.save(document, tmp))

    @classmethod
    def load(cls, path: str | Path) -> Prototypes:
        path = Path(path)
        try:
            document = torch.load(path, map_location="cpu", weights_only=True)
            values = document.get("class_values")
            return cls(
                document["vectors"], document["owner"], tuple(document["class_names"]),
                json.loads(document["settings"]), tuple(document.get("counts", ())),
                None if values is None else tuple(int(v) for v in values),
            )  # fmt: skip
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
            raise CTFMError(f"{path}: not a prototypes file ({type(err).__name__}: {err})") from err


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so settings compare equal before and after JSON."""
    return json.loads(json.dumps(value))


def _settings(
    model: nn.Module | None, preprocessing: CTPreprocessing, patch_size: Sequence[int], overlap: float
) -> dict[str, Any]:
    return {
        "model_sha256": None if model is None else model_fingerprint(model),
        "preprocessing": _plain(dataclasses.asdict(preprocessing)),
        "patch_size": [int(p) for p in patch_size],
        "overlap": float(overlap),
    }


def resolve_classes(classes: Mapping[int, str] | None, label_maps: Sequence[str | Path]) -> dict[int, str]:
    """The classes to learn: ``classes`` as given, else every named non-zero value of the first map's sidecar."""
    if classes:
        chosen = {int(value): str(name) for value, name in classes.items()}
    else:
        named = read_label_names(label_maps[0]) if label_maps else {}
        if not named:
            raise CTFMError(
                f"{label_maps[0] if label_maps else 'labels'}: no sidecar naming the labels; give --classes 1=name ..."
            )
        chosen = {value: name for value, name in named.items() if value != 0}
    if 0 in chosen:
        raise CTFMError("label 0 is the background; give the other classes")
    if BACKGROUND in chosen.values() or len(set(chosen.values())) != len(chosen):
        raise CTFMError(f"class names must be distinct and not {BACKGROUND!r}: {chosen}")
    return chosen


def centre_classes(patches, labels) -> np.ndarray:
    """The label under each tile centre (nearest voxel of the label map), -1 for a centre outside the map."""
    voxels = np.round(world_to_voxel(labels.affine, patches.centers_mm.numpy())).astype(int)
    array = np.asarray(labels[0])
    inside = np.all((voxels >= 0) & (voxels < array.shape), axis=1)
    out = np.full(len(voxels), -1, dtype=np.int64)
    out[inside] = array[tuple(voxels[inside].T)].astype(np.int64)
    return out


def _centres(vectors: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Mean of ``vectors``, or ``k`` k-means centres (fewer when there are fewer vectors)."""
    if k <= 1 or len(vectors) <= 1:
        return vectors.mean(dim=0, keepdim=True)
    from sklearn.cluster import KMeans

    k = min(k, len(vectors))
    kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(vectors.numpy())
    return torch.as_tensor(kmeans.cluster_centers_, dtype=torch.float32)


def compute_prototypes(
    model: nn.Module,
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    classes: Mapping[int, str] | None = None,
    *,
    patch_size: Sequence[int] = PATCH_SIZE,
    overlap: float = OVERLAP,
    preprocess: CTPreprocessing = CTPreprocessing(),
    centres: int = 1,
    seed: int = 0,
) -> Prototypes:
    """Prototypes of the classes of a few labelled scans, plus the background. See the module docstring.

    Args:
        model: the encoder whose embeddings the prototypes are (maps must later use the same one).
        images: the reference CT scans (paths).
        labels: one label map per image, on its image's grid.
        classes: ``{label value: name}`` of the classes to learn; default every named non-zero value of the first
            label map's ``.json`` sidecar (without one, ``classes`` is required).
        patch_size: the sliding window (z, y, x) in voxels of the preprocessed scan.
        overlap: fraction of a tile shared by its neighbours; more puts more tile centres inside small organs.
        preprocess: the preprocessing of the scans.
        centres: vectors per class: 1 is the mean, more are k-means centres (for a class whose look varies).
        seed: seeds the k-means.

    Returns:
        The prototypes, carrying the model fingerprint and the geometry they were made with.

    Raises:
        CTFMError: images and label maps do not pair up, no classes are given or named, a class has no voxel, or
            no tile centre falls inside a class.
    """
    if len(images) != len(labels) or not images:
        raise CTFMError(f"give one label map per image: {len(images)} images, {len(labels)} label maps")
    chosen = resolve_classes(classes, labels)
    values = list(chosen)
    scans = [read_ct(image, check_hu=preprocess.check_hu) for image in images]
    label_maps = [read_label_map(label, like=scan) for label, scan in zip(labels, scans)]  # grids, before any work
    seen = {value: sum(int((np.asarray(m[0]) == value).sum()) for m in label_maps) for value in values}
    empty = [chosen[value] for value, count in seen.items() if count == 0]
    if empty:
        raise CTFMError(f"no labelled voxel of class {', '.join(empty)} in the reference label maps {list(labels)}")
    cache = TargetCache(model, preprocess, patch_size, overlap, batch_size=8)
    groups: list[list[torch.Tensor]] = [[] for _ in range(len(values) + 1)]
    pairs = list(zip(images, scans, label_maps))
    for image, scan, label_map in tqdm(pairs, desc="prototypes", unit="scan", disable=len(pairs) < 2):
        patches = cache.get(image, cache.preprocess(scan))
        under = centre_classes(patches, label_map)
        groups[0].append(patches.embeddings[(under >= 0) & ~np.isin(under, values)])
        for index, value in enumerate(values, start=1):
            groups[index].append(patches.embeddings[under == value])
        cache.memory.clear()
    names = (BACKGROUND, *chosen.values())
    stacked = [torch.cat(group) for group in groups]
    no_patch = [names[i] for i, group in enumerate(stacked) if len(group) == 0]
    if no_patch:
        raise CTFMError(
            f"no tile centre falls inside class {', '.join(no_patch)}: use a smaller --patch-size, "
            "more --overlap or more reference scans"
        )
    rows = [_centres(group, centres, seed) for group in stacked]
    owner = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r in enumerate(rows)])
    settings = _settings(model, cache.preprocess, cache.patch_size, overlap)
    counts = tuple(len(g) for g in stacked)
    return Prototypes(torch.cat(rows), owner, names, settings, counts, (0, *values))
