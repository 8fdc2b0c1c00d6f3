"""The classification recipes: they resolve to the paper's settings, train, test and predict through lighter."""

import logging
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.transforms import Compose
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.recipes import load_recipe, run_recipe

#: A 4-filter encoder on 8 x 32 x 32 crops, one epoch of 3 steps: seconds on a CPU.
TINY = [
    "vars::weights=none",
    "vars::init_filters=4",
    "=vars::roi_size=[8,32,32]",
    "vars::batch_size=2",
    "vars::num_workers=0",
    "vars::precision=32-true",
    "trainer::accelerator=cpu",
    "vars::max_epochs=1",
    "trainer::enable_progress_bar=false",
    "trainer::enable_model_summary=false",
    "trainer::log_every_n_steps=1",
]


def resolved(*inputs):
    config = Config()
    for item in inputs:
        config.update(load_recipe(item) if isinstance(item, Path) else item)
    return config


def run(stage, run_dir, *inputs, **kwargs):
    cwd = os.getcwd()
    os.chdir(run_dir)  # lighter looks for a __lighter__.py project file in the working folder
    try:
        run_recipe(stage, [*inputs, f"vars::output_dir={run_dir}", *TINY], **kwargs)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    from ctfm.data.sample_head import make_head_dataset

    return make_head_dataset(tmp_path_factory.mktemp("heads"), n_scans=8, shape=(12, 48, 48), spacing=(5.0, 2.5, 2.5))


def test_head_ct_triage_is_the_paper_setting(heads):
    config = resolved(
        RECIPES / "head_ct_triage.yaml",
        f"vars::datalist={heads}",
        "vars::weights=none",
    )
    v = config.get("vars")
    assert v["spacing"] == [5.0, 2.0, 2.0] and v["roi_size"] == [48, 128, 128]
    assert (v["lr"], v["weight_decay"], v["max_epochs"], v["warmup_epochs"]) == (1e-4, 1e-5, 40, 0)
    model = config.resolve("model")
    head = [m for m in model.network.head if isinstance(m, torch.nn.Linear)]
    assert [(h.in_features, h.out_features) for h in head] == [(512, 256), (256, 1)]
    assert isinstance(model.criterion, torch.nn.BCEWithLogitsLoss)
    assert type(model.optimizer).__name__ == "AdamW" and model.optimizer.defaults["weight_decay"] == 1e-5
    checkpoint = config.get("trainer::callbacks")[1]  # after the QuietLightning callback
    assert (checkpoint["monitor"], checkpoint["mode"]) == ("val/metrics/AUROC/epoch", "max")
    affine = config.get("data::train_transforms::transforms")[5]
    assert (affine["prob"], affine["rotate_range"], affine["scale_range"]) == (0.2, [0.26] * 3, [0.2] * 3)
    data = config.resolve("data")
    steps = data.eval_transforms.transforms
    hu = Compose(steps[:-1])(data.items("all")[1])["image"]
    # Cropped to the head, resampled to 5 x 2 x 2 mm (z, y, x), padded with air to 48 x 128 x 128.
    assert tuple(hu.shape) == (1, 48, 128, 128) and float(hu.min()) == float(hu[0, 0, 0, 0]) < -900
    assert torch.allclose(hu.affine[:3, :3].abs().sum(0), torch.tensor([5.0, 2.0, 2.0], dtype=hu.affine.dtype))
    image = steps[-1]({"image": hu})["image"]
    # Four windows of 48 slices stacked along z, in the order blood, subdural, stroke, bone.
    assert tuple(image.shape) == (1, 192, 128, 128)
    for block, (low, high) in zip(image[0].reshape(4, 48, 128, 128), [(0, 80), (-125, 175), (28, 36), (-900, 2100)]):
        assert torch.allclose(block, ((hu[0] - low) / (high - low)).clamp(0, 1), atol=1e-6)


TRIAGE = [RECIPES / "head_ct_triage.yaml"]


@pytest.fixture(scope="module")
def triage_run(tmp_path_factory, heads):
    """One tiny fit of the triage recipe, shared: its folder holds checkpoints/best.ckpt and last.ckpt."""
    run_dir = tmp_path_factory.mktemp("triage")
    run("fit", run_dir, *TRIAGE, f"vars::datalist={heads}")
    return run_dir


