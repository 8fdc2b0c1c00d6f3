"""``ctfm probe``: a linear probe (standardise + logistic regression) on a features table, with bootstrap CIs."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import positive_int
    from ctfm.outputs import OVERWRITE_HELP

    parser = subparsers.add_parser("probe", help="linear probe on a features table: AUROC, balanced accuracy, mAP")
    parser.add_argument("features", help="Parquet (or CSV) from `ctfm features` or `ctfm embed`, with a label column")
    parser.add_argument("--label", required=True, help="the column to predict")
    parser.add_argument(
        "--out", required=True, help="folder for probe.json, predictions.csv, roc.png, training_fraction.png"
    )
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="training fractions")
    parser.add_argument("--test-size", type=float, default=0.2, help="test fraction when there is no split column")
    parser.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples of the test rows")
    parser.add_argument("--seed", type=int, default=0, help="of the split, the probe and the bootstrap")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ctfm.analysis.probe import read_features, run_probe
    from ctfm.atomic import write_atomically
    from ctfm.outputs import output_folder, refuse_overwrite
    from ctfm.plotting import roc_curves, training_fraction_curve
    from ctfm.provenance import describe_input, record_command

    out = output_folder(args.out)
    refuse_overwrite([out / name for name in ("probe.json", "roc.png", "training_fraction.png")], args.overwrite)
    source = Path(args.features)
    table = read_features(source)
    results = run_probe(
        table,
        args.label,
        fractions=args.fractions,
        test_size=args.test_size,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        source=str(source),
    )
    predictions = results.pop("predictions")
    write_atomically(out / "probe.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    write_atomically(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    roc_curves(results["roc"], out / "roc.png", title=f"{args.label}: linear probe")
    training_fraction_curve(results["training_fraction"], out / "training_fraction.png")
    record_command(out, args, extra_inputs=[describe_input(source)])
    print(f"{args.label}: {results['n_train']} train / {results['n_test']} test rows, C = {results['C']:g}")
    for reason, count in results["dropped_rows"].items():
        if count:
            print(f"  left out {count} row(s) with {reason}")
    for name, metric in results["metrics"].items():
        print(f"  {name}: {metric['value']:.3f} (95% CI {metric['ci_low']:.3f}-{metric['ci_high']:.3f})")
    print(f"wrote {out / 'probe.json'}, predictions.csv, roc.png, training_fraction.png")
    return 0
