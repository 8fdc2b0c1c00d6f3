"""Deterministic synthetic CT volumes with plausible anatomy, for demos, tests and learning checks.

No CT volume with real 3D anatomy installs offline, so the quickstart, the tests and the "do embeddings separate
tissues" check run on these. Anatomy is laid out relative to the field of view (any shape gives a whole torso):
lungs, heart and ribs in the upper (superior) part, liver, spleen and kidneys lower down, a spine whose vertebrae
repeat along z, all with Hounsfield values close to real CT, smooth texture and Gaussian noise. Every structure is
painted with broadcast numpy expressions inside its bounding box, so a 120 x 350 x 350 volume takes 1-2 s.

Array convention: ``hu[z, y, x]`` with z towards the head (superior), y towards the back (posterior) and x towards
the patient's left: the SPL orientation that :class:`ctfm.transforms.CTPreprocessing` produces.

About 400 lines on purpose: the generator and the writers of its files (NIfTI, label maps, a DICOM series, a
dataset with its datalist) are one concept, the bundled sample data, and share one geometry (SPL arrays, RAS
affines, LPS DICOM tags) that is easiest to keep right in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: Demo size: small enough for a CPU, big enough for anatomy and one 24 x 128 x 128 patch after resampling.
DEFAULT_SHAPE = (48, 192, 192)
#: Typical clinical anisotropy: thick slices, fine in-plane pixels (z, y, x) in mm.
DEFAULT_SPACING = (2.5, 1.0, 1.0)

#: Voxel label -> tissue name; ``SampleCT.labels`` holds these per voxel.
TISSUES: dict[int, str] = {
    0: "air",
    1: "fat",
    2: "muscle",
    3: "lung",
    4: "lung_vessel",
    5: "liver",
    6: "spleen",
    7: "kidney",
    8: "heart",
    9: "blood",
    10: "bone",
    11: "disc",
    12: "spinal_cord",
}
LABEL = {name: label for label, name in TISSUES.items()}

# Mean HU and texture amplitude (HU per unit of the smooth field) of each label, indexed by label.
_MEAN_HU = np.array([-1000, -100, 40, -850, 30, 60, 45, 30, 40, 50, 700, 80, 20], dtype=np.float32)
_TEXTURE_HU = np.array([0, 12, 8, 30, 10, 6, 6, 6, 6, 4, 60, 6, 4], dtype=np.float32)
#: Trabecular (spongy) bone inside a vertebral body is this much less dense than the cortical rim.
_TRABECULAR_DROP_HU = 300.0
#: Ribs are thinner than vertebrae, so they image less dense (partial volume).
_RIB_DROP_HU = 100.0
_HU_LIMITS = (-1024, 3071)


@dataclass
class SampleCT:
    """A synthetic CT: HU and tissue labels as ``(z, y, x)`` arrays plus the geometry to write them as a scan."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    seed: int

    @property
    def affine(self) -> np.ndarray:
        """Maps indices of ``hu`` (z, y, x) to RAS mm.

        Usable directly as ``nibabel.Nifti1Image(sample.hu, sample.affine)`` or
        ``MetaTensor(sample.hu[None], affine=sample.affine)``. ``origin`` is the LPS position of voxel (0, 0, 0)
        in DICOM's (x, y, z) order; RAS flips the sign of x and y.
        """
        sz, sy, sx = self.spacing
        ox, oy, oz = self.origin
        return np.array(
            [[0.0, 0.0, -sx, -ox], [0.0, -sy, 0.0, -oy], [sz, 0.0, 0.0, oz], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]


def _unit_gaussian_rows(n: int, cells: int) -> np.ndarray:
    """(n, cells + 4) weights of a Gaussian kernel on a coarse grid, each row of unit L2 norm."""
    nodes = np.linspace(-2.0, cells + 2.0, cells + 4)
    positions = np.linspace(0.0, cells, n)
    weights = np.exp(-0.5 * (positions[:, None] - nodes[None, :]) ** 2)
    return (weights / np.linalg.norm(weights, axis=1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]) -> np.ndarray:
    """Zero-mean, unit-variance random field that varies over ``shape / cells`` voxels.

    Separable Gaussian interpolation of coarse white noise: three matrix products instead of a 3D convolution.
    """
    mz, my, mx = (_unit_gaussian_rows(n, c) for n, c in zip(shape, cells, strict=True))
    coarse = rng.standard_normal((mz.shape[1], my.shape[1], mx.shape[1]), dtype=np.float32)
    field = (mz @ coarse.reshape(mz.shape[1], -1)).reshape(shape[0], my.shape[1], mx.shape[1])
    return np.matmul(my, field) @ mx.T


Box = tuple[slice, slice, slice]


class _Painter:
    """Paints labelled structures given in body coordinates, each inside its own bounding box.

    Body coordinates: ``U`` (patient left +) and ``V`` (posterior +) are 0 at the body centre and 1 on its outline
    in every slice; ``t`` runs from 0 at the bottom slice to 1 at the top one. Working in boxes keeps the cost of a
    small organ small.
    """

    def __init__(self, labels: np.ndarray, t: np.ndarray, U: np.ndarray, V: np.ndarray):
        self.labels, self.t, self.U, self.V = labels, t, U, V

    def slab(self, t_low: float, t_high: float) -> slice:
        """Slices whose t lies in [t_low, t_high]."""
        inside = np.flatnonzero((self.t >= t_low) & (self.t <= t_high))
        return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)

    def ellipse(
        self, zs: slice, cu: float, cv: float, au: np.ndarray | float, av: np.ndarray | float, box: Box | None = None
    ) -> tuple[Box, np.ndarray]:
        """In-plane ellipse centred (cu, cv) with radii (au, av) (per slice if arrays) over slab ``zs``.

        Returns its bounding box (or ``box`` if given) and the mask inside that box.
        """
        U, V = self.U[zs], self.V[zs]
        if box is None:
            cols = np.flatnonzero((np.abs(U - cu) <= au).any(axis=(0, 1)))
            rows = np.flatnonzero((np.abs(V - cv) <= av).any(axis=(0, 2)))
            if not cols.size or not rows.size:  # too thin to cover any voxel centre
                return (zs, slice(0, 0), slice(0, 0)), np.zeros((U.shape[0], 0, 0), dtype=bool)
            box = (zs, slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        return box, ((U[:, :, box[2]] - cu) / au) ** 2 + ((V[:, box[1]] - cv) / av) ** 2 <= 1.0

    def ellipsoid(self, centre: Sequence[float], radii: Sequence[float], label: int, only: Sequence[int] = ()) -> None:
        """Paint an ellipsoid (cu, cv, ct) with radii (au, av, at); ``only`` restricts it to voxels of those labels."""
        cu, cv, ct = centre
        au, av, at = radii
        zs = self.slab(ct - at, ct + at)
        scale = np.sqrt(np.clip(1.0 - ((self.t[zs] - ct) / at) ** 2, 1e-6, None))[:, None, None]
        self.paint(*self.ellipse(zs, cu, cv, au * scale, av * scale), label, only)

    def paint(self, box: Box, mask: np.ndarray, label: int, only: Sequence[int] = ()) -> np.ndarray:
        """Set ``label`` where ``mask`` holds in ``box`` (and the voxel has one of ``only``); returns what it set."""
        target = self.labels[box]
        if only:
            allowed = np.zeros(256, dtype=bool)
            allowed[list(only)] = True
            mask = mask & allowed[target]
        target[mask] = label
        return mask


def _check_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int], tuple[float, ...]]:
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes (z, y, x) of at least 8 voxels, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes (z, y, x) in mm, got {tuple(spacing)}")
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing)  # type: ignore[return-value]


