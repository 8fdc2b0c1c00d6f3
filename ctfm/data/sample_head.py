"""Synthetic head CT volumes, with or without a hyperdense (acute-blood-like) region, for triage tests and checks.

A head is nested ellipsoids: scalp, skull (bone), brain with texture, two CSF ventricles; a positive scan adds a
blob of 60-80 HU (acute haemorrhage) inside the brain. Same array convention as :mod:`ctfm.data.sample`:
``hu[z, y, x]`` with z towards the vertex, y posterior, x towards the patient's left (SPL).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.data.sample import SampleCT, _smooth_field, write_nifti

HEAD_TISSUES = {0: "air", 1: "scalp", 2: "bone", 3: "brain", 4: "csf", 5: "blood"}
_HEAD_HU = np.array([-1000, 20, 900, 32, 6, 72], dtype=np.float32)
#: A small head CT: 24 slices of 5 mm, 96 x 96 pixels of 2.2 mm (the triage spacing is 5 x 2 x 2 mm).
HEAD_SHAPE = (24, 96, 96)
HEAD_SPACING = (5.0, 2.2, 2.2)


def generate_head_ct(
    shape: Sequence[int] = HEAD_SHAPE,
    spacing: Sequence[float] = HEAD_SPACING,
    seed: int = 0,
    hyperdense: bool = False,
) -> SampleCT:
    """One synthetic head; ``hyperdense=True`` adds a 60-80 HU blob of random size and place inside the brain."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = (int(s) for s in shape)
    z = np.linspace(-1.0, 1.0, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[None, None, :]
    cz, cy, cx = rng.uniform(-0.05, 0.05, 3)
    rz, ry, rx = rng.uniform(0.8, 0.9), rng.uniform(0.75, 0.85), rng.uniform(0.62, 0.72)
    radius = np.sqrt(((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    labels[radius < 1.0] = 1
    labels[radius < 0.93] = 2
    labels[radius < 0.84] = 3
    for side in (-1.0, 1.0):
        ventricle = ((z - cz) / 0.25) ** 2 + ((y - cy) / 0.3) ** 2 + ((x - cx - side * 0.1) / 0.06) ** 2 < 1.0
        labels[ventricle & (labels == 3)] = 4
    if hyperdense:
        centre = [rng.uniform(-0.35, 0.35) for _ in range(3)]
        size = rng.uniform(0.12, 0.22)
        blob = ((z - cz - centre[0]) ** 2 + (y - cy - centre[1]) ** 2 + (x - cx - centre[2]) ** 2) < size**2
        labels[blob & (labels >= 3)] = 5
    hu = _HEAD_HU[labels] + 4.0 * _smooth_field(rng, labels.shape, (4, 8, 8)) * (labels >= 3)
    hu[labels == 5] += rng.uniform(-10.0, 8.0)
    hu += rng.uniform(3.0, 6.0) * rng.standard_normal(labels.shape, dtype=np.float32)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    sz, sy, sx = (float(s) for s in spacing)
    origin = (-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2)
    return SampleCT(hu=hu, labels=labels, spacing=(sz, sy, sx), origin=origin, seed=int(seed))


def make_head_dataset(
    out_dir: str | Path,
    n_scans: int,
    shape: Sequence[int] = HEAD_SHAPE,
    spacing: Sequence[float] = HEAD_SPACING,
    seed: int = 0,
) -> Path:
    """Write ``n_scans`` heads (alternately without and with a hyperdense region) and ``labels.csv`` (image,label)."""
    out_dir = Path(out_dir)
    rows = []
    for index, scan_seed in enumerate(np.random.SeedSequence(seed).generate_state(n_scans)):
        label = index % 2
        sample = generate_head_ct(shape, spacing, seed=int(scan_seed), hyperdense=bool(label))
        path = write_nifti(sample, out_dir / "images" / f"head_{index:03d}.nii.gz")
        rows.append({"image": path.relative_to(out_dir).as_posix(), "label": label})
    csv = out_dir / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv
