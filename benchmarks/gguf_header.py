"""Reading cost of a GGUF header: ours (backends/gguf_header.py) against ggml's ``gguf`` package.

    python benchmarks/gguf_header.py FILE.gguf [...]

Best of 3 for each; also checks that both read the same metadata and tensor directory. The
numbers quoted in ``dvai_bridge/backends/gguf_header.py`` come from here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf

from dvai_bridge.backends.gguf_header import read_gguf_header


def best(fn: Callable[[], Any], n: int = 3) -> tuple[float, Any]:
    out, result = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        out = min(out, time.perf_counter() - t0)
    return out, result


def main() -> None:
    for path in sys.argv[1:]:
        full, header = best(lambda p=path: read_gguf_header(p))
        lean, _ = best(lambda p=path: read_gguf_header(p, arrays=False))
        lib, reader = best(lambda p=path: gguf.GGUFReader(p))
        theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        same = theirs == header.metadata and len(reader.tensors) == len(header.tensors)
        size = Path(path).stat().st_size / 1e6
        print(
            f"{Path(path).name} ({size:.0f} MB): ours {full:.3f} s, ours arrays=False "
            f"{lean:.3f} s, gguf.GGUFReader {lib:.3f} s; same header: {same}"
        )


if __name__ == "__main__":
    main()
