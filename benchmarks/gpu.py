"""Our server against mlx_lm.server on a GPU (MLX CUDA or Metal), same checkpoint, same clients.

    python benchmarks/gpu.py build --shape 8b --tokenizer DIR --out /tmp/ckpt-8b
    python benchmarks/gpu.py run --model /tmp/ckpt-8b --levels 1,8,32,64 --out results.json
    python benchmarks/gpu.py checks --model /tmp/ckpt-1b --out checks.json

``build`` makes a random-weight checkpoint of a real shape (Llama-3.2-1B or Llama-3.1-8B
dimensions, 4-bit, group 64) with a given tokenizer (the SmolLM2 one that our embedded model's
MLX import carries): no download, and the speed of a real model of that shape.
``run`` starts both servers on it and, per level, runs a same-shape warm-up (the same number
of streaming clients, 16 tokens) and then the measured round (each client streams
``--max-tokens`` tokens, greedy); servers alternate who goes first at each level. It also times
a cold ~4k-token prompt (time to first token, cache miss). ``checks``: greedy output through
our server equals raw mlx-lm token for token, and ``dvai-bridge serve`` exits 0 on SIGTERM.
Only the Python standard library, httpx and the two servers are needed (the GPU image has no
openai package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # Llama-3.2-1B and Llama-3.1-8B dimensions; tiny: to try the script on a CPU
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 128,
        "head_dim": 32,
        "tie_word_embeddings": True,
    },
    "1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "head_dim": 64,
        "tie_word_embeddings": True,
    },
    "8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "head_dim": 128,
        "tie_word_embeddings": False,
    },
}
PROMPT = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather and every room of the lighthouse."
)


# -- build --------------------------------------------------------------------------------------
def build(shape: str, tokenizer: Path, out: Path) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model

    tok_config = json.loads((tokenizer / "config.json").read_text())
    config = {
        "model_type": "llama",
        "vocab_size": int(tok_config["vocab_size"]),
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
        "bos_token_id": tok_config.get("bos_token_id"),
        "eos_token_id": tok_config.get("eos_token_id"),
        **SHAPES[shape],
    }
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    nn.quantize(model, group_size=64, bits=4)
    mx.eval(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    save_config(
        {**config, "torch_dtype": "bfloat16", "quantization": {"group_size": 64, "bits": 4}},
        out / "config.json",
    )
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_")):
            shutil.copy(f, out / f.name)
    print(f"built {shape} at {out}", flush=True)


# -- servers ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path) -> None:
        self.name, self.cmd, self.port, self.log = name, cmd, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT
        )
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.base + "/v1/models", timeout=2).status_code == 200:
                    return round(time.perf_counter() - t0, 1)
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc


def ours(model: str, port: int, log: Path, *extra: str) -> Server:
    return Server(
        "ours",
        [
            sys.executable,
            "-m",
            "dvai_bridge",
            "serve",
            "--backend",
            "mlx",
            "--model",
            model,
            "--port",
            str(port),
            "--port-attempts",
            "1",
            "--log-level",
            "warning",
            *extra,
        ],
        port,
        log,
    )


def peer(model: str, port: int, log: Path, concurrency: int) -> Server:
    return Server(
        "mlx_lm.server",
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "server",
            "--model",
            model,
            "--port",
            str(port),
            "--log-level",
            "WARNING",
            "--decode-concurrency",
            str(concurrency),
            "--prompt-concurrency",
            str(min(concurrency, 64)),
        ],
        port,
        log,
    )


# -- clients ------------------------------------------------------------------------------------
MODEL_NAME = {"ours": "default", "mlx_lm.server": "default_model"}  # "the one it serves"


async def stream_one(
    client: httpx.AsyncClient, base: str, prompt: str, max_tokens: int, model: str
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices") or []:
                if (c.get("delta") or {}).get("content") and first is None:
                    first = time.perf_counter()
    return {
        "ttft": (first or time.perf_counter()) - t0,
        "total": time.perf_counter() - t0,
        "tokens": tokens,
    }


STAGGER_S = 0.005  # between client starts: mlx_lm.server's listen backlog is 5 (http.server)


async def level(s: Server, clients: int, max_tokens: int, tag: str) -> dict:
    async def one(i: int) -> dict | None:
        await asyncio.sleep(i * STAGGER_S)
        try:
            return await stream_one(
                c, s.base, f"[{tag} {i}] {PROMPT}", max_tokens, MODEL_NAME[s.name]
            )
        except httpx.HTTPError as exc:
            print(f"{s.name}: client {i} failed: {exc!r}", flush=True)
            return None

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as c:
        t0 = time.perf_counter()
        got = await asyncio.gather(*[one(i) for i in range(clients)])
        wall = time.perf_counter() - t0
    rs = [r for r in got if r is not None]
    if not rs:
        return {"clients": clients, "failed": clients}
    ttfts = sorted(r["ttft"] for r in rs)
    total = sum(r["tokens"] for r in rs)
    return {
        "clients": clients,
        "failed": clients - len(rs),
        "tokens": total,
        "wall_s": round(wall, 3),
        "tok_s": round(total / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3),
    }


async def long_prompt_ttft(s: Server, tag: str) -> float:
    words = PROMPT.replace(".", "").split()
    prompt = f"[{tag}] " + " ".join(words[i % len(words)] for i in range(4000))  # ~4k tokens
    async with httpx.AsyncClient(timeout=600) as c:
        r = await stream_one(c, s.base, prompt, 4, MODEL_NAME[s.name])
    return round(r["ttft"], 3)


def gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict:
    levels = [int(x) for x in args.levels.split(",")]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    servers = [
        ours(args.model, free_port(), logs / "ours.log"),
        peer(args.model, free_port(), logs / "peer.log", max(levels)),
    ]
    result = {
        "gpu": gpu_name(),
        "model": args.model,
        "max_tokens": args.max_tokens,
        "levels": [],
        "load_s": {},
        "long_prompt_ttft_s": {},
    }
    try:
        for s in servers:
            result["load_s"][s.name] = s.start()
        for i, n in enumerate(levels):
            row = {"clients": n}
            order = servers if i % 2 == 0 else servers[::-1]
            for s in order:
                asyncio.run(level(s, n, 16, f"warm{n}"))  # same shape, short
                row[s.name] = asyncio.run(level(s, n, args.max_tokens, f"run{n}"))
                print(s.name, row[s.name], flush=True)
            if row["ours"].get("tok_s") and row["mlx_lm.server"].get("tok_s"):
                row["ours/peer"] = round(row["ours"]["tok_s"] / row["mlx_lm.server"]["tok_s"], 3)
            result["levels"].append(row)
        for s in servers:
            asyncio.run(long_prompt_ttft(s, "warm"))
            result["long_prompt_ttft_s"][s.name] = asyncio.run(long_prompt_ttft(s, "cold"))
        print(result["long_prompt_ttft_s"], flush=True)
    finally:
        result["exit_codes"] = {s.name: s.stop() for s in servers}
    return result


# -- checks -------------------------------------------------------------------------------------
def raw_greedy(model_path: str, prompt: str, max_tokens: int) -> str:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, tok = load(model_path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    out = []
    for token, _ in generate_step(
        mx.array(ids), model, max_tokens=max_tokens, sampler=lambda x: mx.argmax(x, axis=-1)
    ):
        token = int(token)
        if token in tok.eos_token_ids:
            break
        out.append(token)
    return tok.decode(out)


def checks(args: argparse.Namespace) -> dict:
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    out: dict = {"gpu": gpu_name(), "model": args.model, "sigterm_exit_codes": []}
    raw = raw_greedy(args.model, PROMPT, 64)
    for i in range(args.sigterm_runs):
        s = ours(args.model, free_port(), logs / f"checks{i}.log")
        s.start()
        r = httpx.post(
            s.base + "/v1/chat/completions",
            timeout=300,
            json={
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 64,
                "temperature": 0,
            },
        )
        if i == 0:
            text = r.json()["choices"][0]["message"]["content"]
            out["greedy_equal_raw_mlx_lm"] = text == raw
            out["greedy_ours"], out["greedy_raw"] = text[:200], raw[:200]
        out["sigterm_exit_codes"].append(s.stop())
        out.setdefault("log_tails", []).append(s.log.read_text()[-600:])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--shape", choices=sorted(SHAPES), required=True)
    b.add_argument("--tokenizer", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--levels", default="1,8,32,64")
    r.add_argument("--max-tokens", type=int, default=256)
    c = sub.add_parser("checks")
    c.add_argument("--model", required=True)
    c.add_argument("--sigterm-runs", type=int, default=3)
    for q in (r, c):
        q.add_argument("--out", type=Path, required=True)
        q.add_argument("--logs", default=os.environ.get("TMPDIR", "/tmp") + "/gpu-bench-logs")
    args = p.parse_args()
    if args.cmd == "build":
        build(args.shape, args.tokenizer, args.out)
        return
    result = run(args) if args.cmd == "run" else checks(args)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
