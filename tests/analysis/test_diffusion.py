"""`ctfm diffusion sample`: NIfTI in HU on an SPL grid and a PNG grid, for 2D and 3D checkpoints alike."""

import nibabel as nib
import numpy as np
import pytest
import torch
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.cli import main
from ctfm.recipes import load_recipe

SIZES = {2: ["16", "16"], 3: ["8", "16", "16"]}


def make_checkpoint(path, spatial_dims, ema=False):
    """A checkpoint as lighter writes it (the resolved recipe's config and the module's state), untrained."""
    config = Config().update(load_recipe(RECIPES / "diffusion" / f"pretrain_{spatial_dims}d.yaml"))
    config.update("vars::preset=tiny")
    if ema:
        config.update("vars::ema_decay=0.999")
    model = config.resolve("model")
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"config": config.get()}}, path)
    return path


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sample_writes_nifti_in_hu_and_a_png(tmp_path, spatial_dims):
    checkpoint = make_checkpoint(tmp_path / "last.ckpt", spatial_dims, ema=True)
    out = tmp_path / "samples"
    args = ["diffusion", "sample", str(checkpoint), "--window", "1500", "-500", "--n", "2", "--steps", "3"]
    assert main([*args, "--size", *SIZES[spatial_dims], "--guidance", "2", "--ema", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["sample_000.nii.gz", "sample_001.nii.gz", "samples.png"]
    image = nib.load(out / "sample_000.nii.gz")
    expected = (1, 16, 16) if spatial_dims == 2 else (8, 16, 16)
    assert image.shape == expected
    # SPL index order at the recipe's 3 x 1 x 1 mm: z goes superior, y posterior, x left.
    np.testing.assert_allclose(image.affine[:3, :3], [[0, 0, -1], [0, -1, 0], [3, 0, 0]])
    assert nib.aff2axcodes(image.affine) == ("S", "P", "L")
    hu = image.get_fdata()
    assert hu.min() >= -1250 - 1e-3 and hu.max() <= 250 + 1e-3  # inside the lung window 1500/-500

    # A second run into the same folder stops before sampling, naming the first file in the way; --overwrite replaces.
    before = (out / "samples.png").read_bytes()
    again = [*args, "--size", *SIZES[spatial_dims], "--seed", "1", "--out", str(out)]
    assert main(again) == 1
    assert (out / "samples.png").read_bytes() == before
    assert main([*again, "--overwrite"]) == 0
    assert (out / "samples.png").read_bytes() != before


def test_wrong_dimension_and_bad_window_fail_in_one_line(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "last.ckpt", 2)
    base = ["diffusion", "sample", str(checkpoint), "--n", "1", "--steps", "2", "--out", str(tmp_path / "o")]
    assert main([*base, "--spatial-dims", "3"]) == 1
    assert "holds a 2D denoiser, but spatial_dims is 3" in capsys.readouterr().err
    assert main([*base, "--window", "0", "40"]) == 1
    error = capsys.readouterr().err
    assert "window width must be > 0" in error and len(error.strip().splitlines()) == 1
    assert main([*base, "--ema"]) == 1
    assert "no weights under 'ema_network.module.'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
