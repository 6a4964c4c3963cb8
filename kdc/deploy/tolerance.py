"""`kdc check`'s tolerances as written on its command line: relative ('10%') or absolute points
('0.5pt')."""

from __future__ import annotations

import re

from kdc.errors import UserError

UNITS = {"%": 0.01, "pt": 0.01, "pts": 0.01, "pp": 0.01}  # 10% relative, 0.5pt absolute
TOLERANCE_UNITS = {"relative": ("%",), "points": ("pt", "pts", "pp")}
"""What each kind of tolerance may be written in: a latency's is relative ('10%', or a bare
fraction <= 1), an accuracy's absolute points ('0.5pt'; a bare 0.5 or a '%' could mean half a
point or fifty, so they are refused)."""


def parse_tolerance(text: str, field: str = "--tolerance", kind: str = "relative") -> float:
    """'10%' -> 0.10 (`relative`), '0.5pt' -> 0.005 (`points`, absolute); TOLERANCE_UNITS."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|pts?|pp)?\s*", str(text))
    units = TOLERANCE_UNITS[kind]
    bare_ok = kind == "relative" and m is not None and m[2] is None and float(m[1]) <= 1
    if not m or not (bare_ok or m[2] in units):
        example = "10% (relative to the baseline)" if kind == "relative" else "0.5pt (points)"
        raise UserError(
            f"cannot read tolerance '{text}'", field=field, fix=f"write it as e.g. {example}"
        )
    return float(m[1]) * UNITS[m[2]] if m[2] else float(m[1])