def generate_ct(
    shape: Sequence[int] = DEFAULT_SHAPE, spacing: Sequence[float] = DEFAULT_SPACING, seed: int = 0
) -> SampleCT:
    """Generate one synthetic torso CT; the same seed always gives the same volume, other seeds other anatomy."""
    shape, spacing = _check_geometry(shape, spacing)
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    t = np.linspace(0.0, 1.0, nz, dtype=np.float32)[:, None, None]
    v = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :, None]
    u = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[None, None, :]

    # Body outline: wider than deep, a little larger at the chest, slightly off-centre.
    body_u, body_v = rng.uniform(-0.04, 0.04, 2)
    U = (u - body_u) / (rng.uniform(0.78, 0.9) * (0.95 + 0.07 * t))
    V = (v - body_v) / (rng.uniform(0.55, 0.68) * (0.95 + 0.07 * t))
    labels = np.zeros(shape, dtype=np.uint8)
    paint = _Painter(labels, t[:, 0, 0], U, V)
    every = slice(0, nz)

    fat_outer = rng.uniform(0.06, 0.14)
    cavity_radius = 1.0 - fat_outer - rng.uniform(0.07, 0.11)
    paint.paint(*paint.ellipse(every, 0.0, 0.0, 1.0, 1.0), LABEL["fat"])
    paint.paint(*paint.ellipse(every, 0.0, 0.0, 1.0 - fat_outer, 1.0 - fat_outer), LABEL["muscle"])

    # Fat between the organs (visceral and mediastinal), where a smooth random field is high inside the cavity.
    box, cavity = paint.ellipse(every, 0.0, -0.05, cavity_radius, cavity_radius * 0.92)
    paint.paint(box, cavity & (_smooth_field(rng, cavity.shape, (5, 9, 9)) > 0.6), LABEL["fat"])

    # Lungs: the upper part, apex just above the top slice, base at the diaphragm.
    diaphragm = rng.uniform(0.38, 0.48)
    lung_top = rng.uniform(1.0, 1.08)
    lung_centre_t, lung_half = (diaphragm + lung_top) / 2, (lung_top - diaphragm) / 2
    for side in (-1.0, 1.0):
        paint.ellipsoid(
            (side * rng.uniform(0.38, 0.46), rng.uniform(-0.05, 0.05), lung_centre_t + side * rng.uniform(0, 0.02)),
            (rng.uniform(0.3, 0.36), rng.uniform(0.55, 0.66), lung_half),
            LABEL["lung"],
            only=(LABEL["muscle"], LABEL["fat"]),
        )
    # Vessels branch through the lungs: where two independent smooth fields are both near zero lies a curve.
    box, chest = paint.ellipse(paint.slab(diaphragm, 1.0), 0.0, 0.0, 1.0, 1.0)
    if chest.size:
        first, second = (_smooth_field(rng, chest.shape, (8, 14, 14)) for _ in range(2))
        width = 0.25 * (1.4 - np.minimum(np.abs(U[box[0], :, box[2]]), 1.0))
        paint.paint(box, (np.abs(first) < width) & (np.abs(second) < width), LABEL["lung_vessel"], (LABEL["lung"],))

    # Heart (myocardium with blood-filled chambers), in front, a little to the left, just above the diaphragm.
    heart_t = diaphragm + rng.uniform(0.1, 0.16)
    heart_centre = (rng.uniform(0.08, 0.18), rng.uniform(-0.3, -0.2), heart_t)
    heart_radii = (rng.uniform(0.28, 0.36), rng.uniform(0.26, 0.32), rng.uniform(0.12, 0.16))
    paint.ellipsoid(heart_centre, heart_radii, LABEL["heart"])
    for side in (-1.0, 1.0):
        chamber = (heart_centre[0] + side * 0.35 * heart_radii[0], heart_centre[1], heart_centre[2])
        paint.ellipsoid(chamber, [0.45 * r for r in heart_radii], LABEL["blood"], only=(LABEL["heart"],))

    # Abdomen: spleen on the left, two kidneys at the back, then the liver on the right around them (its dome
    # pushes into the right lung base).
    soft = (LABEL["muscle"], LABEL["fat"], LABEL["lung"], LABEL["lung_vessel"])
    paint.ellipsoid(
        (rng.uniform(0.5, 0.6), rng.uniform(0.1, 0.2), diaphragm - rng.uniform(0.06, 0.12)),
        (rng.uniform(0.16, 0.22), rng.uniform(0.25, 0.32), rng.uniform(0.08, 0.12)),
        LABEL["spleen"],
        only=soft,
    )
    kidney_t = diaphragm - rng.uniform(0.16, 0.22)
    for side in (-1.0, 1.0):
        paint.ellipsoid(
            (side * rng.uniform(0.38, 0.46), rng.uniform(0.3, 0.4), kidney_t + side * rng.uniform(0.0, 0.04)),
            (rng.uniform(0.13, 0.17), rng.uniform(0.17, 0.22), rng.uniform(0.11, 0.14)),
            LABEL["kidney"],
            only=soft,
        )

    liver_half = rng.uniform(0.18, 0.24)
    paint.ellipsoid(
        (-rng.uniform(0.25, 0.35), rng.uniform(-0.1, 0.0), diaphragm + rng.uniform(0.03, 0.08) - liver_half),
        (rng.uniform(0.42, 0.52), rng.uniform(0.5, 0.6), liver_half),
        LABEL["liver"],
        only=soft,
    )

    # Great vessels: descending aorta left of the spine, inferior vena cava on the right below the heart.
    paint.paint(*paint.ellipse(every, 0.1, 0.13, 0.075, 0.1), LABEL["blood"])
    paint.paint(*paint.ellipse(paint.slab(0.0, heart_t), -0.12, 0.1, 0.07, 0.08), LABEL["blood"], soft)

    # Spine: vertebrae repeat along z, separated by discs; behind each body the canal, arch and spinous process.
    in_disc = ((t * rng.uniform(5.0, 7.0) + rng.uniform(0.0, 1.0)) % 1.0) < 0.2
    spine_v = rng.uniform(0.34, 0.42)
    spine_box, body = paint.ellipse(every, 0.0, spine_v, 0.13, 0.12)
    paint.paint(spine_box, body & ~in_disc, LABEL["bone"])
    paint.paint(spine_box, body & in_disc, LABEL["disc"])
    for centre_v, radius_u, radius_v in ((spine_v + 0.2, 0.1, 0.11), (spine_v + 0.33, 0.03, 0.1)):
        box, arch = paint.ellipse(every, 0.0, centre_v, radius_u, radius_v)
        paint.paint(box, arch & ~in_disc, LABEL["bone"])
    paint.paint(*paint.ellipse(every, 0.0, spine_v + 0.2, 0.055, 0.06), LABEL["spinal_cord"])

    # Ribs: oblique arcs just inside the body wall, dropping towards the front, joined in front by the sternum.
    outer, inner = cavity_radius + 0.05, cavity_radius - 0.01
    rib_box, ring = paint.ellipse(paint.slab(diaphragm - 0.12, 1.0), 0.0, 0.0, outer, outer)
    ring &= ~paint.ellipse(rib_box[0], 0.0, 0.0, inner, inner, box=rib_box)[1]
    where = np.nonzero(ring)
    ring_u = U[rib_box[0], :, rib_box[2]][where[0], 0, where[2]]
    ring_v = V[rib_box[0], rib_box[1]][where[0], where[1], 0]
    from_back = np.arctan2(np.abs(ring_u), ring_v)  # 0 behind the spine, pi at the sternum
    rib_phase = (t[rib_box[0]][where[0], 0, 0] * rng.uniform(7.0, 9.0) + 0.9 * from_back / np.pi + rng.uniform()) % 1
    ring[where] = (rib_phase < 0.3) & (from_back > 0.35) & (from_back < np.pi - 0.3)
    ribs = paint.paint(rib_box, ring, LABEL["bone"], soft)
    sternum = paint.slab(heart_t - 0.1, 1.0)
    paint.paint(*paint.ellipse(sternum, 0.0, -cavity_radius - 0.02, 0.08, 0.045), LABEL["bone"], soft)

    # Intensities: per-label mean, per-label smooth texture, less dense bone where spongy, scanner noise.
    hu = _MEAN_HU[labels]
    hu += _TEXTURE_HU[labels] * _smooth_field(rng, shape, (8, 16, 16))
    spongy = paint.ellipse(every, 0.0, spine_v, 0.09, 0.08, box=spine_box)[1] & (labels[spine_box] == LABEL["bone"])
    hu[spine_box] -= _TRABECULAR_DROP_HU * spongy
    hu[rib_box] -= _RIB_DROP_HU * ribs
    hu += rng.uniform(10.0, 20.0) * rng.standard_normal(shape, dtype=np.float32)
    hu = np.clip(np.rint(hu), *_HU_LIMITS).astype(np.int16)

    sz, sy, sx = spacing
    origin = (-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2)
    return SampleCT(hu=hu, labels=labels, spacing=(sz, sy, sx), origin=origin, seed=int(seed))


