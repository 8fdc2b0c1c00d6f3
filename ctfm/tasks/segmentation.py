"""Segmentation fine-tuning: a SegResNetDS whose encoder starts from CT-FM, as in the paper's recipes.

Training sees random patches and deep supervision (DiceCE with softmax on every decoder level); validation, test
and predict see whole preprocessed scans through a Gaussian sliding window (overlap 0.625, the published setting).
Dice is logged per class under the class's name and as the macro mean over the foreground classes. Predictions
are put back on each input's own grid by the data module's ``invert`` (``monai.transforms.Invertd``) and written
as ``<output_dir>/predictions/<image_id>.nii.gz`` with the class names in a JSON sidecar, or, with
``output_type="dicom-seg"`` and a DICOM series input, as ``<image_id>.seg.dcm``, a DICOM SEG of that series.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric, compute_average_surface_distance
from monai.networks.utils import one_hot
from torch import nn

from ctfm.atomic import write_atomically
from ctfm.errors import InvalidScanError
from ctfm.hub.safe_config import CLASS_NAMES_CHECKPOINT_KEY
from ctfm.io.dicom_seg import OutputType, check_output_type, write_dicom_seg
from ctfm.io.label_maps import write_label_map
from ctfm.losses.segmentation import deep_supervision_dice_ce
from ctfm.tasks.finetune import FineTuneModule

logger = logging.getLogger(__name__)

#: The published sliding-window overlap of every CT-FM segmentation setting.
SW_OVERLAP = 0.625


class SegmentationModule(FineTuneModule):
    """SegResNetDS fine-tuning with the published loss, inference and metrics.

    Args:
        network: a SegResNetDS (``ctfm.nn.ct_fm_segresnet``) with one output channel per class, background first.
        class_names: names of the output channels, background first (logged Dice uses them).
        roi_size: the sliding window (z, y, x) of validation, test and predict; the training patch is usual.
        sw_batch_size: sliding-window crops (``roi_size``) per forward pass during inference.
        overlap: sliding-window overlap (published: 0.625), Gaussian blending.
        output_dir: predictions go to ``<output_dir>/predictions``, per-case metrics to
            ``<output_dir>/<stage>_cases.csv``.
        surface_distance: also compute each case's average surface distance in mm (``monai.metrics``, with the
            scan's voxel spacing) for the per-case CSV (the MSD tumour recipe); costs a distance transform per class.
        weights: see :class:`~ctfm.tasks.finetune.FineTuneModule`.
        freeze_encoder: see :class:`~ctfm.tasks.finetune.FineTuneModule`.
        output_type: ``"dicom-seg"`` writes the prediction of a DICOM series input as a DICOM SEG of it (override
            ``model::output_type=dicom-seg``); other inputs, and maps a SEG cannot hold, stay NIfTI with a warning.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
        criterion: the training loss; default DiceCE over every deep-supervision level
            (:func:`ctfm.losses.deep_supervision_dice_ce`).
    """

    def __init__(
        self,
        network: nn.Module,
        class_names: Sequence[str],
        roi_size: Sequence[int],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        criterion: Callable[..., torch.Tensor] | None = None,
        sw_batch_size: int = 2,
        overlap: float = SW_OVERLAP,
        output_dir: str | Path | None = None,
        surface_distance: bool = False,
        weights: str | None = None,
        freeze_encoder: bool | int = False,
        output_type: OutputType = "nifti",
    ):
        check_output_type(output_type)
        super().__init__(
            network=network,
            criterion=criterion or deep_supervision_dice_ce(),
            optimizer=optimizer,
            scheduler=scheduler,
            weights=weights,
            freeze_encoder=freeze_encoder,
        )
        self.class_names = tuple(class_names)
        out_channels = getattr(network, "out_channels", len(self.class_names))
        if out_channels != len(self.class_names):
            raise ValueError(
                f"the network has {out_channels} output channels but {len(self.class_names)} class names are given "
                "(background first)"
            )
        self.inferer = SlidingWindowInferer(
            roi_size=tuple(roi_size),
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode="gaussian",
            # Whole-scan validation can take minutes per scan on a CPU: show its progress.
            progress=True,
        )
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.output_type = output_type
        self.dice = {stage: DiceMetric(include_background=False, reduction="none") for stage in ("val", "test")}
        self.surface_distance = surface_distance
        self.case_rows: list[dict[str, Any]] = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CLASS_NAMES_CHECKPOINT_KEY] = list(self.class_names)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        outputs = self.network(batch["image"])
        return self.criterion(outputs, batch["label"])

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Label map ``(B, 1, z, y, x)`` of whole preprocessed scans by Gaussian sliding window, softmax, argmax."""
        logits = self.inferer(image, self.network)
        if isinstance(logits, (list, tuple)):  # a network left in training mode returns every level
            logits = logits[0]
        assert isinstance(logits, torch.Tensor)  # SegResNetDS returns no dict
        return torch.softmax(logits.float(), dim=1).argmax(dim=1, keepdim=True)

    def _evaluate(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        self._batch_size = self.batch_size_of(batch)
        labels = self.infer(batch["image"])
        classes = len(self.class_names)
        pred, truth = one_hot(labels, classes), one_hot(batch["label"].long(), classes)
        scores = self.dice[stage](pred, truth)
        assert isinstance(scores, torch.Tensor)  # MONAI's declared union; one tensor for tensor inputs
        spacings = batch["image"].pixdim if isinstance(batch["image"], MetaTensor) else None
        for index, name in enumerate(_image_ids(batch)):
            row: dict[str, Any] = {"image_id": name}
            for class_name, value in zip(self.class_names[1:], scores[index].tolist(), strict=True):
                row[f"{class_name}_dice"] = value
            if self.surface_distance:
                spacing = None if spacings is None else _spacing_of(spacings, index)
                distances = compute_average_surface_distance(
                    pred[index : index + 1], truth[index : index + 1], symmetric=True, spacing=spacing
                )[0]
                for class_name, value in zip(self.class_names[1:], distances.tolist(), strict=True):
                    row[f"{class_name}_asd_mm"] = value
            self.case_rows.append(row)
        return {"pred": labels}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test")

    def _log_dice(self, stage: str) -> dict[str, float]:
        """Per-class and macro Dice over the cases of the epoch (classes absent from a case do not count there)."""
        scores = self.dice[stage].aggregate()  # (cases, classes - 1), NaN where a class is absent from the truth
        assert isinstance(scores, torch.Tensor)  # reduction "none" aggregates to one tensor
        self.dice[stage].reset()
        per_class = torch.nanmean(scores.float(), dim=0) if scores.numel() else torch.empty(0)
        logged = {}
        for name, value in zip(self.class_names[1:], per_class.tolist(), strict=True):
            if not math.isnan(value):
                logged[f"{stage}/dice/{name}"] = value
        present = [v for v in per_class.tolist() if not math.isnan(v)]
        logged[f"{stage}/dice/macro"] = float(np.mean(present)) if present else float("nan")
        for key, value in logged.items():
            self.log(key, value, on_epoch=True, batch_size=1, sync_dist=True)
        return logged

    def _write_cases(self, stage: str) -> None:
        """``<output_dir>/<stage>_cases.csv``: one row per case and a last row ``mean`` (NaN-aware means)."""
        rows, self.case_rows = self.case_rows, []
        if self.output_dir is None or not rows or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        import pandas as pd

        frame = pd.DataFrame(rows)
        means = frame.drop(columns="image_id").mean(skipna=True)
        frame = pd.concat([frame, pd.DataFrame([{"image_id": "mean", **means.to_dict()}])], ignore_index=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.output_dir / f"{stage}_cases.csv", lambda tmp: frame.to_csv(tmp, index=False))

    def on_validation_epoch_end(self) -> None:
        self._log_dice("val")
        self._write_cases("val")

    def on_test_epoch_end(self) -> None:
        self._log_dice("test")
        self._write_cases("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Path]:
        """Segment, put each label map back on its input's grid, and write it; returns the files written."""
        labels = self.infer(batch["image"])
        written = []
        invert = getattr(self.trainer.datamodule, "invert", None)
        for item, name in zip(decollate_batch({**batch, "pred": labels}), _image_ids(batch), strict=True):
            pred = item["pred"]
            if invert is not None:
                pred = invert(item)
            if self.output_dir is None:
                continue
            affine = pred.affine if isinstance(pred, MetaTensor) else torch.eye(4)
            array, matrix = pred[0].cpu().numpy(), affine.cpu().numpy()
            if self.output_type == "dicom-seg":
                seg = self._write_seg(pred, array, matrix, self.output_dir / "predictions" / f"{name}.seg.dcm")
                if seg is not None:
                    written.append(seg)
                    continue
            target = self.output_dir / "predictions" / f"{name}.nii.gz"
            written.append(write_label_map(array, matrix, target, self.class_names))
        return written

    def _write_seg(self, pred: Any, array: np.ndarray, affine: np.ndarray, target: Path) -> Path | None:
        """The DICOM SEG of a DICOM series input, else None (the caller writes NIfTI) after a warning saying why."""
        source = Path(str(pred.meta.get("filename_or_obj", ""))) if isinstance(pred, MetaTensor) else None
        if source is None or not source.is_dir():
            logger.warning("%s: not a DICOM series folder, its prediction is written as NIfTI", source)
            return None
        try:
            return write_dicom_seg(array.astype(np.int64), source, self.class_names, target, affine=affine,
                                   algorithm_name=type(self.network).__name__)  # fmt: skip
        except InvalidScanError as err:
            logger.warning("%s; its prediction is written as NIfTI", err)
            return None


def _spacing_of(pixdim: Any, index: int) -> list[float]:
    """Voxel spacing of item ``index`` of a batch's ``MetaTensor.pixdim`` (a list per item, or one tensor)."""
    value = pixdim[index] if isinstance(pixdim, (list, tuple)) else pixdim
    return [float(v) for v in torch.as_tensor(value).reshape(-1)[:3]]


def _image_ids(batch: dict[str, Any]) -> list[str]:
    """The ``image_id`` of each item (the data modules add it), else the scan's file name."""
    ids = batch.get("image_id")
    if ids is not None:
        return [str(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
    image = batch["image"]
    names = image.meta.get("filename_or_obj", []) if isinstance(image, MetaTensor) else []
    names = names if isinstance(names, (list, tuple)) else [names]
    return [Path(str(n)).name.split(".")[0] for n in names] or [str(i) for i in range(len(image))]
