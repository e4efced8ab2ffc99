"""How a figure that may be missing is printed: "n/a" for None or NaN, else the format spec."""

from __future__ import annotations

import math


def figure(value, spec: str = ".3f") -> str:
    """Given a number (or None) and a format spec, return it formatted, or "n/a" when it is missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)
