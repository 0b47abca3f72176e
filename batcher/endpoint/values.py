"""Type checks for settings read from JSON, YAML or the command line."""

from __future__ import annotations

import math


def is_integer(value: object) -> bool:
    """Return whether `value` is an int; bools, which JSON true and false become, are not."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """Return whether `value` is an int or float that is neither NaN nor infinite."""
    if is_integer(value):
        return True
    return isinstance(value, float) and math.isfinite(value)
