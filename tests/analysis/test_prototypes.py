import numpy as np
import pytest
import torch
from labelled_sample import CLASSES, PATCH

from ctfm.analysis.prototypes import BACKGROUND, Prototypes, compute_prototypes
from ctfm.embedding_table import model_fingerprint
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.transforms.preprocess import CTPreprocessing

NATIVE = CTPreprocessing(spacing=None)


def make(encoder, labelled, **kwargs):
    _, reference, labels, _, _ = labelled
    return compute_prototypes(encoder, [reference], [labels], preprocess=NATIVE, patch_size=PATCH, **kwargs)


def test_one_mean_per_class_from_the_windows_centred_in_it_named_by_the_sidecar(tiny_encoder, labelled):
    prototypes = make(tiny_encoder, labelled)
    assert prototypes.class_names == (BACKGROUND, *CLASSES.values())  # names from reference_labels.json
    assert prototypes.vectors.shape == (3, 64)  # init_filters 4 embeds 64-d
    assert prototypes.owner.tolist() == [0, 1, 2]
    assert all(count > 5 for count in prototypes.counts)
    assert prototypes.settings["model_sha256"] == model_fingerprint(tiny_encoder)
    assert prototypes.settings["patch_size"] == list(PATCH)
    assert prototypes.preprocessing.spacing is None
    # Each class's prototype is nearer its own windows than the other classes' prototypes are.
    cosine = (
        torch.nn.functional.normalize(prototypes.vectors, dim=1)
        @ torch.nn.functional.normalize(prototypes.vectors, dim=1).T
    )
    assert (cosine < 1.0 - 1e-6).sum() == 6  # three distinct vectors


def test_kmeans_centres_and_the_class_flag(tiny_encoder, labelled):
    prototypes = make(tiny_encoder, labelled, classes={2: "organs"}, centres=3)
    assert prototypes.class_names == (BACKGROUND, "organs")
    assert torch.bincount(prototypes.owner).tolist() == [3, 3]
    mean = make(tiny_encoder, labelled, classes={2: "organs"})
    # The centres average (weighted by their clusters) to about the class mean: same windows, other summary.
    assert torch.nn.functional.cosine_similarity(prototypes.vectors[3:].mean(0), mean.vectors[1], dim=0) > 0.99


def test_save_and_load_round_trip(tiny_encoder, labelled, tmp_path):
    prototypes = make(tiny_encoder, labelled)
    loaded = Prototypes.load(prototypes.save(tmp_path / "p.pt"))
    torch.testing.assert_close(loaded.vectors, prototypes.vectors)
    assert loaded.class_names == prototypes.class_names
    assert loaded.settings == prototypes.settings
    assert loaded.counts == prototypes.counts
    assert loaded.class_values == prototypes.class_values == (0, *CLASSES)  # the label values they came from
    assert loaded.reference_values() == {name: value for value, name in CLASSES.items()}
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CTFMError, match="bad.pt: not a prototypes file"):
        Prototypes.load(tmp_path / "bad.pt")


def test_a_matrix_of_reference_vectors_is_accepted_with_one_row_per_class():
    prototypes = Prototypes.from_matrix(np.eye(3, 64), ["background", "lung", "liver"], patch_size=PATCH)
    assert prototypes.dim == 64 and prototypes.settings["model_sha256"] is None
    with pytest.raises(CTFMError, match=r"shape \(2, 32\) for 3 class names"):
        Prototypes.from_matrix(np.eye(2, 32), ["background", "lung", "liver"])


def test_bad_references_are_one_clear_error(tiny_encoder, labelled, tmp_path):
    import nibabel as nib

    _, reference, labels, target, _ = labelled
    with pytest.raises(CTFMError, match="no labelled voxel of class heart"):
        make(tiny_encoder, labelled, classes={1: "lung", 9: "heart"})
    with pytest.raises(InvalidScanError, match="its affine differs .* not on the scan's grid"):
        # the target's labels lie on the target's grid, not the reference's
        compute_prototypes(tiny_encoder, [reference], [labelled[4]], CLASSES, preprocess=NATIVE, patch_size=PATCH)
    image = nib.load(labels)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine), tmp_path / "unnamed.nii.gz")
    with pytest.raises(CTFMError, match="unnamed.nii.gz: no sidecar naming the labels"):
        compute_prototypes(tiny_encoder, [reference], [tmp_path / "unnamed.nii.gz"], preprocess=NATIVE)
    with pytest.raises(CTFMError, match="one label map per image: 2 images, 1 label maps"):
        compute_prototypes(tiny_encoder, [reference, target], [labels])
