"""Whole-scan classification as a Lighter module: fine-tune (or probe) the CT-FM encoder with a small head.

One logit with BCE-with-logits for a binary task, cross-entropy for more classes. Validation and test log AUROC,
F1, accuracy, sensitivity and specificity (torchmetrics) once per epoch; ``lighter test`` and ``lighter predict``
write ``<output_dir>/predictions.csv`` with each scan's probability (or class scores), prediction and known label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from torch import nn
from torchmetrics import AUROC, Accuracy, F1Score, MetricCollection, Recall, Specificity

from ctfm.atomic import write_atomically
from ctfm.data.datalist import UNKNOWN_LABEL
from ctfm.errors import CTFMError
from ctfm.tasks.finetune import FineTuneModule

PREDICTIONS_NAME = "predictions.csv"


def classification_metrics(num_classes: int) -> MetricCollection:
    """AUROC, F1, accuracy, sensitivity and specificity; binary on probabilities, else macro one-vs-rest."""
    if num_classes == 1:
        kwargs: dict[str, Any] = {"task": "binary"}
    else:
        kwargs = {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
    return MetricCollection(
        {
            "AUROC": AUROC(**kwargs),
            "F1": F1Score(**kwargs),
            "Accuracy": Accuracy(**kwargs),
            "Sensitivity": Recall(**kwargs),
            "Specificity": Specificity(**kwargs),
        }
    )


class ClassLogits:
    """Scores and loss of ``num_classes`` logits: one logit (sigmoid, BCE) for two classes, else softmax and CE."""

    num_classes: int
    criterion: Any

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B,)`` probabilities of the positive class (binary) or ``(B, C)`` softmax scores."""
        return torch.sigmoid(logits[:, 0]) if self.num_classes == 1 else torch.softmax(logits, dim=1)

    def loss_of(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 1:
            return self.criterion(logits[:, 0], labels.float())
        return self.criterion(logits, labels.long())


class ScanClassification(ClassLogits, FineTuneModule):
    """Classification of whole scans; ``network`` maps ``(B, 1, z, y, x)`` to ``(B, num_classes)`` logits.

    Batches are dicts with ``image`` (tensor), ``label`` (``UNKNOWN_LABEL`` when unknown) and ``path`` (source
    scans). The criterion follows the number of outputs unless given. ``weights`` and ``freeze_encoder`` are
    :class:`~ctfm.tasks.finetune.FineTuneModule`'s. ``output_dir`` is where ``predictions.csv`` goes.

    Args:
        network: a ``ctfm.nn.ScanClassifier`` (encoder + head), one output for two classes, else one per class.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
        criterion: the loss; default BCE with logits for one output, cross-entropy for more.
        weights: see :class:`~ctfm.tasks.finetune.FineTuneModule`.
        freeze_encoder: see :class:`~ctfm.tasks.finetune.FineTuneModule`.
        output_dir: where ``lighter predict`` writes ``predictions.csv`` and ``lighter test`` the per-case table.
        scheduler_interval: ``"epoch"`` or ``"step"``, how often the scheduler steps.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        criterion: nn.Module | None = None,
        weights: str | None = None,
        freeze_encoder: bool | int = False,
        output_dir: str | Path = ".",
        scheduler_interval: str = "epoch",
    ):
        num_classes = _outputs_of(network)
        if criterion is None:
            criterion = nn.BCEWithLogitsLoss() if num_classes == 1 else nn.CrossEntropyLoss()
        super().__init__(
            network=network,
            criterion=criterion,
            optimizer=optimizer,
            scheduler=scheduler,
            val_metrics=classification_metrics(num_classes),
            test_metrics=classification_metrics(num_classes),
            weights=weights,
            freeze_encoder=freeze_encoder,
        )
        self.num_classes = num_classes
        self.output_dir = Path(output_dir)
        self.scheduler_interval = scheduler_interval
        self._predictions: list[dict[str, Any]] = []

    # ---- steps
    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The network's output on the batch's images, as a plain tensor (no MetaTensor meta in metric states)."""
        image = batch["image"]
        return self.network(image.as_tensor() if isinstance(image, MetaTensor) else image)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_of(self.logits(batch), torch.as_tensor(batch["label"]))

    def _evaluate(
        self, batch: dict[str, Any], metrics: MetricCollection | None, keep: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(loss over the known labels, None when none is known; probabilities); metrics updated over the known
        labels only, rows kept for the CSV."""
        self._batch_size = self.batch_size_of(batch)
        logits = self.logits(batch)
        labels = torch.as_tensor(batch["label"], device=logits.device)
        probabilities = self.probabilities(logits.float())
        if keep:
            self._keep(batch, probabilities, labels)
        known = labels != UNKNOWN_LABEL
        if not bool(known.any()):
            return None, probabilities
        if metrics is not None:
            metrics.update(probabilities[known], labels[known].long())
        return self.loss_of(logits[known], labels[known]), probabilities

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self._evaluate(batch, self.val_metrics, keep=False)[0]

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self._evaluate(batch, self.test_metrics, keep=True)[0]

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._evaluate(batch, None, keep=True)[1]

    # ---- logging and outputs
    def _log_metrics(self) -> None:
        """Epoch values only: AUROC of one batch (often a single class) means nothing."""
        metrics = getattr(self, f"{self.mode}_metrics", None)
        if metrics is None:
            return
        for name, metric in metrics.items():
            self._log(f"{self.mode}/metrics/{name}", metric, on_epoch=True, sync_dist=True)

    def _on_batch_end(self, outputs: Any, batch_idx: int) -> None:
        if outputs is not None:  # an unlabelled batch has no loss, but its metrics still log
            super()._on_batch_end(outputs, batch_idx)

    def _keep(self, batch: dict[str, Any], probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        paths = batch.get("path") or [""] * len(labels)
        scores = probabilities.detach().cpu()
        for index, (path, label) in enumerate(zip(paths, labels.cpu().tolist(), strict=True)):
            row: dict[str, Any] = {"image": str(path)}
            if self.num_classes == 1:
                row["probability"] = float(scores[index])
                row["prediction"] = int(scores[index] >= 0.5)
            else:
                row.update({f"probability_{c}": float(p) for c, p in enumerate(scores[index].tolist())})
                row["prediction"] = int(scores[index].argmax())
            row["label"] = None if label == UNKNOWN_LABEL else int(label)
            self._predictions.append(row)

    def on_test_epoch_start(self) -> None:
        self._predictions = []

    on_predict_epoch_start = on_test_epoch_start

    def on_test_epoch_end(self) -> None:
        self.write_predictions()

    def on_predict_epoch_end(self) -> None:
        self.write_predictions()

    def write_predictions(self) -> Path:
        """``<output_dir>/predictions.csv`` (image, probability or probability_<c>, prediction, label), atomically.

        Under DDP each rank writes ``predictions.rank<N>.csv`` with its own scans.
        """
        import pandas as pd

        rank = self.global_rank if self._trainer is not None else 0
        world = self.trainer.world_size if self._trainer is not None else 1
        name = PREDICTIONS_NAME if world == 1 else f"predictions.rank{rank}.csv"
        frame = pd.DataFrame(self._predictions)
        if "label" in frame and frame["label"].isna().all():
            frame = frame.drop(columns="label")
        path = write_atomically(self.output_dir / name, lambda tmp: frame.to_csv(tmp, index=False))
        self.print(f"wrote {len(frame)} predictions to {path}")
        return path

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        expected = getattr(data, "num_outputs", None)
        if expected is not None and expected != self.num_classes:
            raise CTFMError(
                f"the datalist's labels need {expected} output(s) ({getattr(data, 'describe_labels', '')}) but the "
                f"network has {self.num_classes}; set vars::num_classes={expected}"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        config = super().configure_optimizers()
        if self.scheduler is not None:
            config["lr_scheduler"] = {"scheduler": self.scheduler, "interval": self.scheduler_interval}
        return config


def _outputs_of(network: nn.Module) -> int:
    """The number of outputs of ``network``: its ``num_classes``, else the last Linear layer's width."""
    num_classes = getattr(network, "num_classes", None)
    if num_classes is not None:
        return int(num_classes)
    linear = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"cannot tell how many outputs {type(network).__name__} has: give it a num_classes")
    return linear[-1].out_features
