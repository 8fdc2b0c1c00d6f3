"""Checks of a written DICOM SEG that go through physical space rather than array indices (shared by the SEG tests).

A frame's pixel (row, column) sits where its referenced source slice's own position, orientation and pixel spacing
put it, and the label there must be the NIfTI label map's label at that point: a transposed, flipped or shifted
mapping fails.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom

SOP_CLASS = {"BINARY": "1.2.840.10008.5.1.4.1.1.66.4", "LABELMAP": "1.2.840.10008.5.1.4.1.1.66.7"}


def random_labels(shape, values, seed=0, fill=0.6):
    """Labels scattered voxel by voxel (any transposition or flip changes them), background elsewhere."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.asarray(values), size=shape)
    return np.where(rng.random(shape) < fill, labels, 0).astype(np.uint8)


def pixel_points(source: pydicom.Dataset) -> np.ndarray:
    """LPS mm of every pixel (row, column) of a source slice, from its own header: ``(rows, columns, 3)``."""
    position = np.array([float(x) for x in source.ImagePositionPatient])
    row_cosine = np.array([float(x) for x in source.ImageOrientationPatient[:3]])
    column_cosine = np.array([float(x) for x in source.ImageOrientationPatient[3:]])
    row_spacing, column_spacing = (float(x) for x in source.PixelSpacing)
    rows, columns = np.meshgrid(np.arange(source.Rows), np.arange(source.Columns), indexing="ij")
    return position + columns[..., None] * column_spacing * row_cosine + rows[..., None] * row_spacing * column_cosine


def labels_at(nifti: Path, lps: np.ndarray) -> np.ndarray:
    """The NIfTI label map's labels at LPS points, which must be its voxel centres."""
    image = nib.load(nifti)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    index = (np.linalg.inv(image.affine) @ np.c_[ras.reshape(-1, 3), np.ones(ras.size // 3)].T)[:3].T
    assert np.abs(index - np.rint(index)).max() < 1e-3, "a frame pixel is not on a NIfTI voxel centre"
    index = np.rint(index).astype(int)
    return np.asarray(image.dataobj)[tuple(index.T)].reshape(lps.shape[:-1])


def assert_round_trip(seg_path: Path, series: Path, nifti: Path, class_names) -> pydicom.Dataset:
    """The SEG references ``series`` and decodes, frame by frame and pixel by pixel, to the NIfTI label map."""
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in series.iterdir() if p.is_file())}
    first = next(iter(sources.values()))
    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG" and ds.SOPClassUID == SOP_CLASS[ds.SegmentationType]
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.PatientID == first.PatientID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(x) for x in orientation], [float(x) for x in first.ImageOrientationPatient])
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose([float(x) for x in measures.PixelSpacing], [float(x) for x in first.PixelSpacing])
    # A LABELMAP SEG describes its background as segment 0 (highdicom adds it).
    segment_class = {int(s.SegmentNumber): class_names.index(s.SegmentLabel) if int(s.SegmentNumber) else 0
                     for s in ds.SegmentSequence}  # fmt: skip

    # pydicom: every frame sits on the slice it references and holds exactly that slice's voxels of its class
    # (BINARY: one class per frame; LABELMAP: one frame per slice, holding segment numbers).
    lookup = np.zeros(max(segment_class) + 1, np.int64)
    lookup[list(segment_class)] = list(segment_class.values())
    masks = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    decoded = {uid: np.zeros((ds.Rows, ds.Columns), np.int64) for uid in sources}
    for frame, item in zip(masks, ds.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[uid]
        position = [float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(x) for x in source.ImagePositionPatient], atol=1e-4)
        if ds.SegmentationType == "LABELMAP":
            assert not decoded[uid].any(), "two frames on one slice"
            decoded[uid] = lookup[frame]
            continue
        value = segment_class[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        assert not (decoded[uid][frame > 0]).any(), "two segments claim one pixel"
        decoded[uid][frame > 0] = value
    for uid, source in sources.items():
        np.testing.assert_array_equal(decoded[uid], labels_at(nifti, pixel_points(source)))

    # highdicom: its own decoding per source instance gives the same label maps.
    seg = hd.seg.segread(seg_path)
    uids = list(sources)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    for uid, plane in zip(uids, pixels, strict=True):
        relabelled = np.vectorize(lambda n: segment_class.get(int(n), 0))(plane)
        np.testing.assert_array_equal(relabelled, decoded[uid])
    return ds
