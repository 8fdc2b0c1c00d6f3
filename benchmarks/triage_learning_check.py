"""Does the head-CT triage recipe train? Synthetic heads with and without a hyperdense region, held-out AUROC.

    python benchmarks/triage_learning_check.py [--scans 32] [--epochs 6]

Runs `lighter fit head_ct_triage.yaml` (random encoder, init_filters 8, 16 x 64 x 64 crops,
so the model sees 64 x 64 x 64 after the four windows) on synthetic heads, then `lighter test` on held-out heads
never seen in training, and prints the training loss per epoch and the test AUROC from predictions.csv.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from ctfm.data.sample_head import make_head_dataset
from ctfm.recipes import recipes_dir, run_recipe


def epoch_losses(log_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [event.value for event in events.Scalars("train/loss/epoch")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=32, help="heads in all (half with a hyperdense region)")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    recipes = recipes_dir()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = make_head_dataset(folder / "heads", args.scans, shape=(16, 64, 64), spacing=(5.0, 3.0, 3.0), seed=1)
        table = pd.read_csv(csv)
        n_test = args.scans // 4
        table["split"] = ["train"] * (args.scans - 2 * n_test) + ["val"] * n_test + ["test"] * n_test
        table.to_csv(csv, index=False)
        run_dir = folder / "run"
        run_dir.mkdir()
        inputs = [
            recipes / "head_ct_triage.yaml",
            f"vars::datalist={csv}",
            f"vars::output_dir={run_dir}",
            "vars::weights=none",
            "vars::init_filters=8",
            "=vars::spacing=[5.0,3.0,3.0]",
            "=vars::roi_size=[16,64,64]",
            "vars::batch_size=4",
            f"vars::max_epochs={args.epochs}",
            "vars::lr=1.0e-3",
            "vars::num_workers=0",
            "vars::precision=32-true",
            "trainer::accelerator=cpu",
            "trainer::enable_progress_bar=false",
            "trainer::log_every_n_steps=1",
        ]
        cwd = os.getcwd()
        os.chdir(run_dir)
        try:
            run_recipe("fit", inputs)
            run_recipe("test", inputs, ckpt_path=str(run_dir / "checkpoints" / "best.ckpt"))
        finally:
            os.chdir(cwd)
        losses = epoch_losses(run_dir / "logs" / "version_0")
        predictions = pd.read_csv(run_dir / "predictions.csv")
    auroc = roc_auc_score(predictions["label"], predictions["probability"])
    print(f"{args.scans} synthetic heads ({args.scans - 2 * n_test} train, {n_test} val, {n_test} test)")
    print("training loss per epoch: " + ", ".join(f"{v:.3f}" for v in losses))
    print(f"held-out test AUROC (best-val-AUROC checkpoint): {auroc:.3f} on {len(predictions)} heads (chance 0.5)")


if __name__ == "__main__":
    main()
