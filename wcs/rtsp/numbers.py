"""Numbers in RTSP text (headers, SDP, URLs, auth parameters): ASCII digits only, one parser.

``str.isdigit()`` accepts characters such as U+00B2 ("²") that ``int()`` refuses, and ``int()``
accepts other scripts' digits, spaces, signs and underscores that no RTSP grammar allows; every
number a peer sends goes through these functions instead.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["ascii_hex", "ascii_uint"]

# Leading zeros are legal in every grammar we read; past this a number is garbage, and the cap
# keeps int() away from the long-string paths.
MAX_NUMBER_CHARS: Final = 32

_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")


def ascii_uint(text: str, maximum: int) -> int | None:
    """``text`` as a decimal integer 0..maximum written with ASCII digits only; None otherwise.

    No sign, no spaces, no underscores: callers strip what their grammar allows around it.
    """
    if len(text) > MAX_NUMBER_CHARS or not _DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None


def ascii_hex(text: str, max_digits: int) -> int | None:
    """``text`` as 1..max_digits ASCII hex digits (either case); None otherwise."""
    if not 0 < len(text) <= max_digits or not _HEX.fullmatch(text):
        return None
    return int(text, 16)
