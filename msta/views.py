"""Evaluation views: ``CLIPSxCROPS`` (temporal clips times spatial crops), parsed in one place.

Light on purpose (no torch): the config validator, the CLI and the dataset all use it.
"""

from __future__ import annotations

import re

from msta.errors import MstaError

VALID_CROPS = (1, 3)


class ViewsError(MstaError, ValueError):
    """A views string that is not ``CLIPSxCROPS`` with CLIPS >= 1 and CROPS 1 or 3."""


def parse_views(text: str | tuple[int, int]) -> tuple[int, int]:
    """``"4x3"`` -> ``(4, 3)``; a ``(clips, crops)`` pair is checked and returned as is."""
    if isinstance(text, tuple):
        clips, crops = (int(v) for v in text)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
        if not m:
            raise ViewsError(f"views must look like CLIPSxCROPS (e.g. 1x1, 4x3), got {text!r}")
        clips, crops = int(m.group(1)), int(m.group(2))
    if clips < 1 or crops not in VALID_CROPS:
        raise ViewsError(f"views must have CLIPS >= 1 and CROPS 1 or 3, got {text!r}")
    return clips, crops


def format_views(views: tuple[int, int]) -> str:
    """``(4, 3)`` -> ``"4x3"``."""
    return f"{views[0]}x{views[1]}"
