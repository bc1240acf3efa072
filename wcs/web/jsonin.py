"""JSON from clients (REST bodies, WebSDK frames): nesting bounded before the parser recurses, and
every failure one ValueError with a reason."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# Far deeper than anything the WebSDK or a REST client sends (both stay under 10 levels), far
# shallower than the C parser's recursion limit.
MAX_JSON_DEPTH = 64

# A JSON string, or an unterminated one running to the end: each start matches at its first
# try, so the scan stays linear on any input (a closing quote that is optional only at the
# very end leaves the regex nothing to backtrack over).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonInputError(ValueError):
    """Client JSON that cannot be used: malformed, not UTF-8, or nested too deeply."""


def nesting_depth(text: str) -> int:
    """The deepest `[`/`{` nesting of `text` outside strings (exact for valid JSON; for
    invalid JSON, never less than what a parser would reach before failing)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) <= 1:
        return len(brackets)
    return max(accumulate(map(_DELTA.__getitem__, brackets)))


def loads(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse client JSON; raises JsonInputError (a ValueError) with the reason.

    Bytes are decoded as `json.loads` does (UTF-8, -16 or -32 by their first bytes).
    """
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode(json.detect_encoding(raw), "surrogatepass")
        except (UnicodeDecodeError, LookupError) as err:
            raise JsonInputError(f"undecodable text: {err}") from None
    else:
        text = raw
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JsonInputError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError as err:  # JSONDecodeError, and int() refusing thousands of digits
        raise JsonInputError(str(err)) from None
    except RecursionError:  # unreachable after the depth check; kept as the last line
        raise JsonInputError(f"nested deeper than {max_depth} levels") from None
