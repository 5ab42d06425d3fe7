"""How many values a JSON body holds, measured on its bytes before it is parsed.

``json.loads`` holds the GIL until the whole document is built (3.5 M small lists: ~3 s), so a
dense body stalls the event loop even from another thread. ``measure`` counts array items and
object members (commas and opening brackets outside strings) with a pass of ``bytes.count``,
and, only past the limit, counts exactly with numpy (whose loops release the GIL) and names the
top-level member that holds the most of them, for the 400's ``param``.
"""

from __future__ import annotations

import re

import numpy as np

_QUOTE, _COMMA = ord('"'), ord(",")
_OPENS, _CLOSES = (ord("["), ord("{")), (ord("]"), ord("}"))
_KEY = re.compile(rb'\s*"([^"]{1,64})"\s*:')


def _rough(raw: bytes) -> int:
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


def measure(raw: bytes, limit: int) -> tuple[int, str | None]:
    """(values, the heaviest top-level member's name). Below ``limit`` the count is an upper
    bound (strings included) and no name is looked for."""
    rough = _rough(raw)
    if rough <= limit:
        return rough, None
    # With escaped backslashes, then escaped quotes, removed, every quote left opens or
    # closes a string: an odd running count of quotes means inside one.
    clean = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    a = np.frombuffer(clean, dtype=np.uint8)
    outside = (np.cumsum(a == _QUOTE, dtype=np.uint8) & 1) == 0
    opens = ((a == _OPENS[0]) | (a == _OPENS[1])) & outside
    closes = ((a == _CLOSES[0]) | (a == _CLOSES[1])) & outside
    values = opens | ((a == _COMMA) & outside)
    total = int(np.count_nonzero(values))
    if total <= limit:
        return total, None
    depth = np.cumsum(opens.astype(np.int16) - closes.astype(np.int16), dtype=np.int16)
    starts = np.flatnonzero(values & (depth == 1))  # the top-level members, each from its
    if not len(starts):  # "{" or "," to the next
        return total, None
    per = np.add.reduceat(values, starts)
    at = int(starts[int(np.argmax(per))]) + 1
    key = _KEY.match(clean, at, at + 256)
    return total, key.group(1).decode("utf-8", "replace") if key else None