def test_triage_fits_tests_and_predicts(triage_run, heads):
    best = triage_run / "checkpoints" / "best.ckpt"
    assert best.is_file() and (triage_run / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(best, weights_only=True)
    monitored = [state for key, state in checkpoint["callbacks"].items() if "ModelCheckpoint" in key]
    assert monitored[0]["monitor"] == "val/metrics/AUROC/epoch"
    run("test", triage_run, *TRIAGE, f"vars::datalist={heads}", ckpt_path=str(best))
    predictions = pd.read_csv(triage_run / "predictions.csv")
    table = pd.read_csv(heads)
    assert list(predictions.columns) == ["image", "probability", "prediction", "label"]
    assert len(predictions) == 1  # the 8:1:1 split of 8 scans keeps one for testing
    row = predictions.iloc[0]
    expected = {os.path.normpath(heads.parent / p): label for p, label in zip(table["image"], table["label"])}
    assert row["label"] == expected[row["image"]] and 0.0 <= row["probability"] <= 1.0
    assert row["prediction"] == int(row["probability"] >= 0.5)
    run("predict", triage_run, *TRIAGE, f"vars::datalist={heads}", ckpt_path=str(best))
    assert len(pd.read_csv(triage_run / "predictions.csv")) == 8


def test_cq500_reads_evaluate_a_triage_checkpoint(triage_run, heads, tmp_path):
    """reads.csv (three readers, one finding column each) + scans named as CQ500 names them -> 4 test rows."""
    scans = tmp_path / "scans"
    scans.mkdir()
    table = pd.read_csv(heads)
    for k, image in enumerate(table["image"][:4]):
        (scans / f"CQ500-CT-{k}.nii.gz").symlink_to(heads.parent / image)
    reads = pd.DataFrame(
        {
            "name": [f"CQ500-CT-{k}" for k in range(5)],  # the fifth has no scan: left out
            "Category": ["B1"] * 5,
            "R1:ICH": [0, 1, 0, 0, 1],
            "R2:ICH": [0, 0, 0, 0, 1],
            "R3:Fracture": [0, 0, 1, 0, 0],
        }
    )
    reads.to_csv(tmp_path / "reads.csv", index=False)
    out = tmp_path / "run"
    out.mkdir()
    cq500 = [
        RECIPES / "cq500.yaml",
        f"vars::cq500_reads={tmp_path / 'reads.csv'}",
        f"vars::cq500_images={scans}",
    ]
    run("test", out, *cq500, ckpt_path=str(triage_run / "checkpoints" / "best.ckpt"))
    labels = pd.read_csv(out / "cq500_labels.csv")
    assert labels["label"].tolist() == [0, 1, 1, 0] and set(labels["split"]) == {"test"}
    predictions = pd.read_csv(out / "predictions.csv")
    assert sorted(predictions["image"]) == sorted(labels["image"])
    assert predictions.set_index("image")["label"].to_dict() == labels.set_index("image")["label"].to_dict()


def test_classification_multiclass_with_splits(tmp_path, heads):
    table = pd.read_csv(heads)
    table["label"] = ["a", "b", "c", "a", "b", "c", "a", "b"]
    table["split"] = ["train"] * 6 + ["val", "test"]
    table["image"] = [str(heads.parent / p) for p in table["image"]]
    csv = tmp_path / "multi.csv"
    table.to_csv(csv, index=False)
    recipe = [RECIPES / "classification.yaml", f"vars::datalist={csv}", "vars::num_classes=3", "=vars::spacing=[5,2,2]"]
    run("fit", tmp_path, *recipe)
    run("test", tmp_path, *recipe, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == [
        "image",
        "probability_0",
        "probability_1",
        "probability_2",
        "prediction",
        "label",
    ]
    assert predictions[["probability_0", "probability_1", "probability_2"]].sum(axis=1).round(5).tolist() == [1.0]
    assert predictions["label"].tolist() == [
        1
    ]  # "b", the second of a, b, c and predictions["image"].tolist() == [table["image"][7]]


class _Lines(logging.Handler):
    """Keeps the messages of one logger (lighter reroutes the root logger's, so caplog sees none)."""

    def __init__(self, name):
        super().__init__(logging.WARNING)
        self.messages = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)

    @property
    def text(self):
        return "\n".join(self.messages)


def test_bad_rows_and_a_corrupt_scan_are_skipped_named_and_counted(tmp_path, heads):
    """A blank label, a missing scan and a corrupt scan among good rows: set-up names the lines, training and
    validation go on over the good scans, the end of the run counts the corrupt one, and the test predictions hold
    the good scans only."""
    table = pd.read_csv(heads)
    table["image"] = [str(heads.parent / p) for p in table["image"]]
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(Path(table["image"][0]).read_bytes()[:300])  # a truncated gzip
    bad = pd.DataFrame(
        {"image": [table["image"][1], str(tmp_path / "gone.nii.gz"), str(corrupt)], "label": [None, 1, 0]}
    )
    table = pd.concat([table, bad], ignore_index=True)
    table["split"] = ["train"] * 4 + ["val", "val", "test", "test", "train", "train", "val"]
    csv = tmp_path / "labels.csv"
    table.to_csv(csv, index=False)
    recipe = [*TRIAGE, f"vars::datalist={csv}"]
    with _Lines("ctfm.data.base") as caplog:
        run("fit", tmp_path, *recipe)
    assert f"{csv}: line 10: no 'label' value (kept for predict only); skipped" in caplog.text
    assert f"{csv}: line 11: image {tmp_path / 'gone.nii.gz'} does not exist; skipped" in caplog.text
    assert f"skipping {corrupt}: " in caplog.text
    assert f"1 items skipped because they failed to load (see the warnings above): {corrupt}" in caplog.text
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    monitored = [state for key, state in best["callbacks"].items() if "ModelCheckpoint" in key][0]
    assert torch.isfinite(torch.as_tensor(monitored["best_model_score"]))  # validation AUROC over the two good scans
    run("test", tmp_path, *recipe, ckpt_path=str(tmp_path / "checkpoints" / "best.ckpt"))
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert sorted(predictions["image"]) == sorted(table["image"][6:8])
