"""VIN validation (ISO 3779): 17 characters, no I, O or Q, and the check digit where required."""

from __future__ import annotations

import re

_VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def check_digit(vin: str) -> str:
    total = sum(_VALUES[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
    remainder = total % 11
    return "X" if remainder == 10 else str(remainder)


def check_digit_required(vin: str) -> bool:
    """North American manufacturers (WMI 1-5) must use the position-9 check digit."""
    return vin[:1] in "12345"


def vin_problem(vin: str) -> str | None:
    """Why ``vin`` is not a valid VIN, or None when it is."""
    if len(vin) != 17:
        return f"a VIN has 17 characters, this one has {len(vin)}"
    if not _VIN.match(vin):
        return "a VIN has only digits and capital letters other than I, O and Q"
    if check_digit_required(vin) and vin[8] != check_digit(vin):
        return f"check digit (position 9) is {vin[8]!r}, expected {check_digit(vin)!r}"
    return None
