"""Whole-body segmentation of one scan: ``ctfm.segment`` against the model card's straightforward MONAI pipeline.

    python benchmarks/segment.py [--shape 160 160 160] [--init-filters 8] [--roi 32 96 96] [--batch-size 2]

Both segment the same synthetic CT (written as NIfTI, read from disk) with the same SegResNetDS of 118 outputs
(background + the 117 TotalSegmentator classes), the card's preprocessing (orientation SPL, HU window, body crop),
a Gaussian sliding window with overlap 0.625, softmax/argmax and the inverse of the preprocessing. The reference is
written as the card describes it: a Compose of MONAI dictionary transforms, ``SlidingWindowInferer``, ``Activationsd``,
``AsDiscreted`` and ``Invertd``. The largest-component step is the same MONAI transform in both and is left out of
both. A narrow network (``--init-filters 8``) keeps the CPU run to minutes: the class scores, not the network, are
what dominates memory. Each method runs in its own subprocess, so its peak memory is its own; the labels of both are
compared voxel by voxel. Full size, on a GPU:

    python benchmarks/segment.py --shape 300 512 512 --init-filters 32 --roi 96 160 160 --batch-size 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACING = (1.5, 0.8, 0.8)
CLASSES = 118


def network(init_filters: int, device: str):
    import torch

    from ctfm.nn import ct_fm_segresnet

    torch.manual_seed(0)
    return ct_fm_segresnet(init_filters=init_filters, out_channels=CLASSES, dsdepth=4).to(device).eval()


def run_ctfm(path: Path, args: argparse.Namespace):
    import ctfm
    from ctfm.segmentation import Segmenter
    from ctfm.transforms.preprocess import CTPreprocessing

    names = ("background", *(f"class_{i}" for i in range(1, CLASSES)))
    segmenter = Segmenter(network(args.init_filters, args.device), names, CTPreprocessing(spacing=None))
    labels = ctfm.segment(
        segmenter, path, roi_size=args.roi, batch_size=args.batch_size, device=args.device, largest_component=False
    )
    return labels[0].numpy()


def run_monai(path: Path, args: argparse.Namespace):
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        SpatialPadd,
    )

    preprocess = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="SPL"),
            ScaleIntensityRanged(keys="image", a_min=-1024, a_max=2048, b_min=0.0, b_max=1.0, clip=True),
            CropForegroundd(keys="image", source_key="image", select_fn=lambda x: x > 524 / 3072, allow_smaller=True),
            SpatialPadd(keys="image", spatial_size=args.roi),
        ]
    )
    postprocess = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            Invertd(keys="pred", transform=preprocess, orig_keys="image", nearest_interp=True),
        ]
    )
    model = network(args.init_filters, args.device)
    inferer = SlidingWindowInferer(args.roi, args.batch_size, overlap=0.625, mode="gaussian")
    item = preprocess({"image": str(path)})
    with torch.no_grad():
        item["pred"] = inferer(item["image"][None].to(args.device), model)[0]
    return postprocess(item)["pred"][0].numpy()


def measure(method: str, path: Path, labels_out: Path, args: argparse.Namespace) -> dict:
    import monai.inferers  # noqa: F401  (imported before the baseline so it is not counted as the method's)
    import numpy as np
    from _common import peak_rss_mib

    import ctfm.segmentation  # noqa: F401

    baseline = peak_rss_mib()
    start = time.perf_counter()
    labels = (run_ctfm if method == "ctfm" else run_monai)(path, args)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    np.save(labels_out, labels.astype(np.int16))
    return {"seconds": seconds, "peak_mib": peak, "start_mib": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 160], metavar=("Z", "Y", "X"))
    parser.add_argument("--init-filters", type=int, default=8)
    parser.add_argument("--roi", type=int, nargs=3, default=[32, 96, 96], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=["ctfm", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--scan", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, Path(args.scan), Path(args.labels), args)))
        return

    import numpy as np

    from ctfm.data.sample import generate_ct, write_nifti

    with tempfile.TemporaryDirectory() as folder:
        scan = write_nifti(generate_ct(args.shape, SPACING, seed=0), Path(folder) / "scan.nii.gz")
        results, labels = {}, {}
        for method in ("monai", "ctfm"):
            out = Path(folder) / f"{method}.npy"
            command = [sys.executable, __file__, "--worker", method, "--scan", str(scan), "--labels", str(out)]
            command += ["--shape", *map(str, args.shape), "--roi", *map(str, args.roi)]
            command += ["--init-filters", str(args.init_filters), "--batch-size", str(args.batch_size)]
            command += ["--device", args.device]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
            labels[method] = np.load(out)
    agreement = float((labels["ctfm"] == labels["monai"]).mean())
    print(f"scan {tuple(args.shape)} voxels at {SPACING} mm, {CLASSES} classes, init_filters {args.init_filters}, ")
    print(f"window {tuple(args.roi)}, overlap 0.625, batch {args.batch_size}, device {args.device}")
    for method, name in (("monai", "MONAI card pipeline"), ("ctfm", "ctfm.segment")):
        r = results[method]
        grown = r["peak_mib"] - r["start_mib"]
        print(f"{name:20s} {r['seconds']:7.1f} s   peak {r['peak_mib']:8.0f} MiB ({grown:6.0f} MiB above the imports)")
    m, c = results["monai"], results["ctfm"]
    print(
        f"ratio ctfm/monai: time {c['seconds'] / m['seconds']:.2f}x, peak memory {c['peak_mib'] / m['peak_mib']:.2f}x"
    )
    grown = (c["peak_mib"] - c["start_mib"]) / (m["peak_mib"] - m["start_mib"])
    print(f"memory above the imports, ctfm/monai: {grown:.2f}x")
    print(f"labels identical on {100 * agreement:.3f}% of voxels (shape {labels['ctfm'].shape})")


if __name__ == "__main__":
    main()
