"""``ctfm probe``: a linear probe (standardise + logistic regression) on a features table, with bootstrap CIs."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("probe", help="linear probe on a features table: AUROC, balanced accuracy, mAP")
    parser.add_argument("features", help="Parquet (or CSV) from `ctfm features` or `ctfm embed`, with a label column")
    parser.add_argument("--label", required=True, help="the column to predict")
    parser.add_argument(
        "--out", required=True, help="folder for probe.json, predictions.csv, roc.png, training_fraction.png"
    )
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="training fractions")
    parser.add_argument("--test-size", type=float, default=0.2, help="test fraction when there is no split column")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the test rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ctfm.analysis.probe import run_probe
    from ctfm.atomic import write_atomically
    from ctfm.errors import CTFMError
    from ctfm.plotting import roc_curves, training_fraction_curve

    source = Path(args.features)
    try:
        table = pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
    except (OSError, ValueError) as err:
        raise CTFMError(f"{source}: cannot read the features table ({err})") from err
    results = run_probe(
        table,
        args.label,
        fractions=args.fractions,
        test_size=args.test_size,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        source=str(source),
    )
    out = Path(args.out)
    predictions = results.pop("predictions")
    write_atomically(out / "probe.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    write_atomically(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    roc_curves(results["roc"], out / "roc.png", title=f"{args.label}: linear probe")
    training_fraction_curve(results["training_fraction"], out / "training_fraction.png")
    print(f"{args.label}: {results['n_train']} train / {results['n_test']} test rows, C = {results['C']:g}")
    for name, metric in results["metrics"].items():
        print(f"  {name}: {metric['value']:.3f} (95% CI {metric['ci_low']:.3f}-{metric['ci_high']:.3f})")
    print(f"wrote {out / 'probe.json'}, predictions.csv, roc.png, training_fraction.png")
    return 0
