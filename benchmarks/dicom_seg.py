"""Writing a 117-class label map as a DICOM SEG (``ctfm.io.dicom_seg``) against writing it as NIfTI: time and size.

    python benchmarks/dicom_seg.py [--shape 300 512 512]

A CT series of the given shape (slices, rows, columns; 0.8 x 0.8 mm pixels, 1.5 mm apart) is written as DICOM, and a
label map on its grid holding all 117 TotalSegmentator classes as ellipsoids of organ-like sizes (each class spans a
band of slices, as organs do, so a BINARY SEG has one frame per class and slice it covers, not per class and slice
of the scan). Both SEG kinds are written: BINARY (uncompressed bit frames) and LABELMAP (one JPEG-LS frame of segment
numbers per slice). Timed: ``write_dicom_seg`` (headers read and checked, geometry mapped, frames encoded, file
written), ``write_label_map`` (gzipped NIfTI, as ``ctfm segment`` writes it), and reading each SEG back with
highdicom into one label plane per source slice (checked equal to the map). Sizes are of the written files. One run
each: the numbers are seconds, not milliseconds, and the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mib

SPACING = (1.5, 0.8, 0.8)


def write_series(folder: Path, shape: tuple[int, int, int]) -> Path:
    """A plain axial CT series (uniform air): the SEG writer reads only its headers, so its pixels do not matter."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices, rows, columns = shape
    pixels = np.zeros((rows, columns), dtype="<u2").tobytes()
    for k in range(slices):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = "CT", "BENCH", "Bench^Mark", "", ""
        ds.InstanceNumber = slices - k
        ds.ImagePositionPatient = [-200.0, -200.0, k * SPACING[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.SliceThickness = SPACING[0]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return folder


def organ_map(shape: tuple[int, int, int], classes: int = 117, seed: int = 0) -> np.ndarray:
    """``(columns, rows, slices)`` uint8 labels (the reader's index order): one ellipsoid per class, later on top."""
    rng = np.random.default_rng(seed)
    size = np.array(shape[::-1])  # (columns, rows, slices)
    labels = np.zeros(tuple(size), dtype=np.uint8)
    for value in range(1, classes + 1):
        radius = rng.uniform([0.03, 0.03, 0.03], [0.12, 0.12, 0.15]) * size
        centre = rng.uniform(radius, size - radius)
        low = np.maximum(np.floor(centre - radius).astype(int), 0)
        high = np.minimum(np.ceil(centre + radius).astype(int) + 1, size)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        x, y, z = np.ogrid[box]
        inside = ((x - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2
        inside = inside + ((z - centre[2]) / radius[2]) ** 2 <= 1.0
        labels[box][inside] = value
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("SLICES", "ROWS", "COLUMNS"))
    args = parser.parse_args()
    shape = tuple(args.shape)

    import highdicom as hd
    import pydicom

    from ctfm.data.classes import TOTALSEGMENTATOR_CLASSES
    from ctfm.io.dicom_seg import write_dicom_seg
    from ctfm.io.label_maps import write_label_map
    from ctfm.io.reader import read_ct

    names = ("background", *TOTALSEGMENTATOR_CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_series(Path(tmp) / "series", shape)
        affine = read_ct(folder, check_hu=False).affine.numpy()
        labels = organ_map(shape)
        present = int(np.count_nonzero(np.bincount(labels.ravel(), minlength=len(names))[1:]))

        start = time.perf_counter()
        nifti = write_label_map(labels, affine, Path(tmp) / "labels.nii.gz", names)
        nifti_s = time.perf_counter() - start
        result: dict[str, object] = {
            "shape": list(shape),
            "classes_present": present,
            "nifti_write_s": round(nifti_s, 2),
            "nifti_mb": round(nifti.stat().st_size / 1e6, 2),
        }
        uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sorted(folder.iterdir())]
        for kind in ("BINARY", "LABELMAP"):
            start = time.perf_counter()
            seg_path = write_dicom_seg(labels, folder, names, Path(tmp) / f"{kind}.seg.dcm", affine=affine,
                                       algorithm_name="benchmark", segmentation_type=kind)  # fmt: skip
            seg_s = time.perf_counter() - start
            start = time.perf_counter()
            seg = hd.seg.segread(seg_path)
            planes = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
            read_s = time.perf_counter() - start
            # Files are written in slice order (k = file number): planes are (k, row, column), labels (column, row, k).
            by_number = np.zeros(len(names), dtype=np.uint8)
            for item in seg.SegmentSequence:
                if int(item.SegmentNumber):  # a LABELMAP's segment 0 is its background
                    by_number[int(item.SegmentNumber)] = names.index(item.SegmentLabel)
            result[kind.lower()] = {
                "frames": int(seg.NumberOfFrames),
                "write_s": round(seg_s, 2),
                "read_back_s": round(read_s, 2),
                "mb": round(seg_path.stat().st_size / 1e6, 2),
                "read_back_equal": bool(np.array_equal(by_number[planes].transpose(2, 1, 0), labels)),
            }
        result["peak_rss_mib"] = round(peak_rss_mib())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
