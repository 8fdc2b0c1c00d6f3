"""The README's main job: pretrain on synthetic sample scans, export the encoder, load it back and embed a scan.

Every step is a public entry point a user would call (``lighter fit``, ``ctfm export``, ``ctfm.load``,
``ctfm.embed``), so the quickstart proves the real path rather than a shortcut.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ctfm.recipes import recipes_dir, run_recipe

logger = logging.getLogger(__name__)


def run_quickstart(
    out: str | Path, *, n_scans: int = 8, configs: str | Path | None = None, overrides: Sequence[str] = ()
) -> Path:
    """Run the whole quickstart in ``out``; returns the exported encoder directory."""
    import ctfm
    from ctfm.data.sample import generate_ct, make_sample_dataset, write_nifti

    out = Path(out).resolve()
    recipes = recipes_dir(configs)
    datalist = make_sample_dataset(out / "data", n_scans=n_scans, seed=0)
    command = [recipes / "pretrain.yaml", recipes / "quickstart.yaml", f"vars::datalist={datalist}", f"vars::output_dir={out}"]
    print("1/4 pretraining:  lighter fit " + " ".join(map(str, command + list(overrides))), flush=True)
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
    scan_vector = patches.reduce("mean")
    similarity = F.cosine_similarity(patches.embeddings[:, None], patches.embeddings[None], dim=-1)
    off_diagonal = similarity[~torch.eye(len(similarity), dtype=torch.bool)]
    print(f"    scan embedding: {scan_vector.numel()}-d, norm {scan_vector.norm():.3f}")
    print(
        f"    {len(patches.embeddings)} patch embeddings; cosine similarity between patches: "
        f"mean {off_diagonal.mean():.3f}, min {off_diagonal.min():.3f}, max {off_diagonal.max():.3f}"
    )
    print(f"done: encoder in {encoder_dir}, logs in {out / 'logs'}")
    return encoder_dir
