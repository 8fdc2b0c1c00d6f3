"""Distilling an encoder: the student reads what the teacher reads, its loss falls, and it exports like any model."""

import os

import pytest
import torch
from recipe_runner import RECIPES

import ctfm
from ctfm.losses import EmbeddingDistillationLoss
from ctfm.nn import DistillationStudent, ct_fm_encoder, embedding_width
from ctfm.quickstart import epoch_losses
from ctfm.recipes import run_recipe


def test_the_student_is_projected_onto_the_teachers_width():
    student = DistillationStudent(ct_fm_encoder(init_filters=4), ct_fm_encoder(init_filters=8))
    assert (embedding_width(student.student), embedding_width(ct_fm_encoder(init_filters=8))) == (64, 128)
    assert student(torch.rand(2, 1, 16, 32, 32)).shape == (2, 128)
    same = DistillationStudent(ct_fm_encoder(init_filters=8), ct_fm_encoder(init_filters=8))
    assert isinstance(same.projection, torch.nn.Identity)


def test_a_student_whose_input_differs_from_the_teachers_is_refused():
    with pytest.raises(ValueError, match="student's in_channels is 2 but the teacher's is 1"):
        DistillationStudent(ct_fm_encoder(in_channels=2, init_filters=4), ct_fm_encoder(init_filters=8))


def test_loss_is_mse_plus_the_cosine_term():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert EmbeddingDistillationLoss()(a, b).item() == pytest.approx(2.5)
    assert EmbeddingDistillationLoss(cosine_weight=0.5)(a, b).item() == pytest.approx(3.0)


@pytest.mark.slow
def test_distill_recipe_loss_falls_and_the_student_exports(tmp_path):
    from ctfm.data.sample import make_sample_dataset

    datalist = make_sample_dataset(tmp_path / "data", n_scans=3, shape=(24, 80, 80), seed=0)
    torch.manual_seed(0)
    teacher = ctfm.save_pretrained(ct_fm_encoder(init_filters=8), tmp_path / "teacher")
    overrides = [
        f"vars::datalist={datalist}",
        f"vars::output_dir={tmp_path / 'run'}",
        f"vars::teacher={teacher}",
        "vars::student_init_filters=4",
        "=vars::patch_size=[8,32,32]",
        "vars::patches_per_scan=3",
        "vars::scans_per_device=2",
        "vars::steps_per_epoch=4",
        "vars::max_epochs=3",
        "vars::warmup_epochs=0",
        "vars::lr=3.0e-3",
        "vars::num_workers=0",
        "vars::precision=32-true",
        "vars::checkpoint_every_n_epochs=1",
        "trainer::accelerator=cpu",
        "trainer::log_every_n_steps=1",
        "trainer::enable_progress_bar=false",
    ]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_recipe("fit", [RECIPES / "distill.yaml", *overrides])
    finally:
        os.chdir(cwd)
    losses, _ = epoch_losses(tmp_path / "run" / "logs")
    assert len(losses) == 3 and losses[-1] < losses[0]

    student_dir = ctfm.export_encoder(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "student")
    student = ctfm.load(student_dir)
    assert type(student).__name__ == "SegResEncoder" and embedding_width(student) == 64
    assert ctfm.embed(student, torch.rand(8, 32, 32), patch_size=(8, 32, 32)).shape == (64,)
