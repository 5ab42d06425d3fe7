"""Constrained-decoding overhead: decode tok/s with a ``json_schema`` vs without, same run.

Starts ``dvai-bridge serve`` (MLX, and llama when llama-cpp-python is installed) on the
embedded SmolLM2-135M-Instruct GGUF and streams the same story prompt, greedy, alternately
free and under a JSON schema (a title and a list of chapters). Decode tok/s is measured as in
foundation.py: ``(tokens - 1) / (t_last - t_first)`` over content chunks, client side; the
engine's CPU ms per token is recorded too (robust to other processes' load).

    . .venv/bin/activate && python benchmarks/structured.py --rounds 3

Writes ``benchmarks/results/structured.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _cpu import proc_cpu
from foundation import (
    CpuWatch,
    HttpEngine,
    default_gguf,
    free_port,
    machine_info,
    wait_quiet,
)

PROMPT = (
    "Write a long story about a young cartographer who sets out to map the forest beyond "
    "the village of Eldermoor. Use several chapters."
)
SCHEMA = {  # bounded, so that the JSON completes within max_tokens
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "chapters": {
            "type": "array",
            "minItems": 2,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "heading": {"type": "string", "maxLength": 40},
                    "text": {"type": "string", "maxLength": 160},
                },
                "required": ["heading", "text"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "chapters"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "story", "schema": SCHEMA, "strict": True},
}


def mask_cost(text: str) -> dict:
    """The grammar's own cost per step, apart from the model: compute the mask, unpack it,
    apply it to a logits row with MLX, consume the token; over the tokens of ``text``."""
    import llguidance
    import mlx.core as mx

    from dvai_bridge.backends.mlx.gguf_import import cached_import
    from dvai_bridge.core.grammar import Grammar, json_schema_grammar
    from dvai_bridge.store.resolve import embedded_default_gguf

    folder = cached_import(embedded_default_gguf())
    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer(
        (folder / "tokenizer.json").read_text(), n_vocab=49152, eos_token=[2]
    )
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = Grammar.compile(json_schema_grammar(SCHEMA), tok)
    matcher = grammar.matcher()
    compile_s = time.perf_counter() - t0
    logits = mx.zeros((1, 49152))
    ids = tok.tokenize_str(text)
    t0 = time.perf_counter()
    for t in ids:
        allowed = matcher.allowed(49152)
        assert allowed[t]
        mx.eval(mx.where(mx.array(allowed), logits, -float("inf")))
        matcher.advance(t)
    per_step = (time.perf_counter() - t0) / len(ids)
    return {
        "tokens": len(ids),
        "ms_per_step": round(1000 * per_step, 3),
        "tokenizer_build_s": round(tokenizer_s, 3),
        "schema_compile_s": round(compile_s, 4),
    }


def run_one(
    engine: HttpEngine, tag: str, constrained: bool, max_tokens: int, timeout: float
) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=engine.base_url, api_key="none", max_retries=0, timeout=timeout)
    extra = {"response_format": RESPONSE_FORMAT} if constrained else {}
    times, cpu, text, usage, finish = [], [], [], None, None
    wait_quiet(10, 0.25)
    with CpuWatch(engine.pid) as watch:
        t0 = time.perf_counter()
        stream = client.chat.completions.create(
            model=engine.model_id,
            temperature=0,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            messages=[
                {"role": "system", "content": f"Session {tag}."},
                {"role": "user", "content": PROMPT},
            ],
            **extra,
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    times.append(time.perf_counter())
                    cpu.append(proc_cpu(engine.pid))
                    text.append(c.delta.content)
                finish = c.finish_reason or finish
    n = usage.completion_tokens
    body = "".join(text)
    valid = None
    if constrained:
        try:
            valid = isinstance(json.loads(body), dict)
        except ValueError:
            valid = False
    out = {
        "constrained": constrained,
        "completion_tokens": n,
        "finish_reason": finish,
        "ttft_s": round(times[0] - t0, 3),
        "decode_tok_s": round((n - 1) / (times[-1] - times[0]), 3),
        "decode_cpu_ms_per_tok": round(1000 * (cpu[-1] - cpu[0]) / (n - 1), 2),
        "valid_json": valid,
        "text_head": body[:120],
    } | watch.result
    print(
        f"  {'json_schema' if constrained else 'free':11s} {out['decode_tok_s']:7.2f} tok/s "
        f"{out['decode_cpu_ms_per_tok']:7.2f} cpu-ms/tok  {n} tokens ({finish})"
        f"{'' if valid is None else f', valid JSON {valid}'}; foreign {out['foreign_cpu']}",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--backends", default="mlx,llama")
    ap.add_argument("--out", default=str(HERE / "results" / "structured.json"))
    a = ap.parse_args()
    gguf = default_gguf()
    serve = shutil.which("dvai-bridge", path=str(Path(sys.executable).parent)) or "dvai-bridge"
    logs = Path(tempfile.mkdtemp(prefix="dvai-structured-"))
    doc: dict = {
        "benchmark": "structured",
        "command": " ".join(sys.argv),
        "started_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": str(gguf),
        "schema": SCHEMA,
        "max_tokens": a.max_tokens,
        "backends": {},
    }
    sample = json.dumps(
        {
            "title": "The Cartographer",
            "chapters": [
                {"heading": "The Map", "text": "Mira unrolled the old map and traced the river."},
                {"heading": "The Forest", "text": "The paths moved at night, as the elders said."},
            ],
        },
        separators=(", ", ": "),
    )
    doc["mask_cost"] = mask_cost(sample)
    print(f"grammar cost apart from the model: {doc['mask_cost']}", flush=True)
    for backend in a.backends.split(","):
        if backend == "llama" and importlib.util.find_spec("llama_cpp") is None:
            print("llama-cpp-python not installed: skipping the llama backend")
            continue
        cmd = [
            serve,
            "serve",
            "--backend",
            backend,
            "--model",
            str(gguf),
            "--port",
            str(free_port()),
            "--log-level",
            "warning",
        ]
        env_threads = os.environ.get("DVAI_BRIDGE_BLAS_THREADS")
        print(
            f"{backend}: {' '.join(cmd)}"
            + (f" (BLAS threads {env_threads})" if env_threads else ""),
            flush=True,
        )
        engine = HttpEngine(backend, cmd, None, 600, logs / f"{backend}.log")
        runs: list[dict] = []
        try:
            run_one(engine, "warm-up", True, 8, 300)
            run_one(engine, "warm-up-2", False, 8, 300)
            for i in range(a.rounds):
                order = (False, True) if i % 2 == 0 else (True, False)
                for constrained in order:
                    runs.append(
                        run_one(engine, f"r{i}-{constrained}", constrained, a.max_tokens, 600)
                    )
        finally:
            engine.stop()

        def med(constrained: bool, key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs if r["constrained"] == constrained)

        summary = {
            "free_decode_tok_s": med(False, "decode_tok_s"),
            "json_decode_tok_s": med(True, "decode_tok_s"),
            "free_cpu_ms_per_tok": med(False, "decode_cpu_ms_per_tok"),
            "json_cpu_ms_per_tok": med(True, "decode_cpu_ms_per_tok"),
        }
        summary["json_over_free_decode"] = round(
            summary["json_decode_tok_s"] / summary["free_decode_tok_s"], 3
        )
        summary["json_over_free_cpu_per_tok"] = round(
            summary["json_cpu_ms_per_tok"] / summary["free_cpu_ms_per_tok"], 3
        )
        doc["backends"][backend] = {"cmd": " ".join(cmd), "runs": runs, "median": summary}
        print(
            f"{backend}: json_schema / free decode = {summary['json_over_free_decode']} "
            f"(CPU per token {summary['json_over_free_cpu_per_tok']})",
            flush=True,
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
