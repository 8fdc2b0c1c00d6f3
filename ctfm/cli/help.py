"""What every ``ctfm ... --help`` shows besides the options: each option's default, one example, the exit codes.

Examples live here, one per command path, so the command modules stay about their options; :func:`finish_help`
gives every parser the shared formatter and its example after the commands have registered.
"""

from __future__ import annotations

import argparse

from ctfm.reports import EXIT_CODES_HELP

#: One example per command path (``"idc download"``); a parser without one gets no epilog.
EXAMPLES: dict[str, str] = {
    "quickstart": "ctfm quickstart --out runs/quickstart --scans 8",
    "embed": "ctfm embed scans/*.nii.gz --model ct-fm --out embeddings.parquet\n"
    "  ctfm embed cases/*/ct.nii.gz --masks '{dir}/segmentations' --labels liver,spleen --out organs.parquet\n"
    "  # one row per (scan, organ): each case's TotalSegmentator folder beside its ct.nii.gz",
    "segment": "ctfm segment Totalsegmentator/s0001/ct.nii.gz Totalsegmentator/s0002/ct.nii.gz --out labels\n"
    "  # writes labels/s0001_ct.nii.gz and labels/s0002_ct.nii.gz",
    "features": "ctfm features lesions.csv --model fmcib --out features.parquet --report rows.csv",
    "probe": "ctfm probe features.parquet --label malignant --out probe",
    "benchmark": "ctfm benchmark probe labels.csv --models ct-fm random:ct-fm --protocol roi --out bench",
    "benchmark probe": "ctfm benchmark probe amos/labels.csv --models ct-fm random:ct-fm runs/distill/student "
    "--protocol roi --device cuda --out bench\n"
    "  # runs/distill/student: a student distilled with the distill recipe and exported (none is published)",
    "search": "ctfm search scans/query.nii.gz --table embeddings.parquet -k 10 --out neighbours.csv",
    "retrieval-eval": "ctfm retrieval-eval organmnist3d.npz --model ct-fm --out retrieval",
    "semantic-search": "ctfm semantic-search source.nii.gz --point 10 -20 35 s0001/ct.nii.gz s0002/ct.nii.gz "
    "--out search",
    "prototypes": "ctfm prototypes --images a.nii.gz --labels a_labels.nii.gz --classes 1=liver 2=spleen "
    "--out prototypes.pt",
    "pseudo-label": "ctfm pseudo-label s0001/ct.nii.gz s0002/ct.nii.gz --prototypes prototypes.pt --out pseudo",
    "analyse": "ctfm analyse pca a.nii.gz b.nii.gz --out pictures",
    "analyse saliency": "ctfm analyse saliency scan.nii.gz --point 10 -20 35 --out saliency",
    "analyse pca": "ctfm analyse pca a.nii.gz b.nii.gz --out pictures",
    "analyse tsne": "ctfm analyse tsne --table embeddings.parquet --labels labels.csv --column organ --out pictures",
    "analyse stability": "ctfm analyse stability scan1.nii.gz scan2.nii.gz --shift 0 0 5 --out stability",
    "export": "ctfm export runs/pretrain/checkpoints/last.ckpt my-encoder",
    "prepare": "ctfm prepare datalist.csv --workers 8 --report prepare.csv",
    "idc": "ctfm idc query ctfm_pretraining_offline --out selection.csv",
    "idc query": "ctfm idc query random_subset --param n=100 --param seed=0 --out selection.csv",
    "idc queries": "ctfm idc queries",
    "idc download": "ctfm idc download selection.csv --out dicom",
    "idc convert": "ctfm idc convert dicom --out volumes",
    "models": "ctfm models",
    "recipes": "ctfm recipes",
    "recipes copy": "ctfm recipes copy pretrain my_recipes",
    "diffusion": "ctfm diffusion sample last.ckpt --window 1500 -500 --out samples",
    "diffusion sample": "ctfm diffusion sample last.ckpt --window 1500 -500 --n 4 --out samples",
}

EPILOG = f"""example:
  ctfm embed scans/*.nii.gz --out embeddings.parquet

{EXIT_CODES_HELP}"""


def shown_default(action: argparse.Action) -> str | None:
    """How help shows an option's default, or None where there is none worth saying (unset, off, a positional)."""
    default = action.default
    if (
        default is None
        or default is False
        or default == []
        or default is argparse.SUPPRESS
        or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
    ):
        return None
    return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs keep their lines; an option with a default worth saying ends its help with ``(default: ...)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = shown_default(action)
        if shown is None or "default" in text:
            return text
        return f"{text} (default: {shown})".strip()


def finish_help(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give ``parser`` and every sub-command below it the shared formatter and, where it has one, its example."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            command = f"{path} {name}".strip()
            sub.formatter_class = HelpFormatter
            for option in sub._actions:
                shown = shown_default(option)
                if option.help is None and shown is not None:  # argparse prints no help line for it otherwise
                    option.help = f"(default: {shown})"
            example = EXAMPLES.get(command)
            if example and not sub.epilog:
                sub.epilog = f"example:\n  {example}"
            elif example:
                sub.epilog = f"{sub.epilog}\n\nexample:\n  {example}"
            finish_help(sub, command)
