"""Find and run the Lighter recipes in ``lighter_configs/`` from Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctfm.errors import CTFMError

RECIPES_DIRNAME = "lighter_configs"


def recipes_dir(start: str | Path | None = None) -> Path:
    """``lighter_configs/`` in the current folder (a user's edited copy wins) or in the ctfm source checkout."""
    candidates = [
        Path(start) if start else Path.cwd() / RECIPES_DIRNAME,
        Path(__file__).resolve().parents[1] / RECIPES_DIRNAME,
    ]
    for candidate in candidates:
        if (candidate / "pretrain.yaml").is_file():
            return candidate
    raise CTFMError(
        f"no {RECIPES_DIRNAME}/pretrain.yaml found in {', '.join(map(str, candidates))}; run from a ctfm checkout "
        "or pass the folder holding the recipes"
    )


def run_recipe(stage: str, inputs: Sequence[str | Path | dict[str, Any]], **stage_kwargs: Any) -> None:
    """Exactly what ``lighter STAGE INPUTS...`` does, in this process (``ckpt_path=...`` resumes)."""
    from lighter import Runner

    Runner().run(stage, [str(i) if isinstance(i, Path) else i for i in inputs], **stage_kwargs)
