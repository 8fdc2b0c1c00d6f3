"""The README's main job: pretrain on synthetic sample scans, export the encoder, load it back and embed a scan.

Every step is a public entry point a user would call (``lighter fit``, ``ctfm export``, ``ctfm.load``,
``ctfm.embed``), so the quickstart proves the real path rather than a shortcut.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from ctfm.recipes import recipes_dir, run_recipe

#: What a quickstart writes into its folder besides the sample data (which is regenerated identically each time).
RUN_OUTPUTS = ("checkpoints", "encoder", "logs", "training_loss.png")


def run_quickstart(
    out: str | Path,
    *,
    n_scans: int = 8,
    configs: str | Path | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Run the whole quickstart in ``out``; returns the exported encoder directory.

    An earlier quickstart in ``out`` stops the run before any work unless ``overwrite``, which deletes its outputs
    first: training into its folder would leave its ``last.ckpt`` (and its encoder) in place of the new run's.
    """
    import ctfm
    from ctfm.data.sample import generate_ct, make_sample_dataset, write_nifti
    from ctfm.outputs import refuse_overwrite

    out = Path(out).resolve()
    earlier = [out / name for name in RUN_OUTPUTS]
    refuse_overwrite(earlier, overwrite)
    for path in earlier:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    recipes = recipes_dir(configs)
    datalist = make_sample_dataset(out / "data", n_scans=n_scans, seed=0)
    command: list[str | Path] = [
        recipes / "quickstart.yaml",
        f"vars::datalist={datalist}",
        f"vars::output_dir={out}",
    ]
    print("1/4 pretraining:  lighter fit " + " ".join(map(str, command + list(overrides))), flush=True)
    with _only_warnings():
        run_recipe("fit", command + list(overrides))

    checkpoint = out / "checkpoints" / "last.ckpt"
    encoder_dir = out / "encoder"
    print(f"2/4 exporting:    ctfm export {checkpoint} {encoder_dir}", flush=True)
    ctfm.export_encoder(checkpoint, encoder_dir)

    print(f"3/4 loading:      ctfm.load({str(encoder_dir)!r})", flush=True)
    model = ctfm.load(encoder_dir)
    print(f"    {type(model).__name__} with {sum(p.numel() for p in model.parameters()):,} parameters")

    held_out = out / "data" / "held_out.nii.gz"
    write_nifti(generate_ct(seed=10_000), held_out)
    patch_size = (16, 64, 64)
    print(f"4/4 embedding:    ctfm.embed(model, {str(held_out)!r}, patch_size={patch_size})", flush=True)
    patches = ctfm.embed(model, held_out, patch_size=patch_size, reduce=None)
    dims = patches.embeddings.shape[1]
    print(f"    {len(patches.embeddings)} patch embeddings of {dims} dimensions; the scan embedding is their mean")
    losses, patches_per_scan = epoch_losses(out / "logs")
    chance = math.log(2 * patches_per_scan - 1)  # a model that cannot tell a scan's views apart
    print(f"    training loss per epoch: {', '.join(f'{x:.3f}' for x in losses)} (chance level {chance:.3f})")
    from ctfm.plotting import loss_curve

    picture = loss_curve(losses, out / "training_loss.png", chance=chance, title="quickstart pretraining")
    print(f"done: encoder in {encoder_dir}, loss curve in {picture}, logs in {out / 'logs'}")
    return encoder_dir


def epoch_losses(log_dir: Path) -> tuple[list[float], int]:
    """Mean training loss of each epoch of the newest run in ``log_dir``, and its patches per scan."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = max(log_dir.rglob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    config = yaml.safe_load((events.parent / "config.yaml").read_text())
    return [event.value for event in accumulator.Scalars("train/loss/epoch")], config["vars"]["patches_per_scan"]


@contextlib.contextmanager
def _only_warnings() -> Iterator[None]:
    """Show warnings and errors of Lightning and lighter, not their banners, tips and info lines."""
    os.environ.setdefault("PL_GLOBAL_SEED", "0")  # the recipe's seed; lighter warns when none is set
    import lighter  # noqa: F401  (imports Lightning first: its import sets its loggers' levels)
    from loguru import logger  # lighter logs through loguru, and routes the standard logging module there too

    names = ("pytorch_lightning", "lightning_fabric", "lightning", "ctfm")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in levels:
        logging.getLogger(name).setLevel(logging.WARNING)
    logger.disable("lighter")  # its only messages in a fit are "Saved config to ..."
    from ctfm.tasks.quiet import FRAMEWORK_NOISE

    with warnings.catch_warnings():
        for pattern in FRAMEWORK_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            logger.enable("lighter")
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
