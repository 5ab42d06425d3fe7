"""Serving benchmark: our server vs ``mlx_lm.server`` under concurrent and multi-turn load.

Same model (default: the embedded SmolLM2-135M-Instruct Q4_1 GGUF, imported into an MLX folder
by ``gguf_import.cached_import``), same machine, ONE server at a time (never two workloads at
once). Servers:

  ours               our server, started in a subprocess by ``shared.start_blocking(StartConfig(
                     backend="mlx", model_path=<folder>, max_batch_size=8, ...))``; on CPU it
                     converts the weights on load to dequantized fp32 with OpenBLAS.
  peer_same_weights  ``mlx_lm.server`` on a checkpoint written here in that same fp32 form
                     (``enable_fast_blas(); mlx_lm.load; prepare_model_for_cpu; save_model``),
                     run by a wrapper that calls ``enable_fast_blas()`` before mlx_lm.server's
                     ``main``: same weights, same BLAS, so differences are scheduling and caching.
  peer_stock         ``python -m mlx_lm.server`` on the folder as stored (4-bit, fp16 scales,
                     bundled BLAS): ~30x slower on CPU, so it runs a reduced, time-boxed workload
                     ("small": short prompt, 16 tokens, 1, 4 and 8 clients; no multi-turn) and ours
                     runs that same small workload too, for like-for-like ratios.

Both mlx_lm.server configurations get ``--decode-concurrency`` = our ``max_batch_size`` (8) so the
batch width is equal (mlx_lm's own default is 32); other flags are mlx_lm's defaults.

Scenarios (openai SDK ``AsyncOpenAI``, streaming, ``stream_options.include_usage``, temperature 0,
fixed ``max_tokens``; every request's ``usage.completion_tokens`` is recorded, and requests that
stopped short of ``max_tokens`` are listed under ``short_completions``):

  single       one stream at a time (``--repeats``, distinct prompts); decode tok/s =
               (completion_tokens - 1) / (last content chunk - first content chunk); TTFT.
  concurrency  N streaming clients started together (N = 1, 4, 8, 16), distinct prompts;
               aggregate tok/s = total completion tokens / wall time (first send to last byte);
               p50/p95 TTFT over the N clients. Each N runs ``--concurrency-repeats`` rounds
               (default 3) and the medians are reported (rounds are kept in the JSON).
  multi_turn   one conversation of 8 turns; each turn appends the assistant's streamed reply
               and a new ~200-token user message, so the history grows to ~2.2k tokens; TTFT,
               prompt_tokens and ``prompt_tokens_details.cached_tokens`` per turn.
  cold         the server is restarted (empty prompt cache), warmed up with an unrelated short
               request, then sent the final turn's history fresh: TTFT without prefix reuse.

Every server is warmed up (one short request) after each start and then idles ``--settle``
seconds (default 10: ours adapts its BLAS threads in the first seconds); neither is measured. Each
scenario records CPU use of the server process, of this client process and of everything else
(``foreign_cpu``, in cores: on a shared machine that is the main source of noise) and the load
average. Ratios are ours/peer: for tok/s > 1 means ours is faster, for TTFT < 1 means ours is
faster.

    . .venv/bin/activate
    python benchmarks/serving.py                  # full run, ~15-25 min on 2 quiet cores
    python benchmarks/serving.py --quick          # smoke run: 1 and 4 clients, 3 turns, 32 tokens
    python benchmarks/serving.py --skip-stock     # no stock mlx_lm.server
    python benchmarks/serving.py --plot-only benchmarks/results/serving.json

Writes ``benchmarks/results/serving.json`` (``--out``) and ``serving.png`` next to it (``--png``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _cpu import proc_cpu, system_busy

RESULTS = HERE / "results"

SYSTEM = (
    "You are a creative writing assistant. You write long, detailed stories with vivid "
    "descriptions, many characters, dialogue and several chapters. Never stop early; always "
    "keep writing until the story is complete."
)
TOPICS = [
    "a lighthouse keeper who finds a map in a bottle",
    "a city built on the back of a whale",
    "two rival bakers in a mountain village",
    "a robot that learns to paint",
    "a girl who can hear the thoughts of trees",
    "an expedition to the bottom of the sea",
    "a clockmaker whose clocks run backwards",
    "a library that rearranges itself at night",
    "a young cartographer mapping a forest",
    "a train that never stops",
    "a musician who loses her voice",
    "a dragon that is afraid of fire",
    "a farmer who grows stars",
    "a detective in a floating market",
    "a knight who refuses to fight",
    "a ship's cat on a long voyage",
    "a village where it always snows",
    "an inventor building a flying bicycle",
    "a tailor who sews with moonlight",
    "a boy who collects echoes",
]
_PROSE = (
    "the old river ran past the village where farmers weavers and woodcutters lived in "
    "stone cottages under a grey sky and every morning the miller opened the great doors of "
    "the mill house while children ran along the muddy road toward the school a merchant "
    "from the city arrived with paper ink glass and news of a storm in the northern hills "
    "the blacksmith hammered iron nails for every door because the forest was close and the "
    "paths moved at night lanterns shone between the trees and a silver light covered the "
    "water as the council of elders met to decide what should be done about the missing "
    "surveyor whose notebook lay open on the table beside a compass a chain and a candle "
    "that never went out"
)
WORDS = _PROSE.split()


# --------------------------------------------------------------------------- CPU accounting


class CpuWatch:
    """Cores' worth of CPU used during a block by the server, by this process and by others."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.result: dict = {}

    def __enter__(self) -> CpuWatch:
        self.t, self.sys = time.perf_counter(), system_busy()
        self.srv, self.me = proc_cpu(self.pid), proc_cpu(os.getpid())
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        dt = max(time.perf_counter() - self.t, 1e-9)
        srv = proc_cpu(self.pid) - self.srv
        me = proc_cpu(os.getpid()) - self.me
        busy = system_busy() - self.sys
        self.result = {
            "server_cpu": round(srv / dt, 2),
            "client_cpu": round(me / dt, 2),
            "foreign_cpu": round(max(busy - srv - me, 0.0) / dt, 2),
            "loadavg_1m": [round(self.load0, 2), round(os.getloadavg()[0], 2)],
            "elapsed_s": round(dt, 2),
        }


