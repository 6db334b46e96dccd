"""FACS Action Unit vocabulary: numbers, names, parsing and column names.

Everything in auformer names AU columns ``AU01``, ``AU02``, ... (two digits, as
OpenFace does) so tables from training, evaluation and detection line up.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from auformer.errors import AUFormerError

INTENSITY_MAX = 5.0  # FACS intensity A-E = 1-5, 0 = absent (DISFA, BP4D FERA 2015, OpenFace's AU12_r)

# FACS action descriptors (Ekman & Friesen 2002): main codes, head and eye codes.
AU_NAMES: dict[int, str] = {
    1: "Inner Brow Raiser",
    2: "Outer Brow Raiser",
    4: "Brow Lowerer",
    5: "Upper Lid Raiser",
    6: "Cheek Raiser",
    7: "Lid Tightener",
    8: "Lips Toward Each Other",
    9: "Nose Wrinkler",
    10: "Upper Lip Raiser",
    11: "Nasolabial Deepener",
    12: "Lip Corner Puller",
    13: "Sharp Lip Puller",
    14: "Dimpler",
    15: "Lip Corner Depressor",
    16: "Lower Lip Depressor",
    17: "Chin Raiser",
    18: "Lip Pucker",
    19: "Tongue Show",
    20: "Lip Stretcher",
    21: "Neck Tightener",
    22: "Lip Funneler",
    23: "Lip Tightener",
    24: "Lip Pressor",
    25: "Lips Part",
    26: "Jaw Drop",
    27: "Mouth Stretch",
    28: "Lip Suck",
    29: "Jaw Thrust",
    30: "Jaw Sideways",
    31: "Jaw Clencher",
    32: "Lip Bite",
    33: "Cheek Blow",
    34: "Cheek Puff",
    35: "Cheek Suck",
    36: "Tongue Bulge",
    37: "Lip Wipe",
    38: "Nostril Dilator",
    39: "Nostril Compressor",
    41: "Lid Droop",
    42: "Slit",
    43: "Eyes Closed",
    44: "Squint",
    45: "Blink",
    46: "Wink",
    51: "Head Turn Left",
    52: "Head Turn Right",
    53: "Head Up",
    54: "Head Down",
    55: "Head Tilt Left",
    56: "Head Tilt Right",
    57: "Head Forward",
    58: "Head Back",
    61: "Eyes Turn Left",
    62: "Eyes Turn Right",
    63: "Eyes Up",
    64: "Eyes Down",
}

# The AU sets of the paper's protocols (SPEC section 3).
BP4D_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
CASME2_AUS: tuple[int, ...] = (1, 2, 4, 7, 12, 14, 15, 17)
CROSS_DOMAIN_AUS: tuple[int, ...] = (1, 2, 4, 6, 12)
# AU intensity (0-5): DISFA codes 12 AUs, all with intensity (the occurrence protocol uses 8 of them);
# BP4D's intensity codes are the FERA 2015 sub-challenge's 5 AUs (docs/intensity.md).
DISFA_CODED_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
BP4D_INTENSITY_AUS: tuple[int, ...] = (6, 10, 12, 14, 17)

# "AU1", "AU01", "au 12", "1", "R12", "L1", "AU12R", "12.0": optional side prefix,
# optional "AU", the number, optional side suffix; intensity letters (A-E) are ignored.
_AU_TOKEN = re.compile(r"^\s*([LRBT])?\s*(?:AU)?\s*([LRBT])?\s*0*(\d+)(?:\.0+)?\s*([LRBT]|[A-E])?\s*$", re.IGNORECASE)


def parse_au(token: str | int) -> int:
    """Parse one AU token (``AU1``, ``AU01``, ``1``, ``R12``, ``L1``) to its FACS number.

    Left/right/bilateral prefixes are dropped: detection here is per AU, not per side.
    Raises ``AUFormerError`` naming the token and, for an unknown number, the closest AUs.
    """
    if isinstance(token, bool):  # True == 1 in Python: a boolean is never an AU
        raise AUFormerError(f"cannot parse AU {token!r}: expected forms like 'AU1', 'AU01', '1', 'R12'")
    if isinstance(token, int):
        number = token
    else:
        match = _AU_TOKEN.match(str(token))
        if match is None:
            raise AUFormerError(f"cannot parse AU {token!r}: expected forms like 'AU1', 'AU01', '1', 'R12'")
        number = int(match.group(3))
    if number not in AU_NAMES:
        close = difflib.get_close_matches(str(number), [str(n) for n in AU_NAMES], n=3)
        hint = f" (did you mean {', '.join('AU' + c for c in close)}?)" if close else ""
        raise AUFormerError(f"unknown AU {token!r}: AU{number} is not a FACS action unit{hint}")
    return number


def parse_au_list(spec: str | int | Iterable[str | int]) -> list[int]:
    """Parse a list of AUs: ``"1+2+4"``, ``"AU1,AU2"``, ``"1 2 4"``, ``["AU01", 12]``.

    Order is kept, duplicates are removed (``R12+L12`` is one AU12). Tokens that are
    not AUs at all raise ``AUFormerError``; an empty string gives an empty list (a
    CASME II clip coded with no AU).
    """
    if isinstance(spec, int):
        tokens: list[str | int] = [spec]
    elif isinstance(spec, str):
        tokens = [t for t in re.split(r"[+,;/\s]+", spec.strip()) if t]
    else:
        tokens = list(spec)
    numbers: list[int] = []
    for token in tokens:
        number = parse_au(token)
        if number not in numbers:
            numbers.append(number)
    return numbers


def au_column(au: str | int) -> str:
    """Column name of an AU: ``AU01``, ``AU12``."""
    return f"AU{parse_au(au):02d}"


def au_columns(aus: Iterable[str | int]) -> list[str]:
    """Column names for a list of AUs, in order."""
    return [au_column(au) for au in aus]


def au_name(au: str | int) -> str:
    """FACS name of an AU: ``au_name('AU12') == 'Lip Corner Puller'``."""
    return AU_NAMES[parse_au(au)]


def au_label(au: str | int) -> str:
    """Short human label for plots: ``AU12 Lip Corner Puller``."""
    number = parse_au(au)
    return f"AU{number} {AU_NAMES[number]}"


# Aff-Wild2's AU track (the ABAW challenges): the 12 AUs of every annotation file's header.
AFFWILD2_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
