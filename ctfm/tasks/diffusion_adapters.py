"""LCTfound's label-efficient adapters on a frozen pretrained denoiser, as Lighter modules, for 2D and 3D alike.

- Segmentation: decoder activations at several timesteps (one fixed noise) feed a per-pixel/voxel MLP
  (:class:`~ctfm.nn.diffusion.features.PixelMLP`) trained with cross-entropy + focal loss. With
  ``pixels_per_image`` the loss sees that many random pixels (voxels) per crop, and their features are
  interpolated from each decoder block's own map (:meth:`DiffusionFeatures.at_points`), so memory stays bounded
  by the denoiser's activations rather than channels x voxels. Validation and test slide over whole scans (axial
  slices in 2D, patches in 3D) and log Dice per case (``monai.metrics.DiceMetric``), one row a scan in
  ``<output_dir>/<stage>_cases.csv``; a 2D case is the stack of its slices.
- Classification: bottleneck activations at several timesteps feed a conv + global pooling + MLP head
  (:class:`~ctfm.nn.diffusion.features.BottleneckClassifier`), BCE for two classes, CE for more; AUROC per case
  (torchmetrics): in 2D a case's score is the mean of its slices' scores, in 3D it is its centre patch's score.

Only the head trains: the network is a :class:`~ctfm.nn.diffusion.adapter.FrozenDiffusionAdapter`, whose denoiser
the recipe loads from a pretraining checkpoint with :func:`ctfm.hub.checkpoint.pretrained_denoiser` (a checkpoint of
another dimension than ``spatial_dims`` is refused when the recipe is built); it stays frozen and in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from torch import nn

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError
from ctfm.losses.segmentation import CrossEntropyFocalLoss
from ctfm.nn.diffusion.adapter import FrozenDiffusionAdapter
from ctfm.tasks.base import CTFMModule, expect_frozen_modules_in_eval
from ctfm.tasks.classification import ClassLogits, classification_metrics


def dice_per_case(labels: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each foreground class of one case, ``(num_classes - 1,)``; NaN where the class is absent from truth.

    ``labels`` and ``truth`` are integer maps of one case (any shape: a volume, or a 2D case's stacked slices).
    """
    pred = one_hot(labels.reshape(1, 1, -1).long(), num_classes)
    target = one_hot(truth.reshape(1, 1, -1).long(), num_classes)
    scores = DiceMetric(include_background=False, reduction="none")(pred, target)
    assert isinstance(scores, torch.Tensor)  # MONAI's declared union; one tensor for tensor inputs
    return scores[0]


def _stack_slices(volume: torch.Tensor) -> torch.Tensor:
    """``(1, C, z, y, x)`` -> ``(z, C, y, x)``: the axial slices of one scan as a batch of 2D images."""
    return volume[0].transpose(0, 1)


