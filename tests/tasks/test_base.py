"""Every training task skips non-finite steps, stops after several in a row, and never saves NaN weights."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctfm.tasks import CTFMModule, NonFiniteTrainingError


class _Regression(CTFMModule):
    """Fits a linear map; the loss is NaN at the steps listed in ``nan_at``."""

    def __init__(self, nan_at=(), **kwargs):
        network = torch.nn.Linear(3, 1)
        super().__init__(network=network, optimizer=torch.optim.SGD(network.parameters(), lr=0.1), **kwargs)
        self.nan_at = set(nan_at)
        self.weights_seen = []

    def compute_loss(self, batch):
        self.weights_seen.append(self.network.weight.detach().clone())
        loss = (self.network(batch["x"]) - batch["x"].sum(1, keepdim=True)).pow(2).mean()
        return loss * float("nan") if len(self.weights_seen) - 1 in self.nan_at else loss


def _batches(n):
    x = torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(0))
    return [{"x": x[i], "image": [f"scan{i}a.nii.gz", f"scan{i}b.nii.gz"]} for i in range(n)]


def _fit(module, steps, tmp_path, **trainer):
    loader = DataLoader(_batches(steps), batch_size=None)
    pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **trainer,
    ).fit(module, loader)


def test_a_non_finite_loss_skips_its_step_and_is_counted(tmp_path):
    module = _Regression(nan_at={2})
    _fit(module, 6, tmp_path)
    assert module.skipped_steps == 1
    assert torch.equal(module.weights_seen[2], module.weights_seen[3])  # no update from the NaN step
    assert not torch.equal(module.weights_seen[3], module.weights_seen[4])  # training went on
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_several_non_finite_losses_in_a_row_stop_the_run_naming_step_and_scans(tmp_path):
    module = _Regression(nan_at={1, 2, 3}, nonfinite_patience=3)
    message = r"3 steps in a row, the last at step 3 \(scans: scan3a.nii.gz, scan3b.nii.gz\)"
    with pytest.raises(NonFiniteTrainingError, match=message):
        _fit(module, 6, tmp_path)


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    module = _Regression()
    with torch.no_grad():
        module.network.weight[0, 1] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match=r"1 tensors hold NaN or inf \(network.weight\)"):
        module.on_save_checkpoint({"state_dict": module.state_dict()})


class _Normalised(CTFMModule):
    """Linear -> BatchNorm; records the buffers before each step. Batch ``nan_at`` holds a NaN input."""

    def __init__(self, nan_at):
        network = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        super().__init__(network=network, optimizer=torch.optim.SGD(network.parameters(), lr=0.1))
        self.nan_at = nan_at
        self.buffers_seen = []

    def compute_loss(self, batch):
        self.buffers_seen.append({name: b.detach().clone() for name, b in self.network.named_buffers()})
        x = batch["x"]
        if len(self.buffers_seen) - 1 == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        return self.network(x).pow(2).mean()


def test_a_skipped_step_leaves_batchnorm_statistics_as_they_were(tmp_path):
    """The NaN batch's forward pass updated the running statistics; skipping the step puts them back."""
    module = _Normalised(nan_at=2)
    _fit(module, 5, tmp_path)
    assert module.skipped_steps == 1
    before, after = module.buffers_seen[2], module.buffers_seen[3]
    assert set(before) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    for name in before:
        assert torch.isfinite(after[name].float()).all() and torch.equal(before[name], after[name]), name
    assert not torch.equal(module.buffers_seen[3]["1.running_mean"], module.buffers_seen[4]["1.running_mean"])
    module.on_save_checkpoint({"state_dict": module.state_dict()})  # finite, so the checkpoint is written
