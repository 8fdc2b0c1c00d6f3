"""CT windows: a (width, level) pair in HU as diffusion conditions use it, checked once for every user."""

from __future__ import annotations

from ctfm.errors import CTFMError


def check_window(width: float, level: float) -> tuple[float, float]:
    """``(width, level)`` as floats; a width <= 0 is refused with one line (it would be the null condition)."""
    width, level = float(width), float(level)
    if not width > 0:
        raise CTFMError(f"window width must be > 0 HU, got width {width:g} and level {level:g} (e.g. lung 1500 -500)")
    return width, level
