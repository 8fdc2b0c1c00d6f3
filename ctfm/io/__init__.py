"""Reading and checking CT scans: the bottom of the package (imports nothing else of ctfm but ``errors``)."""

from ctfm.io.reader import read_ct

__all__ = ["read_ct"]
