"""An interrupted fit (Ctrl-C, a scheduler's SIGTERM) leaves checkpoints/interrupted.ckpt, and a fit resumes from it;
a new fit never mixes its checkpoints into an earlier run's folder."""

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from interrupting import Interrupt
from pytorch_lightning.callbacks import ModelCheckpoint
from recipe_runner import fit_tiny
from torch.utils.data import DataLoader

from ctfm.outputs import OutputExistsError
from ctfm.tasks import CTFMModule
from ctfm.tasks.callbacks import FreshCheckpointFolder, InterruptedCheckpoint


class _Regression(CTFMModule):
    def __init__(self):
        network = torch.nn.Linear(3, 1)
        super().__init__(network=network, optimizer=torch.optim.SGD(network.parameters(), lr=0.1))
        self.steps_started = []

    def compute_loss(self, batch):
        self.steps_started.append(self.global_step)
        return (self.network(batch["x"]) - batch["x"].sum(1, keepdim=True)).pow(2).mean()


def _trainer(tmp_path, *callbacks, max_steps=6):
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[
            ModelCheckpoint(dirpath=tmp_path / "checkpoints"),
            InterruptedCheckpoint(),
            FreshCheckpointFolder(),
            *callbacks,
        ],
    )


def _loader():
    x = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(0))
    return DataLoader([{"x": x[i]} for i in range(8)], batch_size=None)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_fit_saves_a_checkpoint_that_resumes_at_its_step(tmp_path, how, capsys):
    module = _Regression()
    with pytest.raises(SystemExit):  # Lightning exits after Ctrl-C; SIGTERM ends the fit with SIGTERMException
        _trainer(tmp_path, Interrupt(3, how)).fit(module, _loader())
    saved = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert saved.is_file() and not list(saved.parent.glob(".*partial"))
    message = capsys.readouterr().err
    assert f"at step 3 (epoch 0): saved {saved}" in message and f"--ckpt_path {saved}" in message
    checkpoint = torch.load(saved, weights_only=False)
    assert checkpoint["global_step"] == 3
    torch.testing.assert_close(checkpoint["state_dict"]["network.weight"], module.network.weight.detach())

    resumed = _Regression()
    _trainer(tmp_path, max_steps=6).fit(resumed, _loader(), ckpt_path=str(saved))
    assert resumed.steps_started == [3, 4, 5]  # continues at step 3, not from scratch
    assert resumed.global_step == 6


def test_an_interruption_before_the_first_step_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _trainer(tmp_path, Interrupt(None, "ctrl-c")).fit(_Regression(), _loader())
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()
    assert "Ctrl-C: stopped before the first training step; no checkpoint to resume from" in capsys.readouterr().err


def test_a_new_fit_into_an_earlier_runs_checkpoint_folder_stops_and_leaves_it_alone(tmp_path):
    _trainer(tmp_path, max_steps=2).fit(_Regression(), _loader())
    earlier = {path.name: path.read_bytes() for path in (tmp_path / "checkpoints").iterdir()}
    assert earlier  # Lightning would write the second run's files as *-v1.ckpt beside these

    with pytest.raises(
        OutputExistsError, match=r"holds checkpoints of an earlier run \(.*\.ckpt\); resume it with"
    ) as raised:
        _trainer(tmp_path, max_steps=4).fit(_Regression(), _loader())
    suggested = str(raised.value).split("--ckpt_path ")[1].split(",")[0]
    assert Path(suggested).is_file()  # no last.ckpt here: the newest checkpoint is offered instead
    assert {path.name: path.read_bytes() for path in (tmp_path / "checkpoints").iterdir()} == earlier


@pytest.mark.slow
def test_the_recipes_trainer_writes_it_on_sigterm(tmp_path):
    """The shared trainer piece has the callback: a tiny pretraining fit stopped by SIGTERM resumes from it."""
    from ctfm.data.sample import make_sample_dataset
    from ctfm.hub.checkpoint import read_checkpoint

    datalist = make_sample_dataset(tmp_path / "data", n_scans=2, shape=(24, 80, 80), seed=0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stop = "trainer::callbacks=[{_target_: interrupting.Interrupt, at: 1, how: sigterm}]"
    with pytest.raises(SystemExit):
        fit_tiny(run_dir, datalist, "vars::steps_per_epoch=3", stop)
    saved = run_dir / "checkpoints" / "interrupted.ckpt"
    assert read_checkpoint(saved)["global_step"] == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_tiny(run_dir, datalist, "vars::steps_per_epoch=3", ckpt_path=str(saved))
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # resuming into its own folder
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))  # one last.ckpt, the newest

    with pytest.raises(OutputExistsError):  # a fresh run into the same folder stops before training
        fit_tiny(run_dir, datalist, "vars::steps_per_epoch=3")
