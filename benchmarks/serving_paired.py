"""Paired rounds: our server and ``mlx_lm.server`` on the same fp32 weights, both up, one idle
while the other works; N streaming clients; the rounds alternate (ours, peer, peer, ours, ...)
and each pair of rounds sends both servers the same prompts.

Why: on a shared host a 2-core VM's speed drifts by +-20% from one quarter hour to the next
(memory bandwidth taken by other VMs is invisible from inside this one: ``foreign_cpu`` stays
0). ``serving.py`` runs all of one server's scenarios and then the other's, so it can compare a
fast window against a slow one; its 8-client ratio moved between 1.15 and 1.68 over three runs
on one evening. Paired rounds compare within seconds, and the ratio reported is the median of the
per-pair ratios.

    . .venv/bin/activate
    python benchmarks/serving_paired.py                    # 8 clients, 10 pairs, 64 tokens
    python benchmarks/serving_paired.py --clients 1,8 --pairs 6

Writes ``benchmarks/results/serving_paired.json`` (``--out``). The servers, prompts, flags and
client are serving.py's (same system prompt, distinct story requests, temperature 0).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import (
    OURS_SCRIPT,
    PEER_FAST_BLAS_SCRIPT,
    RESULTS,
    Bench,
    Server,
    default_folder,
    free_port,
    git_info,
    machine_info,
    write_same_weights,
)


async def run(
    servers: list[Server], levels: list[int], pairs: int, max_tokens: int, settle: float
) -> dict:
    benches = {s.name: Bench(s, timeout=900) for s in servers}
    for bench in benches.values():
        await bench.warmup()
    await asyncio.sleep(settle)
    out: dict = {}
    try:
        for n in levels:
            rows = []
            for k in range(pairs):
                order = servers if k % 2 == 0 else servers[::-1]
                row = {}
                for server in order:
                    got: dict = {}
                    await benches[server.name].concurrency([n], max_tokens, False, f"pair{k}", got)
                    r = got[str(n)]["rounds"][0]
                    row[server.name] = {
                        key: r[key]
                        for key in (
                            "aggregate_tok_s",
                            "ttft_p50_s",
                            "wall_s",
                            "completion_tokens",
                            "cached_tokens",
                        )
                    } | {
                        "server_cpu": r["cpu"]["server_cpu"],
                        "foreign_cpu": r["cpu"]["foreign_cpu"],
                    }
                row["ratio"] = round(
                    row["ours"]["aggregate_tok_s"] / row["peer_same_weights"]["aggregate_tok_s"], 3
                )
                rows.append(row)
                print(
                    f"  {n} clients, pair {k}: ours {row['ours']['aggregate_tok_s']:6.2f}  "
                    f"peer {row['peer_same_weights']['aggregate_tok_s']:6.2f}  "
                    f"ratio {row['ratio']}",
                    flush=True,
                )

            def med(name: str, key: str, rows: list[dict] = rows) -> float:
                return round(statistics.median(r[name][key] for r in rows), 3)

            out[str(n)] = {
                "clients": n,
                "pairs": pairs,
                "max_tokens": max_tokens,
                "ratio_median": round(statistics.median(r["ratio"] for r in rows), 3),
                "ratio_min": min(r["ratio"] for r in rows),
                "ratio_max": max(r["ratio"] for r in rows),
                "ours_pairs_won": sum(r["ratio"] > 1 for r in rows),
                **{
                    f"{name}_{key}": med(name, key)
                    for name in ("ours", "peer_same_weights")
                    for key in ("aggregate_tok_s", "ttft_p50_s", "server_cpu")
                },
                "foreign_cpu_max": max(
                    max(r["ours"]["foreign_cpu"], r["peer_same_weights"]["foreign_cpu"])
                    for r in rows
                ),
                "rows": rows,
            }
            o = out[str(n)]
            print(
                f"{n} clients: ours/peer median {o['ratio_median']} (min {o['ratio_min']}, "
                f"max {o['ratio_max']}; ours won {o['ours_pairs_won']}/{pairs}); medians "
                f"{o['ours_aggregate_tok_s']} vs {o['peer_same_weights_aggregate_tok_s']} tok/s",
                flush=True,
            )
    finally:
        for bench in benches.values():
            await bench.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="8", help="comma-separated client counts (default 8)")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "serving_paired.json")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    folder = (args.model or default_folder()).resolve()
    work = Path(tempfile.mkdtemp(prefix="dvai-paired-bench-"))
    results: dict = {
        "benchmark": "serving_paired",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "versions": git_info(),
        "model_folder": str(folder),
        "workload": {
            "clients": levels,
            "pairs": args.pairs,
            "max_tokens": args.max_tokens,
            "max_batch_size": args.max_batch_size,
            "settle_s": args.settle,
            "order": "pair k even: ours then peer; odd: peer then ours",
        },
    }
    servers: list[Server] = []
    try:
        print("writing the fp32 checkpoint for the peer ...", flush=True)
        sw = work / "same-weights"
        results["peer_checkpoint"] = write_same_weights(folder, sw)
        cfg = {
            "backend": "mlx",
            "model_path": str(folder),
            "http_base_port": free_port(),
            "http_max_port_attempts": 1,
            "max_batch_size": args.max_batch_size,
            "log_level": "info",
        }
        port = free_port()
        flags = ["--decode-concurrency", str(args.max_batch_size), "--log-level", "WARNING"]
        servers = [
            Server(
                "ours",
                [sys.executable, "-c", OURS_SCRIPT, json.dumps(cfg)],
                cfg["http_base_port"],
                None,
                work,
                600,
            ),
            Server(
                "peer_same_weights",
                [
                    sys.executable,
                    "-c",
                    PEER_FAST_BLAS_SCRIPT,
                    "--model",
                    str(sw),
                    "--port",
                    str(port),
                    *flags,
                ],
                port,
                "default_model",
                work,
                600,
            ),
        ]
        for server in servers:
            server.start()
        results["servers"] = {s.name: {"args": s.cmd[3:], "log": s.info} for s in servers}
        t0 = time.perf_counter()
        results["concurrency"] = asyncio.run(
            run(servers, levels, args.pairs, args.max_tokens, args.settle)
        )
        results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
