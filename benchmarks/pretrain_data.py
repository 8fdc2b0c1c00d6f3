"""Pretraining views per second: the preprocessing cache + cheap-order views vs the straightforward MONAI pipeline.

    python benchmarks/pretrain_data.py                 # 6 scans of 240 x 512 x 512 at 1.5 x 0.7 x 0.7 mm, 2 workers
    python benchmarks/pretrain_data.py --quick         # 80 x 256 x 256 sources, for a fast check
    python benchmarks/pretrain_data.py --quick --pipelines cached cached-device-views --scans 2 --items 8

Source scans are synthetic torsos (``ctfm.data.sample``) of a typical clinical size: 240 slices of 512 x 512 at
1.5 x 0.7 x 0.7 mm (z, y, x), i.e. 120 x 358 x 358 voxels at the pretraining 3 x 1 x 1 mm, written as int16 .nii.gz.
Every pipeline yields the same thing per scan: float32 views ``(M, 2, 1, 24, 128, 128)`` (the paper's sizes), one
scan per DataLoader item, ``--workers`` DataLoader workers.

- straightforward: what the CT-FM repo does per item: LoadImage -> EnsureChannelFirst -> Orientation SPL ->
  Spacing -> ScaleIntensityRange -> CropForeground -> SpatialPad -> RandSpatialCropSamples (M), then for each patch
  two views by the same augmentations, in the usual order (crop and resize first, then flip, affine, intensity
  scaling, histogram shift and smoothing on the full-size view).
- cached, straightforward views: the cache, with that same full-size augmentation order (isolates the cache).
- cached: :class:`ctfm.data.pretrain.CTPretrainDataModule` as training uses it (cache + cheap-order views).
- cached-device-views: the same data module with ``views_on="device"``: workers only read the raw uint16 patches
  and :class:`ctfm.transforms.device_views.DeviceViews` makes the views from each batch, here with torch ops on
  CPU tensors in the main process (one thread), timed apart from the reading.

Then, where CUDA is available, :class:`~ctfm.transforms.device_views.DeviceViews` on the GPU for a full-size
step's views (``--gpu-scans`` x M x 2 of the patch size): views/s on the device and the share of a step it takes.
Cores per GPU are the views a GPU consumes per second (one full-size step of 16 scans x 20 x 2 = 640 views of
24 x 128 x 128 in ``--step-seconds``, 0.4-1 s in bf16 on one current GPU) over the views/s one core supplies.

Preparing the cache is a one-off cost, reported separately. Each pipeline is timed ``--repeats`` times, interleaved
with the others, and its fastest run counts (the machine may be shared). Each run is its own process; peak memory
is that process's resident set (VmHWM) and its largest DataLoader worker's (ru_maxrss, which also counts the pages
a forked worker shares with the main process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SOURCE = {"full": ((240, 512, 512), (1.5, 0.7, 0.7)), "quick": ((80, 256, 256), (1.5, 0.7, 0.7))}
PIPELINES = ("straightforward", "cached-straightforward-views", "cached", "cached-device-views")
#: Views of one full-size step: 16 scans x 20 patches x 2 views (the paper's batch, on one GPU here).
STEP_VIEWS = 16 * 20 * 2


def straightforward_augmentation(patch_size, **kwargs):
    """The view augmentations in the usual order: crop and resize back first, the rest on the full-size view."""
    from monai.transforms import (
        Compose,
        RandAffine,
        RandFlip,
        RandGaussianSmooth,
        RandHistogramShift,
        RandScaleIntensity,
        Resize,
    )

    from ctfm.transforms.views import RandScaledCrop

    return Compose(
        [
            RandScaledCrop((0.33, 1.0)),
            Resize(spatial_size=patch_size, mode="trilinear"),
            RandFlip(prob=0.5, spatial_axis=0),
            RandAffine(prob=0.2, rotate_range=(0.26, 0.05, 0.05), scale_range=0.1, padding_mode="border"),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandHistogramShift(num_control_points=5, prob=0.5),
            RandGaussianSmooth(prob=0.5),
        ]
    )


class StraightforwardPipeline:
    """Path -> views, loading and preprocessing the whole scan for every item (the CT-FM repo's dataset)."""

    def __init__(self, patch_size, patches_per_scan):
        from monai.transforms import (
            Compose,
            CropForeground,
            EnsureChannelFirst,
            LoadImage,
            Orientation,
            RandSpatialCropSamples,
            ScaleIntensityRange,
            Spacing,
            SpatialPad,
        )

        from ctfm.transforms.preprocess import RAS_LABELS

        self.load = Compose(
            [
                LoadImage(image_only=True),
                EnsureChannelFirst(),
                Orientation(axcodes="SPL", labels=RAS_LABELS, lazy=True),
                Spacing(pixdim=(3.0, 1.0, 1.0), mode="bilinear", lazy=True),
                ScaleIntensityRange(a_min=-1024, a_max=2048, b_min=0.0, b_max=1.0, clip=True),
                CropForeground(select_fn=lambda x: x > (-500 + 1024) / 3072),
                SpatialPad(spatial_size=patch_size),
                RandSpatialCropSamples(roi_size=patch_size, num_samples=patches_per_scan, random_size=False),
            ]
        )
        self.augment = straightforward_augmentation(patch_size)

    def __call__(self, path: str) -> dict:
        patches = self.load(path)
        views = torch.stack([torch.stack([self.augment(p).as_tensor() for _ in range(2)]) for p in patches])
        return {"views": views, "image": path}


def make_sources(folder: Path, count: int, size: str) -> list[Path]:
    from ctfm.data.sample import generate_ct, write_nifti

    shape, spacing = SOURCE[size]
    return [write_nifti(generate_ct(shape, spacing, seed=i), folder / f"scan_{i}.nii.gz") for i in range(count)]


def cpu_seconds(batches: object) -> float:
    """CPU seconds (user + system) used so far by this process and the live DataLoader workers of ``batches``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for worker in getattr(batches, "_workers", []):
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def own_memory_mib(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident set of this process image; VmHWM restarts at exec, ru_maxrss not."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field))) / 1024


def run_worker(args: argparse.Namespace) -> dict:
    """Iterate one pipeline's DataLoader and report views per second and peak memory."""
    from monai.data import DataLoader, Dataset

    from ctfm.data.pretrain import CTPretrainDataModule

    imports_mib = own_memory_mib("VmRSS")
    sources = sorted(Path(args.folder, "scans").glob("*.nii.gz"))
    patch, patches = tuple(args.patch), args.patches
    if args.worker == "straightforward":
        loader: torch.utils.data.DataLoader = DataLoader(
            Dataset([str(s) for s in sources], transform=StraightforwardPipeline(patch, patches)),
            batch_size=1,
            num_workers=args.workers,
        )
    else:
        augmentation = straightforward_augmentation(patch) if args.worker.endswith("straightforward-views") else None
        module = CTPretrainDataModule(
            [str(s) for s in sources],
            cache_dir=Path(args.folder, "cache"),
            patch_size=patch,
            patches_per_scan=patches,
            scans_per_device=1,
            num_workers=args.workers,
            steps_per_epoch=args.items,
            augmentation=augmentation,
            views_on="device" if args.worker == "cached-device-views" else "workers",
        )
        module.setup("fit")
        loader = module.train_dataloader()
    from ctfm.transforms.device_views import DeviceViews

    device_views = DeviceViews()
    augment_s = 0.0
    batches = iter(loader)
    scans = 0
    first = True
    for batch in batches:
        if first:  # time from the first batch on: the workers have started (forked) and warmed up
            cpu_start, start, first = cpu_seconds(batches), time.perf_counter(), False
            continue
        if "patches" in batch:
            began = time.process_time()
            batch["views"] = device_views(batch.pop("patches"), device_views.generator(0, scans))
            augment_s += time.process_time() - began
        assert batch["views"].shape[1:] == (patches, 2, 1, *patch)
        scans += batch["views"].shape[0]
    seconds = time.perf_counter() - start
    cpu_s = cpu_seconds(batches) - cpu_start
    del batches, loader
    views = scans * patches * 2
    return {
        "views_per_s": views / seconds,
        # Per core = per CPU second (user + system, this process and its workers), which a busy shared machine
        # changes far less than wall time. For device views: the reading, then the augmentation (one thread).
        "read_per_core": views / (cpu_s - augment_s),
        "augment_per_core": views / augment_s if augment_s else None,
        "scans": scans,
        "seconds": seconds,
        "imports_mib": imports_mib,
        "main_mib": own_memory_mib(),
        "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=6, help="source scans (default 6)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for every pipeline (default 2)")
    parser.add_argument("--patch", type=int, nargs=3, default=[24, 128, 128])
    parser.add_argument("--patches", type=int, default=20, help="patches per scan (default 20)")
    parser.add_argument(
        "--items", type=int, default=48, help="scans drawn per timing; the first one only warms up (default 48)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timings per pipeline; the fastest counts (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sources (80 x 256 x 256)")
    parser.add_argument("--pipelines", nargs="*", choices=PIPELINES, default=list(PIPELINES), help="default: all")
    parser.add_argument("--gpu-scans", type=int, default=16, help="scans of a full-size GPU step (default 16)")
    parser.add_argument(
        "--step-seconds", type=float, nargs=2, default=[0.4, 1.0], help="full-size step time range (0.4 1.0)"
    )
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.items < 2:
        parser.error("--items must be at least 2: the first scan only warms the workers up")
    if args.worker:
        torch.set_num_threads(1)
        print(json.dumps(run_worker(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = "quick" if args.quick else "full"
        shape, spacing = SOURCE[size]
        print(
            f"sources: {args.scans} x {shape} voxels at {spacing} mm (z, y, x); views: {args.patches} patches x 2 "
            f"of {tuple(args.patch)} per scan; {args.workers} DataLoader workers; torch threads 1 per process"
        )
        sources = make_sources(folder / "scans", args.scans, size)

        from ctfm.data.cache import PreprocessCache
        from ctfm.transforms.preprocess import CTPreprocessing

        cache = PreprocessCache(folder / "cache", CTPreprocessing(min_size=tuple(args.patch)))
        start = time.perf_counter()
        report = cache.prepare(sources, workers=args.workers, progress=False)
        prepare_s = time.perf_counter() - start
        shapes = {tuple(scan.load().shape[1:]) for scan in report.scans}
        print(
            f"cache: prepared {len(report.prepared)} scans in {prepare_s:.1f} s with {args.workers} processes "
            f"(one-off; {prepare_s * args.workers / len(sources):.1f} s per scan per process), cached shapes {shapes}"
        )

        results: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits one round, not one pipeline
            for name in args.pipelines:
                command = [sys.executable, __file__, "--worker", name, "--folder", tmp, *sys.argv[1:]]
                run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                if name not in results or run["views_per_s"] > results[name]["views_per_s"]:
                    results[name] = run
        if not results:
            report_device(args, {})
            return
        base = next(iter(results.values()))["views_per_s"]
        print(f"{'pipeline':30s} {'views/s':>9s} {'ratio':>7s} {'scans':>6s} {'seconds':>8s}   peak MiB: main / worker")
        for name, r in results.items():
            print(
                f"{name:30s} {r['views_per_s']:9.1f} {r['views_per_s'] / base:6.1f}x {r['scans']:6d} "
                f"{r['seconds']:8.1f} {r['main_mib']:13.0f} / {r['worker_mib']:.0f}"
            )
        imports = max(r["imports_mib"] for r in results.values())
        print(f"(~{imports:.0f} MiB of each is torch, MONAI and Lightning imports; forked workers share it)")
        report_device(args, results)


def time_device_views(device: str, scans: int, patches: int, patch: tuple[int, ...], repeats: int = 5) -> float:
    """Seconds for :class:`DeviceViews` to make the views of ``scans`` x ``patches`` random uint16 patches."""
    from ctfm.transforms.device_views import DeviceViews

    views = DeviceViews()
    codes = torch.randint(0, 65536, (scans, patches, 1, *patch), dtype=torch.int32).to(torch.uint16).to(device)
    best = float("inf")
    for step in range(repeats + 1):  # the first call warms up (kernels, allocator) and does not count
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        views(codes, views.generator(0, step))
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            best = min(best, time.perf_counter() - start)
    return best


def report_device(args: argparse.Namespace, results: dict[str, dict]) -> None:
    """Views/s per CPU core of each pipeline and the cores one GPU needs; the GPU's own views/s where there is one."""
    low, high = (STEP_VIEWS / s for s in sorted(args.step_seconds, reverse=True))
    print(
        f"\none GPU consumes {low:.0f}-{high:.0f} views/s (assumed: a full-size step of {STEP_VIEWS} views of "
        f"24 x 128 x 128 takes {min(args.step_seconds)}-{max(args.step_seconds)} s in bf16)"
    )
    rows = []
    if "cached" in results:
        rows.append(("workers: cached views", results["cached"]["read_per_core"]))
    if "cached-device-views" in results:
        r = results["cached-device-views"]
        rows.append(("device: workers read patches", r["read_per_core"]))
        rows.append(("device views on a CPU (1 thread)", r["augment_per_core"]))
        both = 1 / (1 / r["read_per_core"] + 1 / r["augment_per_core"])
        rows.append(("device views, all on a CPU", both))
    for name, per_core in rows:
        cores = f"{low / per_core:5.1f}-{high / per_core:5.1f}"
        print(f"{name:36s} {per_core:8.1f} views/s per CPU core -> {cores} cores per GPU")
    if "cached-device-views" in results:
        print("(device views on a GPU need only the reading cores: the 'workers read patches' row)")
    if not torch.cuda.is_available():
        print(
            "no CUDA device: for the GPU's views/s and share of a step, run on a machine with one\n"
            "  python benchmarks/pretrain_data.py --pipelines cached cached-device-views\n"
            "(or with --pipelines alone, for the GPU part only)"
        )
        return
    patch = tuple(args.patch)
    seconds = time_device_views("cuda", args.gpu_scans, args.patches, patch)
    count = args.gpu_scans * args.patches * 2
    print(
        f"GPU ({torch.cuda.get_device_name()}): {count} views of {patch} in {seconds * 1e3:.1f} ms = "
        f"{count / seconds:.0f} views/s; {100 * seconds / max(args.step_seconds):.1f}-"
        f"{100 * seconds / min(args.step_seconds):.1f} % of a {min(args.step_seconds)}-{max(args.step_seconds)} s step"
    )


if __name__ == "__main__":
    main()