# --------------------------------------------------------------------------- prompts


def story_messages(tag: str, topic: str, small: bool) -> list[dict]:
    """A request that keeps generating; ``tag`` makes each prompt distinct (no whole-prompt
    reuse; the system prompt is a shared prefix, as in real traffic)."""
    if small:  # short: the stock form prefills at a few tok/s
        return [{"role": "user", "content": f"({tag}) Write a long story about {topic}."}]
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f"Request {tag}. Write a long story about {topic}. "
            "Use several chapters, with dialogue.",
        },
    ]


class Filler:
    """Deterministic ~N-token user messages for the multi-turn conversation."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def ntokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def message(self, turn: int, target: int) -> str:
        rng = random.Random(1000 + turn)
        head = f"Part {turn} of my notes for the story:\n"
        tail = "\n\nContinue the story from where you stopped, using these notes. Write at length."
        words: list[str] = []
        while True:
            n = rng.randint(8, 16)
            sent = " ".join(rng.choice(WORDS) for _ in range(n))
            words.append(sent[0].upper() + sent[1:] + ".")
            text = head + " ".join(words) + tail
            if self.ntokens(text) >= target:
                return text


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OURS_SCRIPT = r"""
import json, logging, signal, sys, threading
from dvai_bridge import shared, StartConfig
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
srv = shared.start_blocking(StartConfig(**json.loads(sys.argv[1])))
print(f"Serving {srv.model_id} ({srv.backend}) at {srv.base_url}", flush=True)
done = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: done.set())
done.wait()
shared.stop()
"""

PEER_FAST_BLAS_SCRIPT = r"""
import sys
from dvai_bridge.backends.mlx.cpu_tuning import enable_fast_blas
print("BLAS:", enable_fast_blas(), flush=True)  # before mlx is imported: same BLAS as ours
from mlx_lm.server import main
sys.argv = ["mlx_lm.server", *sys.argv[1:]]
main()
"""

CONVERT_SCRIPT = r"""
import json, shutil, sys
from pathlib import Path
from dvai_bridge.backends.mlx.cpu_tuning import enable_fast_blas
from dvai_bridge.backends.mlx.cpu_tuning.weights import prepare_model_for_cpu
blas = enable_fast_blas()
import mlx.core as mx
from mlx_lm.utils import load, save_config, save_model
mx.set_default_device(mx.cpu)
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
model, _tok, config = load(str(src), return_config=True)
form = prepare_model_for_cpu(model)
save_model(dst, model)
for k in ("quantization", "quantization_config"):
    config.pop(k, None)
config["torch_dtype"] = "float32"
save_config(config, dst / "config.json")
for f in src.iterdir():
    if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
        shutil.copy(f, dst / f.name)
