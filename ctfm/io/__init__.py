"""Reading and checking CT scans and label maps, writing DICOM SEG: the bottom of the package (imports only
``ctfm.errors`` and ``ctfm.atomic``)."""

from ctfm.io.reader import check_same_grid, read_ct, read_label_map

__all__ = ["check_same_grid", "read_ct", "read_label_map"]
