"""A labelled reference scan and a shifted, LPS-oriented copy of it: the data of the similarity-label tests
(tests/analysis/conftest.py makes them fixtures; the tests import the constants from here).

Coarse voxels (6 x 4 x 4 mm) keep the whole torso in 24 x 64 x 64 voxels, so a tiny encoder embeds every sliding
window of it in about a second; the scans are read at their own spacing (``CTPreprocessing(spacing=None)``).
"""

from __future__ import annotations

import numpy as np

SHAPE = (24, 64, 64)
SPACING = (6.0, 4.0, 4.0)
#: The two classes: lungs (with their vessels) and the solid abdominal organs (liver, spleen, kidneys).
CLASSES = {1: "lung", 2: "abdomen"}
#: Content shift (voxels, file axes i, j, k) of the target against the reference.
SHIFT = (3, -2, 1)
PATCH = (4, 8, 8)


def shifted(array: np.ndarray, shift, fill) -> np.ndarray:
    out = np.full_like(array, fill)
    source = tuple(slice(max(0, -s), n - max(0, s)) for n, s in zip(array.shape, shift))
    target = tuple(slice(max(0, s), n - max(0, -s)) for n, s in zip(array.shape, shift))
    out[target] = array[source]
    return out


def to_lps_file_order(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in the same world places, stored with the first two file axes reversed (an LPS-like
    orientation instead of the sample's own), so outputs must follow the affine, not the array order."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(array.shape[:2]) - 1
    return np.ascontiguousarray(array[::-1, ::-1]), affine @ flip


def make_labelled(folder):
    """``(folder, reference scan, its labels, target scan, target labels)``: the target is the reference shifted by
    SHIFT voxels and stored in the other orientation; label maps carry ``.json`` sidecars naming CLASSES."""
    import nibabel as nib

    from ctfm.data.sample import generate_ct, write_nifti
    from ctfm.io.label_maps import write_label_map

    sample = generate_ct(SHAPE, SPACING, seed=7)
    reference = write_nifti(sample, folder / "reference.nii.gz")
    image = nib.load(reference)
    tissue = np.zeros_like(sample.labels)
    tissue[np.isin(sample.labels, [3, 4])] = 1
    tissue[np.isin(sample.labels, [5, 6, 7])] = 2
    labels = np.ascontiguousarray(tissue.transpose(2, 1, 0))  # (z, y, x) -> file order (i, j, k) = (x, y, z)
    names = ("background", *CLASSES.values())
    reference_labels = write_label_map(labels, image.affine, folder / "reference_labels.nii.gz", names)
    hu, affine = to_lps_file_order(shifted(np.asarray(image.dataobj), SHIFT, -1024), image.affine)
    target = folder / "targets" / "target.nii.gz"
    target.parent.mkdir()
    nib.save(nib.Nifti1Image(hu, affine), target)
    target_labels, _ = to_lps_file_order(shifted(labels, SHIFT, 0), image.affine)
    truth = write_label_map(target_labels, affine, folder / "truth" / "target.nii.gz", names)
    return folder, reference, reference_labels, target, truth
