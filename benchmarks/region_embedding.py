"""Organ-level embedding: embed only the tiles centred in the region, against embedding the whole scan and masking
afterwards; the challenge's crop around the region (one forward pass) against tiling the region; and one
whole-volume forward pass against tiling the whole scan.

    python benchmarks/region_embedding.py [--shape 96 256 256] [--init-filters 8] [--organ liver] [--repeat 3]

One synthetic torso at 3 x 1 x 1 mm (already on the pretraining grid, so preprocessing is the same cheap copy for
every method). Both tile methods pool the same tiles with the same weights; the script checks the vectors agree.
Each method runs ``--repeat`` times and its fastest run counts, so a shared machine's noise inflates no ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 256, 256))
    parser.add_argument("--init-filters", type=int, default=8)
    parser.add_argument("--patch", type=int, nargs=3, default=(24, 128, 128))
    parser.add_argument("--crop", type=int, nargs=3, default=(48, 160, 160))
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the fastest counts")
    args = parser.parse_args()

    import numpy as np
    import torch

    from ctfm.data.sample import LABEL, SampleCT, generate_ct, write_labels_nifti, write_nifti
    from ctfm.embedding import _fraction_inside, embed, embed_patches, embed_regions, whole_volume_box
    from ctfm.io.reader import read_ct, read_label_map
    from ctfm.io.regions import region_mask
    from ctfm.nn import ct_fm_encoder
    from ctfm.transforms.dictionary import CTPreprocessingd
    from ctfm.transforms.preprocess import CTPreprocessing

    folder = Path(tempfile.mkdtemp())
    sample = generate_ct(tuple(args.shape), (3.0, 1.0, 1.0), seed=0)
    scan = write_nifti(sample, folder / "ct.nii.gz")
    organ = (sample.labels == LABEL[args.organ]).astype(np.uint8)
    mask = write_labels_nifti(SampleCT(**{**sample.__dict__, "labels": organ}), folder / "mask.nii.gz")
    torch.manual_seed(0)
    model = ct_fm_encoder(init_filters=args.init_filters).eval()
    settings = CTPreprocessing(min_size=tuple(args.patch))
    patch = tuple(args.patch)

    def whole_then_mask() -> torch.Tensor:
        image = read_ct(scan)
        item = CTPreprocessingd(settings, label_keys=("mask",), load=False)(
            {"image": image, "mask": read_label_map(mask, like=image)}
        )
        inside = region_mask(item["mask"][0], [1])
        patches = embed_patches(model, item["image"], patch_size=patch, preprocess=None, progress=False)
        centres = patches.centers_voxel.round().long()
        chosen = [i for i, c in enumerate(centres.tolist()) if inside[tuple(c)]]
        starts = [tuple((patches.centers_voxel[i] - (torch.tensor(patch) - 1) / 2).long().tolist()) for i in chosen]
        weights = _fraction_inside(inside, starts, patch)
        return (patches.embeddings[chosen] * weights[:, None]).sum(0) / weights.sum(), len(patches.embeddings)

    def timed(function):
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            value = function()
            best = min(best, time.perf_counter() - start)
        return value, best

    (naive, n_all), naive_s = timed(whole_then_mask)
    regions, region_s = timed(lambda: embed_regions(model, scan, mask, {"organ": [1]}, patch_size=patch,
                                                    preprocess=settings))  # fmt: skip
    crop, crop_s = timed(
        lambda: embed_regions(model, scan, mask, {"organ": [1]}, pool="crop", crop_size=tuple(args.crop),
                              patch_size=patch, preprocess=settings)
    )  # fmt: skip
    tiled, tiled_s = timed(lambda: embed(model, scan, patch_size=patch, preprocess=settings, progress=False))
    whole, whole_s = timed(lambda: embed(model, scan, whole_volume=True, patch_size=patch, preprocess=settings))
    agree = torch.allclose(naive, regions["organ"].embedding, atol=1e-5)
    print(f"scan {args.shape} at 3x1x1 mm, {args.organ} region, init_filters {args.init_filters}, tiles {patch}")
    print(f"  whole scan then mask: {n_all} tiles embedded, {naive_s:.2f} s")
    print(f"  region tiles only:    {regions['organ'].patches} tiles embedded, {region_s:.2f} s "
          f"-> {naive_s / region_s:.1f}x (same vector: {agree})")  # fmt: skip
    print(f"  challenge crop {tuple(args.crop)}: 1 forward pass, {crop_s:.2f} s -> {region_s / crop_s:.2f}x the "
          "region tiles' speed")  # fmt: skip
    print(f"  whole scan, tiled ({n_all} tiles): {tiled_s:.2f} s; one whole-volume forward pass "
          f"{tuple(whole_volume_box(settings(scan).shape[1:]))}: {whole_s:.2f} s -> the tiles take "
          f"{tiled_s / whole_s:.2f}x the time of one pass (peak memory: benchmarks/embed.py); cosine of the two "
          f"vectors {torch.nn.functional.cosine_similarity(tiled, whole, dim=0):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
