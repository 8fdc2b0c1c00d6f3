import nibabel as nib
import numpy as np
import pytest
import torch
from labelled_sample import CLASSES, PATCH

from ctfm.analysis.prototypes import PrototypeMismatchError, Prototypes, compute_prototypes
from ctfm.analysis.pseudo_labels import PostProcessing, evaluate, labels_from_maps
from ctfm.analysis.similarity_maps import normalise, prototype_cache, similarity_maps
from ctfm.nn import ct_fm_encoder
from ctfm.transforms.preprocess import CTPreprocessing

NATIVE = CTPreprocessing(spacing=None)
#: Lower bounds of Dice on the shifted copy (measured 0.80 lung, 0.65 abdomen with this encoder, in each
#: threshold mode): the windows are 4 x 8 x 8 voxels, 24 x 32 x 32 mm, at a stride of half that, so a map cannot
#: place a boundary closer than about 12 mm, a third of the lungs' width and half the solid organs' in these coarse
#: scans. A map that ignores anatomy scores near zero (the swapped-prototype check below), so these bounds separate
#: working maps from broken ones with room for float differences between machines.
MIN_DICE = {"lung": 0.7, "abdomen": 0.5}


@pytest.fixture(scope="module")
def prototypes(tiny_encoder, labelled):
    _, reference, labels, _, _ = labelled
    # Many centres: every reference window is (nearly) its own prototype, so a copy of the reference is recognised
    # window by window and what remains is the maps' resolution.
    return compute_prototypes(tiny_encoder, [reference], [labels], preprocess=NATIVE, patch_size=PATCH, centres=64)


def test_a_shifted_lps_copy_of_the_reference_gets_its_labels_back_on_its_own_grid(tiny_encoder, labelled, prototypes):
    _, _, _, target, truth = labelled
    maps = similarity_maps(tiny_encoder, target, prototypes)
    image = nib.load(target)
    assert nib.aff2axcodes(image.affine) != ("L", "P", "S")  # not the sample's own orientation
    assert maps.maps.shape == (3, *image.shape)
    np.testing.assert_allclose(np.asarray(maps.scan.affine), image.affine, atol=1e-6)
    assert maps.maps.min() >= 0.0 and maps.maps.max() <= 1.0
    reference = np.asarray(nib.load(truth).dataobj)
    two_lungs = PostProcessing(sigma_mm=4.0, largest_component=False)  # the largest component would keep one lung
    labels = labels_from_maps(maps.maps, image.affine, two_lungs)
    dice = {row["class"]: row["dice"] for row in evaluate(labels, reference, image.affine, maps.class_names)}
    assert all(dice[name] > bound for name, bound in MIN_DICE.items()), dice
    # Swapping the lung and background prototypes must break the lungs: the maps follow the prototypes.
    swapped = Prototypes(prototypes.vectors, prototypes.owner.clone(), prototypes.class_names, prototypes.settings)
    swapped.owner[prototypes.owner == 0], swapped.owner[prototypes.owner == 1] = 1, 0
    wrong = labels_from_maps(similarity_maps(tiny_encoder, target, swapped).maps, image.affine)
    assert evaluate(wrong, reference, image.affine, maps.class_names)[0]["dice"] < 0.2


def test_max_aggregation_and_every_normalisation(tiny_encoder, labelled, prototypes):
    _, _, _, target, truth = labelled
    reference = np.asarray(nib.load(truth).dataobj)
    inside_lung = reference == 1
    for aggregation, how in (("max", "minmax"), ("mean", "sigmoid"), ("mean", "softmax")):
        maps = similarity_maps(tiny_encoder, target, prototypes, aggregation=aggregation, normalisation=how,
                               temperature=0.02).maps  # fmt: skip
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        # The lung channel is higher inside the lungs than outside them.
        assert maps[1][inside_lung].mean() > maps[1][~inside_lung].mean() + 0.2, (aggregation, how)
        if how == "softmax":
            np.testing.assert_allclose(maps.sum(axis=0), 1.0, atol=1e-5)


def test_normalisations_on_known_values():
    maps = np.array([[[[0.2, 0.4, 0.6]]], [[[0.9, 0.9, 0.95]]]])
    # One scale for every channel: the map's own minimum and maximum, its mean as the sigmoid's centre.
    np.testing.assert_allclose(normalise(maps, "minmax")[:, 0, 0].ravel(), (maps.ravel() - 0.2) / 0.75, atol=1e-6)
    sigmoid = normalise(maps, "sigmoid", temperature=0.1)
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-(maps - maps.mean()) / 0.1)), atol=1e-6)
    soft = normalise(maps, "softmax", temperature=0.1)
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
    assert soft[1, 0, 0, 0] == pytest.approx(1 / (1 + np.exp(-7)), abs=1e-5)


def test_prototypes_from_another_model_preprocessing_or_width_are_refused(tiny_encoder, prototypes):
    torch.manual_seed(1)
    other = ct_fm_encoder(init_filters=4).eval()
    with pytest.raises(PrototypeMismatchError, match="p.pt: prototypes were made with another model"):
        prototype_cache(other, prototypes, where="p.pt")
    with pytest.raises(PrototypeMismatchError, match="prototypes were made with preprocessing"):
        prototype_cache(tiny_encoder, prototypes, preprocess=CTPreprocessing())
    with pytest.raises(PrototypeMismatchError, match="prototypes were made with patch_size"):
        prototype_cache(tiny_encoder, prototypes, patch_size=(8, 16, 16))
    text = Prototypes.from_matrix(np.ones((3, 16)), ("background", *CLASSES.values()), patch_size=PATCH,
                                  preprocessing=NATIVE)  # fmt: skip
    with pytest.raises(PrototypeMismatchError, match="reference vectors are 16-d, the model embeds 64-d"):
        prototype_cache(tiny_encoder, text)


def test_a_matrix_of_the_right_width_gives_the_same_maps_as_its_prototypes(tiny_encoder, labelled):
    _, reference, labels, target, _ = labelled
    means = compute_prototypes(tiny_encoder, [reference], [labels], preprocess=NATIVE, patch_size=PATCH)
    matrix = Prototypes.from_matrix(means.vectors.numpy(), means.class_names, patch_size=PATCH, preprocessing=NATIVE,
                                    overlap=means.settings["overlap"])  # fmt: skip
    np.testing.assert_allclose(
        similarity_maps(tiny_encoder, target, matrix).maps, similarity_maps(tiny_encoder, target, means).maps
    )