from mlx.utils import tree_flatten
dtypes = sorted({str(p.dtype) for _, p in tree_flatten(model.parameters())})
print(json.dumps({"blas": blas, "form": form, "dtypes": dtypes}), flush=True)
"""


class Server:
    """One server subprocess; ``start`` waits until /v1/models answers."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        model: str | None,
        log_dir: Path,
        load_timeout: float,
    ) -> None:
        self.name, self.cmd, self.port, self.model = name, cmd, port, model
        self.log_dir, self.load_timeout = log_dir, load_timeout
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.load_s: list[float] = []

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def _start(self) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        t0 = time.perf_counter()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.load_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n" + self.log_tail()
                )
            try:  # mlx_lm.server's /v1/models scans the HF cache: probe /health there
                probe = "/v1/models" if self.model is None else "/health"
                with urllib.request.urlopen(f"{self.base}{probe}", timeout=5) as r:
                    body = r.read()
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not answer in {self.load_timeout}s:\n" + self.log_tail()
                )
            time.sleep(0.25)
        self.load_s.append(round(time.perf_counter() - t0, 2))
        if self.model is None:
            self.model = json.loads(body)["data"][0]["id"]
        self.info = [
            ln
            for ln in self.log_tail(200).splitlines()
            if any(w in ln for w in ("BLAS", "weight form", "Serving"))
        ][-4:]
        print(f"  [{self.name}] up in {self.load_s[-1]} s (pid {self.proc.pid})", flush=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --------------------------------------------------------------------------- client


async def stream_one(client, model: str, messages: list, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = last = None
    parts: list[str] = []
    usage = finish = None
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        max_tokens=max_tokens,
    )
    async for ch in stream:
        if ch.choices:
            c = ch.choices[0]
            if c.delta is not None and c.delta.content:
                now = time.perf_counter()
                first = first or now
                last = now
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
        if ch.usage is not None:
            usage = ch.usage
    end = time.perf_counter()
    n = usage.completion_tokens if usage else None
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    return {
        "ttft_s": round(first - t0, 4) if first else None,
        "total_s": round(end - t0, 4),
        "decode_tok_s": (
            round((n - 1) / (last - first), 2)
            if n and n > 1 and first and last and last > first
            else None
        ),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": n,
        "cached_tokens": getattr(details, "cached_tokens", None) if details else None,
        "finish_reason": finish,
        "text": "".join(parts),
        "_t0": t0,
        "_end": end,
    }


def pct(vals: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100)."""
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    k = (len(vals) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return round(vals[lo] + (vals[hi] - vals[lo]) * (k - lo), 4)


def med(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def public(r: dict, keep_text: bool = False) -> dict:
    out = {k: v for k, v in r.items() if not k.startswith("_") and k != "text"}
    if keep_text:
        out["text_head"] = r["text"][:80]
    return out


class Bench:
    def __init__(self, server: Server, timeout: float) -> None:
        from openai import AsyncOpenAI

        self.server = server
        self.client = AsyncOpenAI(
            base_url=f"{server.base}/v1", api_key="bench", max_retries=0, timeout=timeout
        )
        self.short: list[dict] = []

    def _check(self, scenario: str, r: dict, max_tokens: int) -> None:
        if r["completion_tokens"] != max_tokens:
            self.short.append(
                {
                    "scenario": scenario,
                    "completion_tokens": r["completion_tokens"],
                    "finish_reason": r["finish_reason"],
                }
            )

    async def warmup(self) -> None:
        msgs = [
            {"role": "system", "content": "Warm-up."},
            {"role": "user", "content": "Say hello."},
        ]
        await stream_one(self.client, self.server.model, msgs, 4)

    async def single(self, repeats: int, max_tokens: int, small: bool, tag: str) -> dict:
        runs = []
        with CpuWatch(self.server.proc.pid) as w:
            for i in range(repeats):
                msgs = story_messages(f"{tag}-{i}", TOPICS[i % len(TOPICS)], small)
                r = await stream_one(self.client, self.server.model, msgs, max_tokens)
                self._check(tag, r, max_tokens)
                runs.append(r)
        return {
            "max_tokens": max_tokens,
            "repeats": repeats,
            "decode_tok_s": med([r["decode_tok_s"] for r in runs]),
            "ttft_s": med([r["ttft_s"] for r in runs]),
            "runs": [public(r) for r in runs],
            "cpu": w.result,
        }

    async def concurrency(
        self, levels: list[int], max_tokens: int, small: bool, tag: str, out: dict, repeats: int = 1
    ) -> dict:
        """Each level ``repeats`` times (fresh prompts each time); the figures are medians over
        the rounds, which are kept under ``rounds`` (one round swings +-20% on 2 cores)."""
        for n in levels:
            rounds = []
            for rep in range(repeats):
                msgs = [
                    story_messages(f"{tag}-c{n}-r{rep}-{i}", TOPICS[(i + n) % len(TOPICS)], small)
                    for i in range(n)
                ]
                with CpuWatch(self.server.proc.pid) as w:
                    t0 = time.perf_counter()
                    runs = await asyncio.gather(
                        *(stream_one(self.client, self.server.model, m, max_tokens) for m in msgs)
                    )
                    wall = time.perf_counter() - t0
                for r in runs:
                    self._check(f"{tag}/{n}", r, max_tokens)
                total = sum(r["completion_tokens"] or 0 for r in runs)
                ttfts = [r["ttft_s"] for r in runs]
                rounds.append(
                    {
                        "wall_s": round(wall, 3),
                        "completion_tokens": total,
                        "aggregate_tok_s": round(total / wall, 2),
                        "ttft_p50_s": pct(ttfts, 50),
                        "ttft_p95_s": pct(ttfts, 95),
                        "ttft_max_s": pct(ttfts, 100),
                        "per_stream_decode_tok_s_p50": med([r["decode_tok_s"] for r in runs]),
                        "prompt_tokens": [r["prompt_tokens"] for r in runs],
                        "cached_tokens": [r["cached_tokens"] for r in runs],
                        "cpu": w.result,
                    }
                )
            out[str(n)] = {
                "clients": n,
                "max_tokens": max_tokens,
                "repeats": repeats,
                **{
                    k: med([r[k] for r in rounds])
                    for k in (
                        "aggregate_tok_s",
                        "ttft_p50_s",
                        "ttft_p95_s",
                        "ttft_max_s",
                        "per_stream_decode_tok_s_p50",
                        "wall_s",
                    )
                },
                "completion_tokens": rounds[0]["completion_tokens"],
                "cpu": {
                    k: med([r["cpu"][k] for r in rounds]) if isinstance(v, (int, float)) else v
                    for k, v in rounds[0]["cpu"].items()
                },
                "rounds": rounds,
            }
            print(
                f"    {n:>2} clients: {out[str(n)]['aggregate_tok_s']:8.2f} tok/s aggregate "
                f"(median of {repeats}: {[r['aggregate_tok_s'] for r in rounds]}), "
                f"TTFT p50 {out[str(n)]['ttft_p50_s']} s p95 {out[str(n)]['ttft_p95_s']} s",
                flush=True,
            )
        return out

    async def multi_turn(
        self, turns: int, user_tokens: int, max_tokens: int, filler: Filler
    ) -> tuple[dict, list[dict]]:
        msgs: list[dict] = [{"role": "system", "content": SYSTEM}]
        per_turn = []
        users = [filler.message(k, user_tokens) for k in range(1, turns + 1)]
        with CpuWatch(self.server.proc.pid) as w:
            for k in range(1, turns + 1):
                msgs.append({"role": "user", "content": users[k - 1]})
                r = await stream_one(self.client, self.server.model, list(msgs), max_tokens)
                self._check(f"multi_turn/{k}", r, max_tokens)
                per_turn.append({"turn": k, **public(r, keep_text=True)})
                print(
                    f"    turn {k}: prompt {r['prompt_tokens']} cached {r['cached_tokens']} "
                    f"TTFT {r['ttft_s']} s",
                    flush=True,
                )
                if k < turns:
                    msgs.append({"role": "assistant", "content": r["text"]})
        later = [t["ttft_s"] for t in per_turn[1:]]
        return {
            "turns": turns,
            "user_tokens_target": user_tokens,
            "max_tokens": max_tokens,
            "per_turn": per_turn,
            "ttft_s": [t["ttft_s"] for t in per_turn],
            "ttft_mean_turns_2plus_s": round(statistics.mean(later), 4) if later else None,
            "final_prompt_tokens": per_turn[-1]["prompt_tokens"],
            "cpu": w.result,
        }, msgs

    async def cold(self, msgs: list[dict], max_tokens: int) -> dict:
        with CpuWatch(self.server.proc.pid) as w:
            r = await stream_one(self.client, self.server.model, msgs, max_tokens)
        self._check("cold", r, max_tokens)
        return {**public(r), "cpu": w.result}

    async def close(self) -> None:
        await self.client.close()


# --------------------------------------------------------------------------- driver


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
        platform.processor(),
    )
    mem = next((int(ln.split()[1]) // 1024 for ln in meminfo if ln.startswith("MemTotal")), None)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "mem_total_mib": mem,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_info() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], check=False, cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_files": len(git("status", "--porcelain").splitlines()),
    }


def default_folder() -> Path:
    from dvai_bridge.backends.mlx.gguf_import import cached_import
    from dvai_bridge.store.resolve import embedded_default_gguf

    return Path(cached_import(embedded_default_gguf()))


def write_same_weights(src: Path, dst: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", CONVERT_SCRIPT, str(src), str(dst)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if p.returncode != 0:
        raise RuntimeError(f"same-weights conversion failed:\n{p.stderr[-3000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    info["convert_s"] = round(time.perf_counter() - t0, 2)
    info["size_mib"] = round(sum(f.stat().st_size for f in dst.iterdir()) / 2**20, 1)
    if not str(info.get("form", "")).startswith("dequantized"):
        print(f"  WARNING: same-weights form is not dequantized fp32: {info}", flush=True)
    return info


def foreign_cpus(servers: dict) -> list[float]:
    """``foreign_cpu`` (cores used by other processes) of every scenario of every server."""
    out = []
    for e in servers.values():
        for k, v in e.get("scenarios", {}).items():
            if k.startswith("concurrency"):
                out += [c["cpu"]["foreign_cpu"] for c in v.values()]
            elif isinstance(v, dict) and "cpu" in v:
                out.append(v["cpu"]["foreign_cpu"])
    return out


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b not in (None, 0) else None


def ratios(ours: dict, peer: dict) -> dict:
    out: dict = {}
    for key in ("single", "single_small"):
        if key in ours and key in peer:
            out[key] = {
                "decode_tok_s": ratio(ours[key]["decode_tok_s"], peer[key]["decode_tok_s"]),
                "ttft_s": ratio(ours[key]["ttft_s"], peer[key]["ttft_s"]),
            }
    for key in ("concurrency", "concurrency_small"):
        if key in ours and key in peer:
            out[key] = {
                n: {
                    m: ratio(ours[key][n][m], peer[key][n][m])
                    for m in ("aggregate_tok_s", "ttft_p50_s", "ttft_p95_s")
                }
                for n in ours[key]
                if n in peer[key]
            }
    if "multi_turn" in ours and "multi_turn" in peer:
        a, b = ours["multi_turn"], peer["multi_turn"]
        out["multi_turn"] = {
            "ttft_per_turn": [ratio(x, y) for x, y in zip(a["ttft_s"], b["ttft_s"], strict=False)],
            "ttft_mean_turns_2plus": ratio(
                a["ttft_mean_turns_2plus_s"], b["ttft_mean_turns_2plus_s"]
            ),
        }
    if "cold" in ours and "cold" in peer:
        out["cold"] = {"ttft_s": ratio(ours["cold"]["ttft_s"], peer["cold"]["ttft_s"])}
    return out


def cache_benefit(sc: dict) -> dict | None:
    """Per server: cold TTFT of the final history / warm TTFT of the final turn."""
    if "multi_turn" not in sc or "cold" not in sc:
        return None
    warm = sc["multi_turn"]["ttft_s"][-1]
    return {
        "final_turn_warm_ttft_s": warm,
        "final_turn_cold_ttft_s": sc["cold"]["ttft_s"],
        "cold_over_warm": ratio(sc["cold"]["ttft_s"], warm),
    }


def run_server(name: str, server: Server, plan: dict, filler: Filler, results: dict, save) -> None:
    """Run ``plan``'s scenarios on one server (started and stopped here).

    A scenario that fails is recorded under ``errors`` and the next one runs. With
    ``plan["budget_s"]`` every scenario is cut off (its streams cancelled) when the time box
    ends, and the scenarios left are listed under ``skipped``.
    """
    entry = results["servers"][name]
    sc = entry.setdefault("scenarios", {})
    entry.setdefault("short_completions", [])
    budget = plan.get("budget_s")
    deadline = time.monotonic() + (budget or 1e9)

    def left() -> float:
        return deadline - time.monotonic()

    def skip(kind: str) -> None:
        entry.setdefault("skipped", []).append(f"{kind}: time box ({budget} s) used up")
        print(f"  [{name}] skipping {kind}: time box used up", flush=True)

    async def step_run(bench: Bench, step: tuple) -> list[dict] | None:
        kind, history = step[0], None
        print(f"  [{name}] {kind} ...", flush=True)
        if kind in ("single", "single_small"):
            sc[kind] = await bench.single(plan["repeats"], step[1], kind.endswith("small"), kind)
            print(
                f"    decode {sc[kind]['decode_tok_s']} tok/s, TTFT {sc[kind]['ttft_s']} s",
                flush=True,
            )
        elif kind in ("concurrency", "concurrency_small"):
            sc[kind] = {}  # filled level by level: a time-out keeps the levels done
            await bench.concurrency(
                step[2],
                step[1],
                kind.endswith("small"),
                kind,
                sc[kind],
                step[3] if len(step) > 3 else 1,
            )
        elif kind == "multi_turn":
            sc[kind], history = await bench.multi_turn(step[2], step[3], step[1], filler)
        return history

    async def guarded(bench: Bench, kind: str, coro):
        try:
            return await asyncio.wait_for(coro, timeout=max(left(), 1.0))
        except Exception as e:
            msg = f"{kind}: {type(e).__name__}: {e}"[:500]
            if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
                msg = f"{kind}: cut off by the time box ({budget} s)"
            entry.setdefault("errors", []).append(msg)
            print(f"  [{name}] ERROR {msg}", flush=True)
            return None
        finally:
            save()

    async def go() -> list[dict] | None:
        bench = Bench(server, plan["timeout_s"])
        history = None
        try:
            await guarded(bench, "warmup", bench.warmup())
            await asyncio.sleep(plan.get("settle_s", 0))  # let a server's own tuning settle
            for step in plan["steps"]:
                if step[0] == "cold":
                    continue
                if left() <= 0:
                    skip(step[0])
                    continue
                h = await guarded(bench, step[0], step_run(bench, step))
                history = h or history
            return history
        finally:
            entry["short_completions"] += bench.short
            await bench.close()

    async def go_cold(history: list[dict], max_tokens: int) -> None:
        bench = Bench(server, plan["timeout_s"])
        try:
            await guarded(bench, "warmup", bench.warmup())
            r = await guarded(bench, "cold", bench.cold(history, max_tokens))
            if r is not None:
                sc["cold"] = r
                print(
                    f"    cold: prompt {r['prompt_tokens']} cached {r['cached_tokens']} "
                    f"TTFT {r['ttft_s']} s",
                    flush=True,
                )
        finally:
            entry["short_completions"] += bench.short
            await bench.close()

    try:
        server.start()
        try:
            history = asyncio.run(go())
        finally:
            server.stop()
        cold = next((s for s in plan["steps"] if s[0] == "cold"), None)
        if cold and history:
            if left() <= 0:
                skip("cold")
            else:
                print(f"  [{name}] cold (restart, empty cache) ...", flush=True)
                server.start()
                try:
                    asyncio.run(go_cold(history, cold[1]))
                finally:
                    server.stop()
    except Exception as e:
        entry.setdefault("errors", []).append(f"server: {type(e).__name__}: {e}"[:2000])
        print(f"  [{name}] ERROR {e}", flush=True)
    entry["load_s"] = server.load_s
    entry["server_log"] = getattr(server, "info", [])
    save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 and 4 clients, 3 turns, 32 tokens; stock: single only",
    )
    ap.add_argument("--skip-stock", action="store_true", help="no stock mlx_lm.server run")
    ap.add_argument(
        "--skip-same-weights", action="store_true", help="no same-weights mlx_lm.server run"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    ap.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    ap.add_argument("--plot-only", type=Path, default=None, help="re-plot a results JSON")
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="an MLX folder (default: the embedded SmolLM2-135M, imported)",
    )
    ap.add_argument("--max-tokens", type=int, default=None, help="default 64 (quick: 32)")
    ap.add_argument("--clients", default=None, help="default 1,4,8,16 (quick: 1,4)")
    ap.add_argument("--turns", type=int, default=None, help="default 8 (quick: 3)")
    ap.add_argument("--user-tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=None, help="single stream; default 3 (quick 1)")
    ap.add_argument(
        "--concurrency-repeats",
        type=int,
        default=None,
        help="rounds per client count, medians reported; default 3 (quick 1)",
    )
    ap.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="ours: max_batch_size; peers: --decode-concurrency",
    )
    ap.add_argument("--stock-max-tokens", type=int, default=None, help="default 16 (quick: 8)")
    ap.add_argument(
        "--stock-budget",
        type=float,
        default=None,
        help="time box for the stock server's scenarios, s (default 1200; quick 300)",
    )
    ap.add_argument("--load-timeout", type=float, default=600)
    ap.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds each server idles after its warm-up before the first "
        "scenario (ours adapts its BLAS threads within ~4-10 s of start)",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop servers

    if args.plot_only:
        png = args.png or args.plot_only.with_suffix(".png")
        plot(json.loads(args.plot_only.read_text()), png)
        print(f"wrote {png}")
        return

    q = args.quick
    max_tokens = args.max_tokens or (32 if q else 64)
    levels = [int(x) for x in (args.clients or ("1,4" if q else "1,4,8,16")).split(",")]
    turns = args.turns or (3 if q else 8)
    repeats = args.repeats or (1 if q else 3)
    stock_tokens = args.stock_max_tokens or (8 if q else 16)
    stock_budget = args.stock_budget or (300 if q else 1200)
    stock_levels = [] if q else [1, 4, 8]
    png = args.png or args.out.with_suffix(".png")

    folder = (args.model or default_folder()).resolve()
    filler = Filler(folder)
    work = Path(tempfile.mkdtemp(prefix="dvai-serving-bench-"))
    print(f"model folder: {folder}\nwork dir: {work}\nload average: {os.getloadavg()}", flush=True)

    results: dict = {
        "benchmark": "serving",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": q,
        "machine": machine_info(),
        "versions": {
            "dvai-bridge": _version("dvai-bridge"),
            "mlx": _version("mlx"),
            "mlx-lm": _version("mlx-lm"),
            "openai": _version("openai"),
            "ngsolve-openblas": _version("ngsolve-openblas"),
        }
        | git_info(),
        "model_folder": str(folder),
        "workload": {
            "max_tokens": max_tokens,
            "clients": levels,
            "turns": turns,
            "user_tokens": args.user_tokens,
            "single_repeats": repeats,
            "max_batch_size": args.max_batch_size,
            "temperature": 0,
            "settle_s": args.settle,
            "stock": {
                "max_tokens": stock_tokens,
                "clients": stock_levels,
                "budget_s": stock_budget,
                "note": "stock runs only the small workload (short prompt, "
                "few tokens) and no multi-turn/cold: a ~2k-token prefill "
                "on the stock 4-bit/fp16 form takes many minutes on CPU",
            },
        },
        "notes": [],
        "servers": {},
    }
    if q:
        results["notes"].append(
            "--quick smoke run: reduced workload; not for comparison. Take "
            "real numbers with a full run on a quiet machine."
        )

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        res = dict(results)
        sv = res["servers"]
        res["ratios"] = {}
        if "ours" in sv:
            for peer in ("peer_same_weights", "peer_stock"):
                if peer in sv:
                    res["ratios"][f"ours/{peer}"] = ratios(
                        sv["ours"].get("scenarios", {}), sv[peer].get("scenarios", {})
                    )
        res["cache_benefit"] = {k: cache_benefit(v.get("scenarios", {})) for k, v in sv.items()}
        res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        foreign = foreign_cpus(sv)
        if foreign:
            res["foreign_cpu_range"] = [min(foreign), max(foreign)]
            res["quiet_machine"] = max(foreign) < 0.25
        args.out.write_text(json.dumps(res, indent=1) + "\n")

    conc_repeats = args.concurrency_repeats or (1 if args.quick else 3)
    full_steps = [
        ("single", max_tokens),
        ("concurrency", max_tokens, levels, conc_repeats),
        ("multi_turn", max_tokens, turns, args.user_tokens),
        ("cold", max_tokens),
    ]
    small_steps = [("single_small", stock_tokens)] + (
        [("concurrency_small", stock_tokens, stock_levels)] if stock_levels else []
    )

    try:
        # ---- ours
        cfg = {
            "backend": "mlx",
            "model_path": str(folder),
            "http_base_port": free_port(),
            "http_max_port_attempts": 1,
            "max_batch_size": args.max_batch_size,
            "log_level": "info",
        }  # info: the log tells the BLAS and the weight form
        ours = Server(
            "ours",
            [sys.executable, "-c", OURS_SCRIPT, json.dumps(cfg)],
            cfg["http_base_port"],
            None,
            work,
            args.load_timeout,
        )
        results["servers"]["ours"] = {
            "how": "subprocess: shared.start_blocking(StartConfig(...))",
            "config": cfg,
        }
        print("== ours", flush=True)
        steps = full_steps + ([] if args.skip_stock else small_steps)
        run_server(
            "ours",
            ours,
            {"steps": steps, "repeats": repeats, "timeout_s": 900, "settle_s": args.settle},
            filler,
            results,
            save,
        )

        peer_flags = ["--decode-concurrency", str(args.max_batch_size), "--log-level", "WARNING"]
        # ---- peer, same weights
        if args.skip_same_weights:
            results["notes"].append("peer_same_weights skipped (--skip-same-weights)")
        else:
            print("== peer_same_weights: writing the fp32 checkpoint ...", flush=True)
            sw = work / "same-weights"
            info = write_same_weights(folder, sw)
            print(f"  {info}", flush=True)
            port = free_port()
            cmd = [
                sys.executable,
                "-c",
                PEER_FAST_BLAS_SCRIPT,
                "--model",
                str(sw),
                "--port",
                str(port),
                *peer_flags,
            ]
            results["servers"]["peer_same_weights"] = {
                "how": "mlx_lm.server main() after enable_fast_blas(), on an fp32 checkpoint "
                "written by prepare_model_for_cpu + save_model",
                "checkpoint": info,
                "flags": peer_flags,
            }
            peer = Server("peer_same_weights", cmd, port, "default_model", work, args.load_timeout)
            run_server(
                "peer_same_weights",
                peer,
                {
                    "steps": full_steps,
                    "repeats": repeats,
                    "timeout_s": 900,
                    "settle_s": args.settle,
                },
                filler,
                results,
                save,
            )
            shutil.rmtree(sw, ignore_errors=True)

        # ---- peer, stock
        if args.skip_stock:
            results["notes"].append("peer_stock skipped (--skip-stock)")
        else:
            print("== peer_stock", flush=True)
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "mlx_lm.server",
                "--model",
                str(folder),
                "--port",
                str(port),
                *peer_flags,
            ]
            results["servers"]["peer_stock"] = {
                "how": "python -m mlx_lm.server on the checkpoint as stored (4-bit, fp16 "
                "scales, bundled BLAS); small workload only, time-boxed",
                "flags": peer_flags,
            }
            peer = Server("peer_stock", cmd, port, "default_model", work, args.load_timeout)
            run_server(
                "peer_stock",
                peer,
                {
                    "steps": small_steps,
                    "repeats": 1,
                    "timeout_s": stock_budget,
                    "budget_s": stock_budget,
                },
                filler,
                results,
                save,
            )
    finally:
        save()
        shutil.rmtree(work, ignore_errors=True)

    plot(json.loads(args.out.read_text()), png)
    print(f"wrote {args.out} and {png}")
    print(json.dumps(json.loads(args.out.read_text())["ratios"], indent=1))


# --------------------------------------------------------------------------- plot

LABELS = {
    "ours": "ours (dvai-bridge)",
    "peer_same_weights": "mlx_lm.server, same fp32 weights",
    "peer_stock": "mlx_lm.server, stock 4-bit",
}
COLORS = {"ours": "tab:blue", "peer_same_weights": "tab:orange", "peer_stock": "tab:red"}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(
        1, 4, figsize=(22, 5.2), gridspec_kw={"width_ratios": [1, 1.2, 1.2, 1.2]}
    )
    ax0, ax1, ax2, ax3 = axes
    wl = res["workload"]
    servers = res["servers"]
    # single-stream decode tok/s: one group per workload, one bar per server
    groups = [
        ("single", f"full prompt, {wl['max_tokens']} tok"),
        ("single_small", f"small prompt, {wl['stock']['max_tokens']} tok"),
    ]
    names = list(servers)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        sc = servers[name].get("scenarios", {})
        xs = [g for g, (key, _) in enumerate(groups) if key in sc]
        ys = [sc[groups[g][0]]["decode_tok_s"] or 0 for g in xs]
        bars = ax0.bar(
            [x + (i - (len(names) - 1) / 2) * width for x in xs],
            ys,
            width,
            color=COLORS.get(name),
            label=LABELS.get(name, name),
        )
        ax0.bar_label(bars, fmt="%.1f", fontsize=7)
    ax0.set_xticks(range(len(groups)), [g[1] for g in groups], fontsize=8)
    ax0.set(ylabel="decode tok/s (one stream)", title="Single stream")
    ax0.set_ylim(top=ax0.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax0.legend(fontsize=7, loc="upper center")
    ax0.grid(True, axis="y", alpha=0.3)
    xt1: set[int] = set()
    xt2: set[int] = set()
    for name, entry in servers.items():
        sc = entry.get("scenarios", {})
        for key, style in (("concurrency", "-o"), ("concurrency_small", "--s")):
            if sc.get(key):
                xs = [int(n) for n in sc[key]]
                xt1.update(xs)
                ys = [sc[key][n]["aggregate_tok_s"] for n in sc[key]]
                tok = wl["max_tokens"] if key == "concurrency" else wl["stock"]["max_tokens"]
                suffix = "" if key == "concurrency" else f" (small prompt, {tok} tok)"
                ax1.plot(
                    xs, ys, style, color=COLORS.get(name), label=LABELS.get(name, name) + suffix
                )
        if "multi_turn" in sc:
            mt = sc["multi_turn"]
            turns = [t["turn"] for t in mt["per_turn"]]
            xt2.update(turns)
            ax2.plot(
                turns, mt["ttft_s"], "-o", color=COLORS.get(name), label=LABELS.get(name, name)
            )
            if "cold" in sc:
                cold = sc["cold"]["ttft_s"]
                ax2.plot(
                    [turns[-1]],
                    [cold],
                    "*",
                    ms=16,
                    color=COLORS.get(name),
                    label=f"{LABELS.get(name, name)}: last history, cold (restarted)",
                )
                ax2.annotate(
                    f"{cold:.1f} s",
                    (turns[-1], cold),
                    textcoords="offset points",
                    xytext=(-38, -3),
                    fontsize=7,
                    color=COLORS.get(name),
                )
            ax3.plot(
                turns,
                [t["prompt_tokens"] for t in mt["per_turn"]],
                ":",
                color=COLORS.get(name),
                alpha=0.6,
            )
            ax3.plot(
                turns,
                [t["cached_tokens"] or 0 for t in mt["per_turn"]],
                "-o",
                color=COLORS.get(name),
                label=LABELS.get(name, name) + ": cached",
            )
    ax1.set(
        xlabel="concurrent streaming clients",
        ylabel="aggregate completion tok/s",
        title=f"Throughput (max_tokens {wl['max_tokens']}, batch {wl['max_batch_size']})",
    )
    ys = [y for line in ax1.get_lines() for y in line.get_ydata() if y]
    if ys and max(ys) / min(ys) > 20:  # the stock form is far below the others: log scale
        ax1.set_yscale("log")
        ax1.yaxis.set_major_formatter(ScalarFormatter())
        ax1.yaxis.set_minor_formatter(ScalarFormatter())
    else:
        ax1.set_ylim(bottom=0)
    ax1.set_xticks(sorted(xt1) or [1])
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.set(
        xlabel="turn",
        ylabel="TTFT, s",
        title=f"Multi-turn TTFT ({wl['turns']} turns, +~{wl['user_tokens']} user tok/turn)",
    )
    ax2.set_xticks(sorted(xt2) or [1])
    ax2.set_ylim(bottom=0)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    ax3.set(
        xlabel="turn",
        ylabel="tokens",
        title="Multi-turn prompt_tokens (dotted), cached_tokens (solid)",
    )
    ax3.set_xticks(sorted(xt2) or [1])
    ax3.grid(True, alpha=0.3)
    ax3.legend(fontsize=7)
    m = res["machine"]
    foreign = foreign_cpus(servers)
    title = (
        f"Serving benchmark: {Path(res['model_folder']).name} on {m['cpu']} "
        f"({m['affinity_cpus']} cpus); load avg {m['loadavg_start'][0]} at start, "
        f"{m.get('loadavg_end', ['?'])[0]} at end"
    )
    if foreign:
        title += (
            f"; other processes used {min(foreign):.1f}-{max(foreign):.1f} cores "
            "during the scenarios"
        )
    if res.get("quick"):
        title += "  [--quick smoke run: reduced workload, shared machine]"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
