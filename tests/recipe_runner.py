"""Run the pretraining recipe at a tiny size through lighter.Runner, as `lighter fit` would (shared by tests)."""

from __future__ import annotations

import os
from pathlib import Path

from ctfm.recipes import recipes_dir, run_recipe

RECIPES = recipes_dir()
#: Small enough for a 2-core CPU: a 4-filter encoder, 8x32x32 patches, 3 patches per scan, 2 scans per step.
TINY = [
    "vars::init_filters=4",
    "=vars::patch_size=[8,32,32]",
    "vars::patches_per_scan=3",
    "vars::scans_per_device=2",
    "vars::steps_per_epoch=2",
    "vars::max_epochs=1",
    "vars::num_workers=0",
]


def fit_tiny(run_dir: Path, datalist: Path, *overrides: str, ckpt_path: str | None = None) -> None:
    """Pretrain on ``datalist`` into ``run_dir`` with quickstart.yaml (CPU-sized pretraining), TINY, ``overrides``."""
    inputs = [RECIPES / "quickstart.yaml", f"vars::datalist={datalist}"]
    inputs += [f"vars::output_dir={run_dir}", *TINY, *overrides, "trainer::enable_progress_bar=false"]
    cwd = os.getcwd()
    os.chdir(run_dir)  # lighter looks for a __lighter__.py project file in the working folder
    try:
        run_recipe("fit", inputs, **({"ckpt_path": ckpt_path} if ckpt_path else {}))
    finally:
        os.chdir(cwd)
