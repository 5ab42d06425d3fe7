"""One process vs a 2-rank MLX group (ring over loopback) on this machine: decode speed.

    .venv/bin/python benchmarks/distributed.py [--tokens 128] [--runs 3] [--out FILE]

Serves the embedded SmolLM2 (pipeline over 2 ranks: its 9 heads do not split in 2) with
``dvai-bridge serve`` and under ``mlx.launch -n 2 --backend ring``, one after the other, and
measures through the OpenAI API: one greedy stream's decode rate (tokens after the first, over
the time after the first) and 4 concurrent streams' total rate. The group runs under
``mlx.launch`` and, to show what the launcher itself costs, with the environment it would give
each rank but without it (its output-forwarding threads poll in a loop). Also times the ring's
collectives alone (the per-step floor a group adds): an all_sum of 64 int32 words, the size
of the control message every step sends, and of one decode step's hidden state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.distributed.conftest import (
    BIN,
    Served,
    _env,
    launch_group,
    ring_base_port,
    start_one_process,
    start_ranks,
)

PROMPT = "Write a long story about a lighthouse keeper and a storm."

COLLECTIVES = """
import time, mlx.core as mx
g = mx.distributed.init(backend="ring", strict=True)
for name, shape in (("control, 64 int32", (64,)), ("hidden state, 576 fp32", (1, 1, 576))):
    x = mx.ones(shape)
    for _ in range(50):
        mx.eval(mx.distributed.all_sum(x))
    t = time.perf_counter()
    for _ in range(1000):
        mx.eval(mx.distributed.all_sum(x))
    if g.rank() == 0:
        print(f"COLLECTIVE {name}: {(time.perf_counter() - t) / 1000 * 1e6:.0f} us")
"""


def stream_rate(served: Served, tokens: int, seed: int | None = None) -> tuple[float, int]:
    body = {
        "model": served.model_id,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0 if seed is None else 0.8,
        "seed": seed,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    stamps = []
    with httpx.stream("POST", f"{served.base_url}/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                stamps.append(time.perf_counter())
    n = len(stamps)
    return (n - 1) / (stamps[-1] - stamps[0]), n


def measure(served: Served, tokens: int, runs: int) -> dict:
    stream_rate(served, 8)  # warm
    single = [stream_rate(served, tokens)[0] for _ in range(runs)]
    totals = []
    for run in range(runs):
        counts: list[int] = []
        t0 = time.perf_counter()
        threads = [
            threading.Thread(
                target=lambda i=i, run=run, counts=counts: counts.append(
                    stream_rate(served, tokens // 2, seed=run * 10 + i)[1]
                )
            )
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        totals.append(sum(counts) / (time.perf_counter() - t0))
    return {
        "single_stream_decode_tok_s": round(statistics.median(single), 2),
        "single_runs": [round(x, 2) for x in single],
        "four_streams_total_tok_s": round(statistics.median(totals), 2),
        "four_runs": [round(x, 2) for x in totals],
    }


def collectives() -> list[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(COLLECTIVES)
    port = ring_base_port()
    out = subprocess.run(
        [
            str(BIN / "mlx.launch"),
            "-n",
            "2",
            "--backend",
            "ring",
            "-p",
            str(port),
            "--",
            sys.executable,
            f.name,
        ],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    return [ln.split("COLLECTIVE ", 1)[1] for ln in out.stdout.splitlines() if "COLLECTIVE" in ln]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/distributed.json"))
    args = ap.parse_args()
    result: dict = {
        "model": "embedded SmolLM2-135M-Instruct (MLX import, CPU, 1 BLAS thread)",
        "tokens": args.tokens,
    }
    tmp = Path(tempfile.mkdtemp())
    for name, start in (
        ("one_process", start_one_process),
        ("two_ranks_pipeline_mlx_launch", launch_group),
        ("two_ranks_pipeline_no_launcher", lambda: start_ranks(tmp)),
    ):
        served = start()
        try:
            result[name] = measure(served, args.tokens, args.runs)
        finally:
            served.stop()
        print(name, result[name], flush=True)
    result["ring_all_sum_latency"] = collectives()
    print(result["ring_all_sum_latency"])
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
