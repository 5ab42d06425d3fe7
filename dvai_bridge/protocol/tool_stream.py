"""Split a reply, as it streams, into content and tool calls.

Text before the format's start marker is content and is passed on at once, except a tail that
could be the beginning of the marker, which waits for the next piece. From the marker on, the
text is the tool-call region: it is never sent as content.

Two views of the calls come out of the same region:

- ``calls``: complete, parsed calls (what a non-streamed reply returns);
- ``deltas``: what a stream sends. As soon as a call's name is known (``{"name": "f",
  "arguments": `` or Mistral's ``f[ARGS]``) a delta opens the call, then the arguments object
  follows in fragments as the model writes it, ending exactly where the object closes. A call
  written another way (arguments before name, arguments as a string) is sent whole once parsed.

If the region does not parse when the reply ends, it is returned as content: no text is lost.
The exceptions: a forced call (``tool_choice`` required or named) is never content, and a call
cut off by ``max_tokens`` whose name was written is returned with its arguments as far as they
got (``ParsedCall.cut_arguments``, not valid JSON), in a whole reply as in a stream, where the
same text went out as argument deltas; the finish reason says ``length``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from .tool_formats import ParsedCall, ToolFormat

log = logging.getLogger(__name__)

# A call whose name comes first and whose arguments are an object: streamable.
_JSON_HEADER = re.compile(
    r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)'
)
_MISTRAL_HEADER = re.compile(r"([\w.-]+)\[ARGS\]\s*(?=\{)")


@dataclass(frozen=True)
class ToolDelta:
    """One piece of a streamed call: the first names it, the rest carry argument text."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class Split:
    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)
    deltas: list[ToolDelta] = field(default_factory=list)


class _ObjectScanner:
    """Follows one JSON object through a growing text; says where it closes."""

    def __init__(self, start: int) -> None:
        self.pos = self.sent = start
        self.depth = 0
        self.in_string = self.escaped = False
        self.end: int | None = None

    def advance(self, text: str) -> str:
        """New text of the object (up to its closing brace once seen)."""
        while self.end is None and self.pos < len(text):
            ch = text[self.pos]
            self.pos += 1
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.end = self.pos
        piece, self.sent = text[self.sent : self.pos], self.pos
        return piece


class ToolCallSplitter:
    def __init__(
        self,
        fmt: ToolFormat,
        known: frozenset[str],
        parallel: bool = True,
        *,
        stream: bool = True,
        forced: bool = False,
    ) -> None:
        self.fmt = fmt
        self.forced = forced  # the reply is calls only: never returned as content
        self.stream = stream  # False: a whole reply; no deltas, calls only
        self.known = known  # function names the request declared
        self.parallel = parallel
        self.calls: list[ParsedCall] = []  # complete calls handed out so far
        self._held = ""  # content not yet passed on
        self._region: str | None = None  # the tool-call region, once it opened
        self._used = 0  # how much of the region complete calls have consumed
        self._seen_text = False
        self._opened = 0  # calls a delta has opened
        self._scan = 0  # where in the region to look for the next call's name
        self._args: _ObjectScanner | None = None  # the arguments being streamed
        self._header = _MISTRAL_HEADER if fmt.name == "mistral" else _JSON_HEADER

    def feed(self, text: str) -> Split:
        out = Split()
        if self._region is None:
            held = self._held + text
            at = self.fmt.opens_calls(held)
            if at < 0 or (self.fmt.at_start_only and self._seen_text):
                keep = self._hold_back(held)
                out.content = held[: len(held) - keep]
                self._held = held[len(held) - keep :]
                if out.content.strip():
                    self._seen_text = True
                return out
            out.content, self._held, self._region = held[:at], "", held[at:]
        else:
            self._region += text
        out.deltas = self._stream() if self.stream else []
        out.calls = self._take_complete()
        if self.stream:
            out.deltas += self._whole(out.calls)
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
            # A call already opened on the stream, or complete calls and then one cut short.
            if self.calls or self._opened or self.forced:
                out.calls = self._cut_call(region)
                self.calls += out.calls
                log.info(
                    "an unfinished tool call after %d complete ones: %r",
                    len(self.calls),
                    region[self._used :][:200],
                )
            else:  # nothing parsed: the text is the reply
                log.info("reply's tool-call part does not parse (%s); returned as content", exc)
                out.content += region
            return out
        out.calls = self._limit(calls[len(self.calls) :])
        self.calls += out.calls
        out.deltas = self._whole(out.calls) if self.stream else []
        return out

    def _cut_call(self, region: str) -> list[ParsedCall]:
        """The call cut short at the end of ``region``, as a stream has sent it: none in a
        stream (its deltas went out already) or when its name is not complete."""
        if self.stream or (not self.parallel and self.calls):
            return []
        m = self._header.search(region, self._used)
        if m is None:
            return []
        name = json.loads(f'"{m.group(1)}"') if self._header is _JSON_HEADER else m.group(1)
        if name not in self.known:
            return []
        return [ParsedCall(name, {}, cut_arguments=region[m.end() :])]

    # -- streaming ------------------------------------------------------------------------
    def _stream(self) -> list[ToolDelta]:
        """Open calls whose name has arrived, and pass on their arguments as they grow."""
        assert self._region is not None
        region, out = self._region, []
        while True:
            if self._args is not None:
                piece = self._args.advance(region)
                if piece:
                    out.append(ToolDelta(self._opened - 1, arguments=piece))
                if self._args.end is None:
                    return out
                self._scan, self._args = self._args.end, None
            if self._opened and not self.parallel:
                return out
            m = self._header.search(region, self._scan)
            if m is None:
                return out
            name = json.loads(f'"{m.group(1)}"') if self._header is _JSON_HEADER else m.group(1)
            if name not in self.known:
                return out  # not streamed; finish() decides what it is
            out.append(ToolDelta(self._opened, name=name))
            self._opened += 1
            self._args = _ObjectScanner(m.end())

    def _whole(self, calls: list[ParsedCall]) -> list[ToolDelta]:
        """Deltas for complete calls that streaming did not open (sent in one piece)."""
        out = []
        first = len(self.calls) - len(calls)
        for k, call in enumerate(calls, start=first):
            if k < self._opened:
                continue
            args = json.dumps(call.arguments)
            out += [ToolDelta(k, name=call.name), ToolDelta(k, arguments=args)]
            self._opened = k + 1
            self._scan = max(self._scan, self._used)
        return out

    def _take_complete(self) -> list[ParsedCall]:
        """Calls completed since the last look (only the new part of the region is read)."""
        assert self._region is not None
        try:
            calls, used = self.fmt.complete_calls(self._region, self._used)
            calls = self._checked(calls)
        except ValueError:
            return []  # finish() decides what this region is
        new = self._limit(calls)
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
