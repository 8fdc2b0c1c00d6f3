"""Embedding one realistic scan with the full-size CT-FM encoder: patch tiling vs one whole-volume forward pass.

    python benchmarks/embed.py [--shape 120 350 350] [--batch-size 4] [--init-filters 32]

The volume is a preprocessed synthetic CT (120 x 350 x 350 voxels at 3 x 1 x 1 mm is a chest-abdomen scan).
Each method runs in its own subprocess so the peak memory reported is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(method: str, shape: list[int], batch_size: int, init_filters: int) -> dict:
    import torch
    from _common import peak_rss_mib

    from ctfm.data.sample import generate_ct
    from ctfm.embedding import embed_patches, patch_starts
    from ctfm.nn import ct_fm_encoder, pooled_features
    from ctfm.transforms.preprocess import HU_RANGE, PATCH_SIZE

    low, high = HU_RANGE
    sample = generate_ct(shape=tuple(shape), spacing=(3.0, 1.0, 1.0), seed=0)
    volume = torch.from_numpy(((sample.hu.astype("float32") - low) / (high - low)).clip(0, 1))
    torch.manual_seed(0)
    model = ct_fm_encoder(init_filters=init_filters).eval()
    baseline_rss = peak_rss_mib()
    start = time.perf_counter()
    with torch.inference_mode():
        if method == "patches":
            embeddings = embed_patches(model, volume, batch_size=batch_size, progress=False).embeddings
            patches = len(embeddings)
        else:
            pooled_features(model, volume[None, None])
            patches = len(patch_starts(volume.shape, PATCH_SIZE, 0.0))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "patches": patches, "peak_mib": peak_rss_mib(), "model_mib": baseline_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[120, 350, 350], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--init-filters", type=int, default=32)
    parser.add_argument("--worker", choices=["patches", "whole"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.shape, args.batch_size, args.init_filters)))
        return

    results = {}
    for method in ("whole", "patches"):
        command = [sys.executable, __file__, "--worker", method, "--shape", *map(str, args.shape)]
        command += ["--batch-size", str(args.batch_size), "--init-filters", str(args.init_filters)]
        results[method] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    whole, patches = results["whole"], results["patches"]
    print(
        f"scan {'x'.join(map(str, args.shape))} voxels, "
        f"encoder init_filters={args.init_filters}, batch {args.batch_size}"
    )
    print(f"whole-volume forward: {whole['seconds']:7.1f} s   peak RSS {whole['peak_mib']:7.0f} MiB")
    print(
        f"ctfm.embed patches:   {patches['seconds']:7.1f} s   peak RSS {patches['peak_mib']:7.0f} MiB   "
        f"{patches['patches']} patches, {patches['patches'] / patches['seconds']:.2f} patches/s"
    )
    print(f"time ratio patches / whole: {patches['seconds'] / whole['seconds']:.2f}x (goal <= 1.2x)")
    print(f"memory ratio patches / whole: {patches['peak_mib'] / whole['peak_mib']:.2f}x")


if __name__ == "__main__":
    main()
