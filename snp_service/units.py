"""How many units a fraction removes: one rule for structural pruning and for the spec's check.
Pure, no imports beyond math, so `snp-service validate` stays free of torch."""

from __future__ import annotations

import math


def units_removed(fraction: float, count: int) -> int:
    """Units of `count` removed by `fraction`, rounded half up (0.25 x 2 heads removes one; Python's
    round() halves to even and removed none)."""
    return math.floor(fraction * count + 0.5)
