"""Stop strings over a stream of text: emit what is safe, hold back what may start a stop."""

from __future__ import annotations


class StopMatcher:
    """Feed text deltas; get back the text that can go to the client now.

    Text that could be the beginning of a stop string is held back until it is either
    completed into a stop (then it is dropped, with everything after it) or ruled out (then it
    is released). A partial stop string therefore never reaches a stream.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._pending + text
        found = [(i, s) for s in self._stops if (i := buf.find(s)) >= 0]
        cut = min(found)[0] if found else -1
        if cut >= 0:
            self.stopped = True
            self.matched = min(found)[1]
            self._pending = ""
            return buf[:cut]
        hold = self._held_suffix(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """The end of generation: whatever was held back was not a stop after all."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
