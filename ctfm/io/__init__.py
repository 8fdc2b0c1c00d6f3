"""Reading and checking CT scans and label maps: the bottom of the package (imports only ``ctfm.errors``)."""

from ctfm.io.reader import check_same_grid, read_ct, read_label_map

__all__ = ["check_same_grid", "read_ct", "read_label_map"]
