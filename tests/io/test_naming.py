"""Output names per input: unique within a run, so same-named scans in their own folders keep their own outputs."""

import os

from ctfm.io.naming import image_stem, output_names


def test_image_suffixes_go_and_a_dicom_folder_keeps_its_name():
    assert [image_stem(p) for p in ("a/scan.nii.gz", "b/SCAN.NII", "c.nrrd", "d.mha", "e.mhd", "f/series_1/")] == [
        "scan", "SCAN", "c", "d", "e", "series_1"
    ]  # fmt: skip
    assert image_stem("x.nii.gz.bak") == "x.nii.gz.bak" and image_stem(".nii.gz") == ".nii.gz"


def test_distinct_names_stay_as_they_are():
    assert output_names(["s0001/ct.nii.gz", "s0002/liver.nii.gz", "dicom/1.2.840"]) == ["ct", "liver", "1.2.840"]


def test_totalsegmentator_and_lidc_layouts_get_their_nearest_distinguishing_folders():
    assert output_names(["ts/s0001/ct.nii.gz", "ts/s0002/ct.nii.gz", "ts/s0003/other.nii.gz"]) == [
        "s0001_ct", "s0002_ct", "other"
    ]  # fmt: skip
    # LIDC: patient/study/series; the series folders share names, the patients differ two levels up.
    lidc = ["LIDC/LIDC-IDRI-0001/study/1-ct", "LIDC/LIDC-IDRI-0002/study/1-ct/"]
    assert output_names(lidc) == ["LIDC-IDRI-0001_study_1-ct", "LIDC-IDRI-0002_study_1-ct"]


def test_unicode_spaces_and_case_are_kept_and_case_only_differences_still_collide():
    names = output_names(["Patiënt één/scan.nii.gz", "Patiënt twee/Scan.nii.gz", "überall/ct 1.nrrd"])
    assert names == ["Patiënt één_scan", "Patiënt twee_Scan", "ct 1"]


def test_the_same_file_twice_and_a_prefixed_name_taken_already_are_numbered_in_input_order():
    assert output_names(["a/ct.nii.gz", "a/ct.nii.gz", "b/ct.nii.gz"]) == ["a_ct", "a_ct_2", "b_ct"]
    assert output_names(["a/ct.nii.gz", "b/ct.nii.gz", "c/a_ct.nii.gz"]) == ["a_ct", "b_ct", "a_ct_2"]
    assert output_names(["x/ct.nii.gz", "ct.nii.gz"])[0] == "x_ct"


def test_names_are_deterministic_for_paths_and_text(tmp_path):
    paths = [tmp_path / "s2" / "ct.nii.gz", tmp_path / "s1" / "ct.nii.gz"]
    assert output_names(paths) == output_names(list(paths)) == ["s2_ct", "s1_ct"]
    assert output_names([os.fspath(p) for p in paths]) == ["s2_ct", "s1_ct"]
    assert output_names([]) == []