class _AdapterModule(CTFMModule):
    """What both adapters share: a frozen-feature network, its data checked at set-up, per-case CSV rows."""

    def __init__(
        self,
        network: FrozenDiffusionAdapter,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        output_dir: str | Path | None,
        **kwargs: Any,
    ):
        super().__init__(network=network, criterion=criterion, optimizer=optimizer, scheduler=scheduler, **kwargs)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.case_rows: list[dict[str, Any]] = []

    @property
    def spatial_dims(self) -> int:
        return self.network.spatial_dims

    def setup(self, stage: str) -> None:
        expect_frozen_modules_in_eval()
        data = getattr(self.trainer, "datamodule", None)
        if data is None:
            return
        if getattr(data, "spatial_dims", self.spatial_dims) != self.spatial_dims:
            raise CTFMError(f"the data are {data.spatial_dims}D but the pretrained denoiser is {self.spatial_dims}D")
        window = getattr(data, "window", None)
        if window is not None and tuple(window) != tuple(self.network.window):
            raise CTFMError(
                f"the data are windowed at {tuple(window)} but the adapter reads the denoiser at "
                f"{tuple(self.network.window)}; give both the same vars::window"
            )
        size = getattr(data, "image_size", None)
        step = self.network.features.network.downsampling
        if size is not None and any(s % step for s in size):
            raise CTFMError(f"image_size {list(size)}: each size must be a multiple of {step} for this denoiser")

    def write_cases(self, stage: str) -> Path | None:
        """``<output_dir>/<stage>_cases.csv``: one row per case, then a ``mean`` row (NaN-aware)."""
        rows, self.case_rows = self.case_rows, []
        if self.output_dir is None or not rows or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return None
        import pandas as pd

        frame = pd.DataFrame(rows)
        means = frame.drop(columns=["case_id", "label"], errors="ignore").mean(skipna=True, numeric_only=True)
        frame = pd.concat([frame, pd.DataFrame([{"case_id": "mean", **means.to_dict()}])], ignore_index=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return write_atomically(self.output_dir / f"{stage}_cases.csv", lambda tmp: frame.to_csv(tmp, index=False))


class DiffusionSegmentationAdapter(_AdapterModule):
    """Per-pixel/voxel classifier on a frozen denoiser's decoder features (LCTfound's segmentation adapter).

    Batches: training ``{"image": (B, 1, *image_size) in [-1, 1], "label": (B, 1, *image_size)}``; validation and
    test one whole windowed scan ``(1, 1, z, y, x)`` with its label map and ``case_id``.

    Args:
        network: :func:`~ctfm.nn.diffusion.adapter.segmentation_adapter`.
        class_names: names of the output channels, background first (default ``class_1 ...``).
        pixels_per_image: pixels (2D) or voxels (3D) per training crop that the loss sees; None = all.
        roi_size: the sliding window over whole scans (the training crop size), one value per spatial dimension.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
        focal_weight: the loss is CE + focal_weight x focal.
        focal_gamma: the focal loss's focusing exponent.
        sw_batch_size: sliding-window crops (``roi_size``) per forward pass over a whole scan.
        overlap: the sliding window's overlap, Gaussian blending.
        output_dir: where ``<stage>_cases.csv`` goes; None writes none.
    """

    def __init__(
        self,
        network: FrozenDiffusionAdapter,
        roi_size: Sequence[int],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        class_names: Sequence[str] | None = None,
        pixels_per_image: int | None = 4096,
        focal_weight: float = 1.0,
        focal_gamma: float = 2.0,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        output_dir: str | Path | None = None,
    ):
        super().__init__(network, CrossEntropyFocalLoss(focal_weight, focal_gamma), optimizer, scheduler, output_dir)
        classes = network.num_classes
        default = ("background", *(f"class_{c}" for c in range(1, classes)))
        self.class_names = tuple(class_names) if class_names else default
        if len(self.class_names) != classes:
            raise CTFMError(f"{len(self.class_names)} class names for a head of {classes} classes (background first)")
        if len(roi_size) != network.spatial_dims:
            raise CTFMError(f"roi_size {list(roi_size)} does not have {network.spatial_dims} values")
        if pixels_per_image is not None and pixels_per_image < 1:
            raise ValueError(f"pixels_per_image must be at least 1 or None, got {pixels_per_image}")
        self.pixels_per_image = pixels_per_image
        self.inferer = SlidingWindowInferer(
            roi_size=tuple(roi_size),
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode="gaussian",
            # Whole-scan validation can take minutes per scan on a CPU: show its progress.
            progress=True,
        )
        self.scores: list[torch.Tensor] = []

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        images, labels = _plain(batch["image"]), _plain(batch["label"])[:, 0]
        if self.pixels_per_image is None:
            return self.criterion(self.network(images), labels)
        spatial = images.shape[2:]
        n, count = images.shape[0], self.pixels_per_image
        points = torch.stack([torch.randint(0, s, (n, count), device=images.device) for s in spatial], dim=-1)
        features = self.network.features.at_points(images, points, self.network.windows(images))
        logits = self.network.head(features)  # (N, K, P)
        flat = labels.reshape(n, -1)
        strides = torch.tensor([int(np.prod(spatial[d + 1 :])) for d in range(len(spatial))], device=points.device)
        index = (points * strides).sum(dim=-1)  # each point's offset in the flattened label map
        return self.criterion(logits, flat.gather(1, index))

    @torch.no_grad()
    def infer(self, volume: torch.Tensor) -> torch.Tensor:
        """Label map ``(1, 1, z, y, x)`` of one windowed scan: a sliding window over its slices (2D) or itself."""
        volume = _plain(volume)
        logits = self.inferer(volume if self.spatial_dims == 3 else _stack_slices(volume), self.network)
        assert isinstance(logits, torch.Tensor)  # the adapter returns one tensor, so the inferer does too
        labels = logits.argmax(dim=1, keepdim=True)
        return labels if self.spatial_dims == 3 else labels.transpose(0, 1)[None]  # 2D: (z, 1, y, x) -> (1, 1, z, y, x)

    def _evaluate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self._batch_size = 1
        labels = self.infer(batch["image"])
        dice = dice_per_case(labels, _plain(batch["label"]), len(self.class_names))
        self.scores.append(dice.cpu())
        row: dict[str, Any] = {"case_id": _case_ids(batch)[0]}
        row.update({f"{name}_dice": float(v) for name, v in zip(self.class_names[1:], dice.tolist(), strict=True)})
        self.case_rows.append(row)
        return {"pred": labels}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch)

    def _log_dice(self, stage: str) -> None:
        """Per-class Dice (mean over the cases holding the class) and their macro mean."""
        scores, self.scores = self.scores, []
        if not scores:
            return
        per_class = torch.nanmean(torch.stack(scores).float(), dim=0).tolist()
        present = [v for v in per_class if not math.isnan(v)]
        logged = {f"{stage}/dice/{n}": v for n, v in zip(self.class_names[1:], per_class) if not math.isnan(v)}
        logged[f"{stage}/dice/macro"] = float(np.mean(present)) if present else float("nan")
        for key, value in logged.items():
            self.log(key, value, on_epoch=True, batch_size=1, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_dice("val")
        self.write_cases("val")

    def on_test_epoch_end(self) -> None:
        self._log_dice("test")
        self.write_cases("test")


class DiffusionClassificationAdapter(ClassLogits, _AdapterModule):
    """Scan classification on a frozen denoiser's bottleneck features (LCTfound's classification adapter).

    Batches: training ``{"image": (B, 1, *image_size), "label": (B,)}``; validation and test one scan each, its
    centre ``(1, 1, z, y, x)``, scored slice by slice (``eval_batch_size`` slices a pass, scores averaged) in 2D and
    as one patch in 3D. AUROC, F1, accuracy, sensitivity and specificity are over cases; ``lighter test`` writes
    ``<output_dir>/test_cases.csv`` (case_id, probability or probability_<c>, label).

    Args:
        network: :func:`~ctfm.nn.diffusion.adapter.classification_adapter`.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
        eval_batch_size: slices per forward pass when a 2D case is scored.
        output_dir: where ``<stage>_cases.csv`` goes; None writes none.
    """

    def __init__(
        self,
        network: FrozenDiffusionAdapter,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        eval_batch_size: int = 16,
        output_dir: str | Path | None = None,
    ):
        classes = network.num_classes
        criterion = nn.BCEWithLogitsLoss() if classes == 1 else nn.CrossEntropyLoss()
        super().__init__(
            network,
            criterion,
            optimizer,
            scheduler,
            output_dir,
            val_metrics=classification_metrics(classes),
            test_metrics=classification_metrics(classes),
        )
        self.num_classes = classes
        self.eval_batch_size = eval_batch_size

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_of(self.network(_plain(batch["image"])), torch.as_tensor(batch["label"]))

    @torch.no_grad()
    def case_score(self, volume: torch.Tensor) -> torch.Tensor:
        """The case's probability (binary, ``()``) or class scores ``(C,)``: the mean over its slices in 2D."""
        volume = _plain(volume)
        if self.spatial_dims == 3:
            return self.probabilities(self.network(volume).float())[0]
        slices = _stack_slices(volume)
        scores = [self.probabilities(self.network(part).float()) for part in slices.split(self.eval_batch_size)]
        return torch.cat(scores).mean(dim=0)

    def _evaluate(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        self._batch_size = 1
        score = self.case_score(batch["image"])
        label = torch.as_tensor(batch["label"], device=score.device).reshape(1).long()
        getattr(self, f"{stage}_metrics").update(score[None], label)
        row: dict[str, Any] = {"case_id": _case_ids(batch)[0]}
        if self.num_classes == 1:
            row["probability"] = float(score)
        else:
            row.update({f"probability_{c}": float(p) for c, p in enumerate(score.tolist())})
        row["label"] = int(label)
        self.case_rows.append(row)
        return {"pred": score}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test")

    def _log_metrics(self) -> None:
        """Epoch values only: AUROC over the cases of one batch means nothing."""
        metrics = getattr(self, f"{self.mode}_metrics", None)
        if metrics is None:
            return
        for name, metric in metrics.items():
            self._log(f"{self.mode}/metrics/{name}", metric, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.write_cases("val")

    def on_test_epoch_end(self) -> None:
        self.write_cases("test")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        expected = getattr(getattr(self.trainer, "datamodule", None), "num_outputs", None)
        if expected is not None and expected != self.num_classes:
            raise CTFMError(
                f"the datalist's labels need {expected} output(s) but the head has {self.num_classes}; "
                f"set vars::num_classes={expected}"
            )


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MetaTensor as a plain tensor (no metadata through the network or into metric states)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _case_ids(batch: dict[str, Any]) -> list[str]:
    ids = batch.get("case_id", ["case"])
    return [str(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
