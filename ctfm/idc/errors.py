"""The error every IDC step raises for a problem the user can fix (a bad SQL file, a selection, an endpoint)."""

from __future__ import annotations

from ctfm.errors import CTFMError


class IDCError(CTFMError, ValueError):
    """A query, selection or download that cannot go ahead; the message says what to change."""
