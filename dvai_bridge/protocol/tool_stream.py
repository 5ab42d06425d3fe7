"""Split a reply, as it streams, into content and tool calls.

Text before the format's start marker is content and is passed on at once, except a tail that
could be the beginning of the marker, which waits for the next piece. From the marker on, the
text is the tool-call region: it is never sent as content. Calls are handed out as soon as
they are complete (Hermes blocks one by one; other formats at the end). If the region does not
parse when the reply ends, it is returned as content: no text is lost. The one exception is an
unfinished call after complete ones (the reply ran into ``max_tokens``): it is dropped, and
the finish reason says ``length``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .tool_formats import ParsedCall, ToolFormat

log = logging.getLogger(__name__)


@dataclass
class Split:
    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)


class ToolCallSplitter:
    def __init__(self, fmt: ToolFormat, known: frozenset[str], parallel: bool = True) -> None:
        self.fmt = fmt
        self.known = known  # function names the request declared
        self.parallel = parallel
        self.calls: list[ParsedCall] = []  # all handed out so far
        self._held = ""  # content not yet passed on
        self._region: str | None = None  # the tool-call region, once it opened
        self._used = 0  # how much of the region complete calls have consumed
        self._seen_text = False

    def feed(self, text: str) -> Split:
        out = Split()
        if self._region is not None:
            self._region += text
            out.calls = self._take_complete()
            return out
        held = self._held + text
        at = self.fmt.opens_calls(held)
        if at >= 0 and (not self.fmt.at_start_only or not self._seen_text):
            out.content = held[:at]
            self._held = ""
            self._region = held[at:]
            out.calls = self._take_complete()
            return out
        keep = self._hold_back(held)
        out.content = held[: len(held) - keep]
        self._held = held[len(held) - keep:]
        if out.content.strip():
            self._seen_text = True
        return out

    def finish(self) -> Split:
        """The end of the reply: the rest of the content, and calls not yet handed out."""
        out = Split(content=self._held)
        self._held = ""
        if self._region is None:
            return out
        region, self._region = self._region, None
        try:
            calls = self._checked(self.fmt.parse(region))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if self.calls:  # complete calls, then one cut short (max_tokens): drop the stub
                log.info("dropping an unfinished tool call after %d complete ones: %r",
                         len(self.calls), region[self._used:][:200])
            else:  # nothing parsed: the text is the reply
                log.info("reply's tool-call part does not parse (%s); returned as content", exc)
                out.content += region
            return out
        out.calls = self._limit(calls[len(self.calls):])
        self.calls += out.calls
        return out

    def _take_complete(self) -> list[ParsedCall]:
        assert self._region is not None
        try:
            calls, used = self.fmt.complete_calls(self._region)
            calls = self._checked(calls)
        except ValueError:
            return []  # finish() decides what this region is
        new = self._limit(calls[len(self.calls):])
        self.calls += new
        self._used = used
        return new

    def _checked(self, calls: list[ParsedCall]) -> list[ParsedCall]:
        unknown = [c.name for c in calls if c.name not in self.known]
        if unknown:
            raise ValueError(f"calls undeclared functions {unknown}")
        return calls

    def _limit(self, calls: list[ParsedCall]) -> list[ParsedCall]:
        if not self.parallel and self.calls:
            return []
        return calls if self.parallel else calls[:1]

    def _hold_back(self, text: str) -> int:
        """Length of the longest tail of ``text`` that could begin the start marker."""
        if self.fmt.at_start_only and not self._seen_text and not text.strip():
            return len(text)  # leading whitespace: the reply may still open with a call
        marker = self.fmt.start
        for n in range(min(len(marker) - 1, len(text)), 0, -1):
            if marker.startswith(text[-n:]):
                return n
        return 0