def _to_image(sample: SampleCT, array: np.ndarray) -> sitk.Image:
    """SimpleITK image of a (z, y, x) array with the sample's geometry (SimpleITK works in LPS, x first)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(sample.spacing)))
    image.SetOrigin(sample.origin)
    return image


def write_nifti(sample: SampleCT, path: str | Path) -> Path:
    """Write the HU volume as int16 NIfTI (axial layout: i = x, j = y, k = z) with its real-world affine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_to_image(sample, sample.hu), str(path), useCompression=True)
    return path


def write_labels_nifti(sample: SampleCT, path: str | Path) -> Path:
    """Write the tissue labels as a uint8 NIfTI aligned with :func:`write_nifti`'s output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_to_image(sample, sample.labels), str(path), useCompression=True)
    return path


def write_dicom_series(
    sample: SampleCT,
    folder: str | Path,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    modality: str = "CT",
    signed: bool = False,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    patient_id: str | None = None,
) -> Path:
    """Write the HU volume as an axial DICOM series, one CT Image Storage file per slice.

    ``signed=False`` stores unsigned values with RescaleIntercept -1024 (the common scanner layout);
    ``signed=True`` stores signed HU with intercept 0. Instance 1 is the top (most superior) slice, as scanners
    number them, so a reader must sort by position rather than by file name. UIDs derive from the seed unless given,
    so the same sample always gives the same files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entropy = [f"ctfm-sample-{sample.seed}"]
    study_uid = study_uid or generate_uid(entropy_srcs=entropy + ["study"])
    series_uid = series_uid or generate_uid(entropy_srcs=entropy + ["series", modality])
    frame_uid = generate_uid(entropy_srcs=entropy + ["frame"])
    intercept = 0 if signed else _HU_LIMITS[0]
    stored = (sample.hu.astype(np.int32) - intercept).astype("<i2" if signed else "<u2")
    sz, sy, sx = sample.spacing
    ox, oy, oz = sample.origin
    nz, ny, nx = sample.shape

    for number, z in enumerate(range(nz - 1, -1, -1), start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=entropy + [series_uid, str(number)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.PatientID = patient_id or f"CTFM-SAMPLE-{sample.seed}"
        ds.PatientName = "Synthetic^Sample"
        ds.StudyDate = ds.SeriesDate = "20000101"
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = number
        ds.Manufacturer = "ctfm synthetic"
        ds.SeriesDescription = "ctfm synthetic torso"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [ox, oy, oz + z * sz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = oz + z * sz
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = int(signed)
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.ascontiguousarray(stored[z]).tobytes()
        pydicom.dcmwrite(folder / f"IM{number:04d}.dcm", ds, enforce_file_format=True)
    return folder


def make_sample_dataset(
    out_dir: str | Path,
    n_scans: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
) -> Path:
    """Write ``n_scans`` synthetic scans and label maps as NIfTI plus ``datalist.csv``; returns the CSV's path.

    The CSV has ``image`` and ``label`` columns of paths relative to the CSV (so the folder can move) and the
    ``seed`` of each scan. Scan seeds are drawn from ``seed``, so two datasets with different seeds share no scan.
    """
    if n_scans < 1:
        raise ValueError(f"n_scans must be at least 1, got {n_scans}")
    out_dir = Path(out_dir)
    rows = []
    for index, scan_seed in enumerate(np.random.SeedSequence(seed).generate_state(n_scans)):
        sample = generate_ct(shape, spacing, seed=int(scan_seed))
        image = write_nifti(sample, out_dir / "images" / f"sample_{index:03d}.nii.gz")
        label = write_labels_nifti(sample, out_dir / "labels" / f"sample_{index:03d}.nii.gz")
        rows.append(
            {
                "image": image.relative_to(out_dir).as_posix(),
                "label": label.relative_to(out_dir).as_posix(),
                "seed": sample.seed,
            }
        )
    csv_path = out_dir / "datalist.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path
