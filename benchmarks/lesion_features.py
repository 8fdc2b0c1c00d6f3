"""Lesion features for 10 seed points per scan: ctfm's grouped extraction vs the straightforward one, in one run.

    python benchmarks/lesion_features.py [--scans 3] [--seeds 10] [--shape 100 320 320] [--model fmcib]

The straightforward way reads and resamples the whole scan again for every row, then crops and embeds that one
crop (FMCIB's own get_features loads each row through its transforms). ctfm reads and resamples each scan once
for all its rows and embeds the crops in batches. Both use the same randomly initialised model (``fmcib``: the
full FMCIB ResNet-50 on 50^3 crops; ``ct-fm``: the full CT-FM encoder on 24x128x128 patches) and must give the
same features. Scans are synthetic torsos of realistic size (default 100 x 320 x 320 at 2.5 x 0.8 x 0.8 mm).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from ctfm.analysis.lesion_features import extract_lesion_features, features_of
from ctfm.analysis.lesions import lesion_crop, named_crop
from ctfm.data.sample import generate_ct, write_nifti


def write_lesions(folder: Path, scans: int, seeds: int, shape: list[int]) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for k in range(scans):
        path = write_nifti(generate_ct(tuple(shape), (2.5, 0.8, 0.8), seed=k), folder / f"scan_{k}.nii.gz")
        image = sitk.ReadImage(str(path))
        for _ in range(seeds):
            index = [int(rng.integers(n // 4, 3 * n // 4)) for n in reversed(shape)]  # (x, y, z)
            x, y, z = image.TransformIndexToPhysicalPoint(index)
            rows.append({"image_path": path.name, "coordX": x, "coordY": y, "coordZ": z})
    csv = folder / "lesions.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


@torch.no_grad()
def straightforward(csv: Path, model: torch.nn.Module, crop_name: str) -> np.ndarray:
    crop = named_crop(crop_name)
    table = pd.read_csv(csv)
    vectors = []
    for row in table.itertuples():
        hu = lesion_crop(
            csv.parent / row.image_path,
            (row.coordX, row.coordY, row.coordZ),
            size=crop.size,
            spacing=crop.spacing,
            orientation=crop.orientation,
        )
        vectors.append(features_of(model, crop.normalise(hu.as_tensor())[None])[0].numpy())
    return np.stack(vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10, help="seed points per scan")
    parser.add_argument("--shape", type=int, nargs=3, default=[100, 320, 320], metavar=("Z", "Y", "X"))
    parser.add_argument("--model", choices=["fmcib", "ct-fm"], default="fmcib")
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.model == "fmcib":
        from ctfm.nn.fmcib import fmcib_resnet50

        model = fmcib_resnet50().eval()
    else:
        from ctfm.nn import ct_fm_encoder

        model = ct_fm_encoder().eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = write_lesions(folder, args.scans, args.seeds, args.shape)
        lesions = args.scans * args.seeds
        start = time.perf_counter()
        out = folder / "f.parquet"
        extract_lesion_features(csv, out, model=model, crop=args.model, batch_size=args.batch_size, progress=False)
        grouped = time.perf_counter() - start
        start = time.perf_counter()
        reference = straightforward(csv, model, args.model)
        plain = time.perf_counter() - start
        ours = np.stack(pd.read_parquet(folder / "f.parquet")["embedding"].to_list())
    same = np.allclose(ours, reference, rtol=1e-3, atol=1e-4)
    print(f"{args.scans} scans of {'x'.join(map(str, args.shape))} voxels, {args.seeds} seeds each, model {args.model}")
    print(f"straightforward (read + resample per row, one at a time): {plain:7.1f} s  {lesions / plain:6.2f} lesions/s")
    label = f"ctfm features (each scan once, batches of {args.batch_size}):"
    print(f"{label:57} {grouped:7.1f} s  {lesions / grouped:6.2f} lesions/s")
    print(f"speed-up: {plain / grouped:.1f}x (goal >= 5x); same features: {same}")


if __name__ == "__main__":
    main()
